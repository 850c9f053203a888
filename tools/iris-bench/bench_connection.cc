#include "bench_connection.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "wire/opcode.h"

namespace iris::bench {
namespace {

using wire::Opcode;

constexpr uint8_t Op(Opcode o) { return static_cast<uint8_t>(o); }

std::vector<uint8_t>& Scratch() {
  thread_local std::vector<uint8_t> buf(64 * 1024 + 1024);
  return buf;
}

}  // namespace

int64_t MonoNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

BenchConnection::BenchConnection(net::EventLoop& loop, Delegate* delegate)
    : loop_(loop), delegate_(delegate) {}

BenchConnection::~BenchConnection() { Release(); }

void BenchConnection::Release() {
  if (fd_ >= 0) {
    loop_.Remove(fd_);
    close(fd_);
    fd_ = -1;
  }
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  std::string().swap(out_);
  out_pos_ = 0;
  interest_ = 0;
  want_write_ = false;
  ++generation_;
  flush_scheduled_ = false;
}

bool BenchConnection::Start(const Endpoint& endpoint, std::string token, uint64_t cursor) {
  Release();
  decoder_ = wire::FrameDecoder();
  token_ = std::move(token);
  cursor_ = acked_cursor_ = cursor;
  welcome_user_ = 0;
  last_error_code_ = last_retry_after_ms_ = 0;
  failure_.clear();
  start_ns_ = MonoNowNs();
  tcp_ns_ = tls_ns_ = welcome_ns_ = ready_ns_ = 0;
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    failure_ = std::string("socket: ") + strerror(errno);
    state_ = State::kFailed;
    return false;
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (endpoint.source) {
    // The port is chosen at connect() time for the full 4-tuple, so every source address
    // gives its own ~28,000 ephemeral ports towards each server port.
    setsockopt(fd_, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr = *endpoint.source;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      failure_ = std::string("bind: ") + strerror(errno);
      Release();
      state_ = State::kFailed;
      return false;
    }
  }
  ssl_ = SSL_new(endpoint.tls);
  if (ssl_ == nullptr) {
    failure_ = "SSL_new failed";
    Release();
    state_ = State::kFailed;
    return false;
  }
  SSL_set_fd(ssl_, fd_);
  SSL_set_connect_state(ssl_);
  const int rc =
      connect(fd_, reinterpret_cast<const sockaddr*>(&endpoint.server), sizeof(endpoint.server));
  if (rc != 0 && errno != EINPROGRESS) {
    failure_ = std::string("connect: ") + strerror(errno);
    Release();
    state_ = State::kFailed;
    return false;
  }
  state_ = State::kConnecting;
  interest_ = EPOLLOUT | EPOLLIN | EPOLLRDHUP;
  if (!loop_.Add(fd_, interest_, this).ok()) {
    failure_ = "epoll_ctl add failed";
    Release();
    state_ = State::kFailed;
    return false;
  }
  if (rc == 0) OnConnected();
  return state_ != State::kFailed;
}

void BenchConnection::Fail(std::string reason) {
  if (state_ == State::kFailed || state_ == State::kIdle) return;
  failure_ = std::move(reason);
  Release();
  state_ = State::kFailed;
  delegate_->OnFailed(*this);
}

void BenchConnection::Close(bool abortive) {
  if (fd_ >= 0) {
    if (abortive) {
      linger l{1, 0};
      setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    } else if (ssl_ != nullptr && state_ >= State::kAwaitWelcome && state_ != State::kFailed) {
      ERR_clear_error();
      SSL_shutdown(ssl_);  // one close_notify record, best effort (non-blocking)
    }
  }
  Release();
  state_ = State::kIdle;
}

void BenchConnection::UpdateInterest() {
  if (fd_ < 0) return;
  uint32_t want = EPOLLIN | EPOLLRDHUP;
  if (state_ == State::kConnecting || want_write_ || out_.size() > out_pos_) want |= EPOLLOUT;
  if (want != interest_) {
    interest_ = want;
    loop_.Modify(fd_, interest_, this).IgnoreError();
  }
}

void BenchConnection::OnEvents(uint32_t events) {
  if (fd_ < 0) return;
  if (state_ == State::kConnecting) {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      Fail(std::string("connect: ") + strerror(err));
      return;
    }
    OnConnected();
    if (fd_ >= 0) UpdateInterest();
    return;
  }
  if (events & EPOLLERR) {
    Fail("socket error");
    return;
  }
  if (state_ == State::kHandshake) {
    DoHandshake();
  } else {
    DoRead();
    if (fd_ >= 0 && (events & EPOLLOUT)) Flush();
  }
  // A cumulative DELIVER_ACK for everything this batch delivered.
  if (fd_ >= 0 && state_ == State::kReady && cursor_ > acked_cursor_) {
    v1::DeliverAck a;
    a.set_cursor(cursor_);
    acked_cursor_ = cursor_;
    Send(Op(Opcode::kDeliverAck), a);
  }
  if (fd_ >= 0) UpdateInterest();
}

void BenchConnection::OnConnected() {
  tcp_ns_ = MonoNowNs();
  state_ = State::kHandshake;
  DoHandshake();
}

void BenchConnection::DoHandshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    tls_ns_ = MonoNowNs();
    want_write_ = false;
    state_ = State::kAwaitWelcome;
    v1::Hello h;
    h.add_versions(1);
    h.set_token(token_);
    h.set_cursor(cursor_);
    h.set_client("iris-bench/1");
    Send(Op(Opcode::kHello), h);
    Flush();
    if (fd_ >= 0) DoRead();  // WELCOME may already be here
    return;
  }
  const int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ) {
    want_write_ = false;
  } else if (err == SSL_ERROR_WANT_WRITE) {
    want_write_ = true;
  } else {
    unsigned long e = ERR_get_error();
    char buf[160] = "connection closed";
    if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
    Fail(std::string("TLS handshake: ") + buf);
  }
}

void BenchConnection::DoRead() {
  auto& buf = Scratch();
  while (fd_ >= 0) {
    ERR_clear_error();
    const int n = SSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) {
      const uint32_t gen = generation_;
      decoder_.Consume(std::span<const uint8_t>(buf.data(), static_cast<size_t>(n)),
                       [this, gen](const wire::Frame& f) {
                         return gen == generation_ && HandleFrame(f.opcode, f.payload);
                       });
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ) return;
    if (err == SSL_ERROR_WANT_WRITE) {
      want_write_ = true;
      return;
    }
    std::string why = err == SSL_ERROR_ZERO_RETURN ? "peer closed"
                      : err == SSL_ERROR_SYSCALL   ? "connection reset"
                                                   : "TLS error";
    if (last_error_code_ != 0) {
      why +=
          " after ERROR " + std::string(StatusCodeName(static_cast<StatusCode>(last_error_code_)));
    }
    Fail(std::move(why));
    return;
  }
}

bool BenchConnection::HandleFrame(uint8_t opcode, std::string_view payload) {
  if (opcode == Op(Opcode::kError)) {
    v1::Error e;
    if (e.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      last_error_code_ = e.code();
      last_retry_after_ms_ = e.retry_after_ms();
    }
    if (state_ == State::kAwaitWelcome) {
      Fail("ERROR " + std::string(StatusCodeName(static_cast<StatusCode>(e.code()))) +
           " before WELCOME");
      return false;
    }
  }
  switch (state_) {
    case State::kAwaitWelcome: {
      if (opcode != Op(Opcode::kWelcome)) return true;  // e.g. a PONG
      v1::Welcome w;
      if (!w.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
        Fail("bad WELCOME");
        return false;
      }
      welcome_user_ = w.user_id();
      welcome_ns_ = MonoNowNs();
      state_ = State::kCatchUp;
      return true;
    }
    case State::kCatchUp: {
      if (opcode == Op(Opcode::kSyncPage)) {
        v1::SyncPage p;
        if (!p.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
          Fail("bad SYNC_PAGE");
          return false;
        }
        const uint32_t gen = generation_;
        for (const auto& e : p.messages()) {
          if (e.id() > cursor_) cursor_ = e.id();
          delegate_->OnEnvelope(*this, e);
          if (gen != generation_) return false;  // the delegate closed us
        }
        if (p.has_more()) {
          v1::SyncAck a;
          a.set_cursor(p.cursor());
          Send(Op(Opcode::kSyncAck), a);
        }
        return true;
      }
      if (opcode == Op(Opcode::kSyncDone)) {
        v1::SyncDone d;
        d.ParseFromArray(payload.data(), static_cast<int>(payload.size()));
        if (d.cursor() > cursor_) cursor_ = d.cursor();
        acked_cursor_ = cursor_;
        ready_ns_ = MonoNowNs();
        state_ = State::kReady;
        const uint32_t gen = generation_;
        delegate_->OnReady(*this);
        return gen == generation_;
      }
      const uint32_t gen = generation_;
      delegate_->OnFrame(*this, opcode, payload);
      return gen == generation_;
    }
    case State::kReady: {
      const uint32_t gen = generation_;
      if (opcode == Op(Opcode::kDeliver)) {
        v1::Deliver d;
        if (!d.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
          Fail("bad DELIVER");
          return false;
        }
        if (d.message().id() > cursor_) cursor_ = d.message().id();
        delegate_->OnEnvelope(*this, d.message());
      } else {
        delegate_->OnFrame(*this, opcode, payload);
      }
      return gen == generation_;
    }
    default: return true;
  }
}

void BenchConnection::Send(uint8_t opcode, const google::protobuf::MessageLite& m) {
  if (fd_ < 0) return;
  wire::AppendMessageFrame(&out_, opcode, m).IgnoreError();
  last_send_ns_ = MonoNowNs();
  if (!flush_scheduled_ && state_ != State::kHandshake && state_ != State::kConnecting) {
    flush_scheduled_ = true;
    const uint32_t gen = generation_;
    loop_.Defer([this, gen] {
      if (gen != generation_) return;
      flush_scheduled_ = false;
      Flush();
    });
  }
}

void BenchConnection::Flush() {
  if (fd_ < 0 || state_ == State::kConnecting || state_ == State::kHandshake) return;
  while (out_.size() > out_pos_) {
    ERR_clear_error();
    const size_t chunk = std::min<size_t>(out_.size() - out_pos_, 16 * 1024);
    const int n = SSL_write(ssl_, out_.data() + out_pos_, static_cast<int>(chunk));
    if (n > 0) {
      out_pos_ += static_cast<size_t>(n);
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      want_write_ = err == SSL_ERROR_WANT_WRITE;
      UpdateInterest();
      return;
    }
    Fail("write failed");
    return;
  }
  std::string().swap(out_);
  out_pos_ = 0;
  want_write_ = false;
  UpdateInterest();
}

}  // namespace iris::bench
