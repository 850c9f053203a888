#include "rpc/link.h"

#include <fcntl.h>
#include <google/protobuf/message_lite.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/clock.h"
#include "net/tls.h"

namespace iris::rpc {
namespace {

constexpr size_t kReadChunk = 64u << 10;

class PlainTransport final : public Transport {
 public:
  explicit PlainTransport(int fd) : fd_(fd) {}
  Io Handshake() override { return Io::kDone; }
  Result Read(char* p, size_t n) override {
    for (;;) {
      const ssize_t r = ::read(fd_, p, n);
      if (r > 0) return {Io::kDone, static_cast<size_t>(r)};
      if (r == 0) {
        error_ = "end of stream";
        return {Io::kClosed};
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return {Io::kWantRead};
      error_ = strerror(errno);
      return {Io::kError};
    }
  }
  Result Write(const char* p, size_t n) override {
    for (;;) {
      const ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (w >= 0) return {Io::kDone, static_cast<size_t>(w)};
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return {Io::kWantWrite};
      error_ = strerror(errno);
      return {Io::kError};
    }
  }
  std::string LastError() override { return error_; }
  SSL* ssl() override { return nullptr; }
  void Shutdown() override {}

 private:
  const int fd_;
  std::string error_;
};

class TlsTransport final : public Transport {
 public:
  explicit TlsTransport(SSL* ssl) : ssl_(ssl) {}
  ~TlsTransport() override { SSL_free(ssl_); }
  Io Handshake() override {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) return Io::kDone;
    return Classify(r);
  }
  Result Read(char* p, size_t n) override {
    ERR_clear_error();
    size_t got = 0;
    const int r = SSL_read_ex(ssl_, p, n, &got);
    if (r == 1) return {Io::kDone, got};
    return {Classify(r)};
  }
  Result Write(const char* p, size_t n) override {
    ERR_clear_error();
    size_t put = 0;
    const int r = SSL_write_ex(ssl_, p, n, &put);
    if (r == 1) return {Io::kDone, put};
    return {Classify(r)};
  }
  std::string LastError() override { return error_; }
  SSL* ssl() override { return ssl_; }
  void Shutdown() override {
    if (SSL_is_init_finished(ssl_)) SSL_shutdown(ssl_);
    ERR_clear_error();
  }

 private:
  Io Classify(int r) {
    const int e = SSL_get_error(ssl_, r);
    switch (e) {
      case SSL_ERROR_WANT_READ: return Io::kWantRead;
      case SSL_ERROR_WANT_WRITE: return Io::kWantWrite;
      case SSL_ERROR_ZERO_RETURN: error_ = "TLS close_notify"; return Io::kClosed;
      case SSL_ERROR_SYSCALL: {
        const int err = errno;
        const std::string ssl_err = net::DrainOpenSslErrors();
        if (!ssl_err.empty()) {
          error_ = "TLS: " + ssl_err;
        } else {
          error_ = err != 0 ? std::string(strerror(err)) : std::string("end of stream");
        }
        return err == 0 && ssl_err.empty() ? Io::kClosed : Io::kError;
      }
      default: {
        const std::string ssl_err = net::DrainOpenSslErrors();
        error_ = "TLS: " + (ssl_err.empty() ? std::string("error ") + std::to_string(e) : ssl_err);
        if (SSL_get_verify_result(ssl_) != X509_V_OK) {
          error_ += " (certificate: ";
          error_ += X509_verify_cert_error_string(SSL_get_verify_result(ssl_));
          error_ += ")";
        }
        return Io::kError;
      }
    }
  }
  SSL* ssl_;
  std::string error_;
};

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

}  // namespace

std::unique_ptr<Transport> MakePlainTransport(int fd) {
  return std::make_unique<PlainTransport>(fd);
}

std::unique_ptr<Transport> MakeTlsTransport(SSL* ssl) {
  return std::make_unique<TlsTransport>(ssl);
}

Result<size_t> TakeLinkFrames(std::string_view in,
                              const std::function<bool(std::string_view frame)>& on_frame) {
  size_t off = 0;
  while (in.size() - off >= 4) {
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | static_cast<uint8_t>(in[off + i]);
    if (n > kMaxLinkMessageBytes) {
      return BadRequest("link: oversized frame of " + std::to_string(n) + " bytes");
    }
    if (in.size() - off - 4 < n) break;
    const bool more = on_frame(in.substr(off + 4, n));
    off += 4 + n;
    if (!more) break;
  }
  return off;
}

Link::Link(int fd, std::unique_ptr<Transport> transport, LinkOptions options, Handlers handlers)
    : fd_(fd), transport_(std::move(transport)), options_(options), handlers_(std::move(handlers)) {
  const int flags = fcntl(fd_, F_GETFL, 0);
  if (flags >= 0) fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
}

Link::~Link() {
  Stop();
  if (thread_.joinable()) thread_.detach();  // destroyed on its own I/O thread
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (!thread_started_) {
    transport_.reset();
    ::close(fd_);
  }
}

Status Link::Start() {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return Internal(std::string("link: eventfd: ") + strerror(errno));
  thread_started_ = true;
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void Link::Wake() {
  if (wake_fd_ < 0) return;
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof(one));
}

Status Link::Enqueue(const google::protobuf::MessageLite& m) {
  const size_t size = m.ByteSizeLong();
  if (size > kMaxLinkMessageBytes) {
    return Internal("link: message of " + std::to_string(size) + " bytes is over the limit");
  }
  const size_t frame = size + 4;
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_.load()) return Unavailable("link: closed", 0);
  const size_t queued = queued_.load() + frame;
  if (queued > options_.max_queued_bytes) {
    // The peer does not read: end the link rather than hold more.
    closed_.store(true);
    if (!close_requested_) {
      close_requested_ = true;
      close_why_ =
          Unavailable("link: write queue over " + std::to_string(options_.max_queued_bytes) +
                          " bytes (the peer does not read)",
                      0);
    }
    return close_why_;
  }
  const size_t at = pending_.size();
  pending_.resize(at + frame);
  char* p = pending_.data() + at;
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(size >> (8 * (3 - i)));
  if (!m.SerializeToArray(p + 4, static_cast<int>(size))) {
    pending_.resize(at);
    return Internal("link: serialisation failed");
  }
  queued_.store(queued);
  if (queued > peak_queued_.load()) peak_queued_.store(queued);
  return Status::Ok();
}

Status Link::Send(const google::protobuf::MessageLite& m) {
  Status s = Enqueue(m);
  Wake();
  return s;
}

void Link::SendAndClose(const google::protobuf::MessageLite& m, Status why) {
  Enqueue(m).IgnoreError();  // on failure the link is closed already
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_.store(true);
    if (!close_requested_ && !close_after_flush_) {
      close_after_flush_ = true;
      close_why_ = std::move(why);
    }
  }
  Wake();
}

void Link::ArmTimer(int64_t due_ms) {
  int64_t cur = timer_due_.load();
  while (due_ms < cur && !timer_due_.compare_exchange_weak(cur, due_ms)) {
  }
  if (due_ms < cur) Wake();
}

void Link::Close(Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_.store(true);
    if (!close_requested_) {
      close_requested_ = true;
      if (!close_after_flush_) close_why_ = std::move(why);
    }
  }
  Wake();
}

void Link::Stop() {
  Close(Unavailable("link: stopped", 0));
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

bool Link::ReadFrames(Status* why, bool* want_write) {
  *want_write = false;
  char buf[kReadChunk];
  for (;;) {
    const Transport::Result r = transport_->Read(buf, sizeof(buf));
    if (r.io == Transport::Io::kWantRead) break;
    if (r.io == Transport::Io::kWantWrite) {
      *want_write = true;
      break;
    }
    if (r.io == Transport::Io::kClosed) {
      *why = Unavailable("link: closed by the peer (" + transport_->LastError() + ")", 0);
      return false;
    }
    if (r.io == Transport::Io::kError) {
      *why = Unavailable("link: read failed: " + transport_->LastError(), 0);
      return false;
    }
    in_.append(buf, r.bytes);
    last_rx_ms_ = NowMs();
    // Hand out every complete frame, unless (or until) a handler ends the link: then read no
    // further frames.
    if (closed_.load()) break;
    Result<size_t> taken = TakeLinkFrames(in_, [this](std::string_view frame) {
      // An empty frame is a keepalive (LinkOptions): no message carries nothing.
      if (handlers_.on_message && !frame.empty()) handlers_.on_message(frame);
      return !closed_.load();
    });
    if (!taken.ok()) {
      *why = taken.status();
      return false;
    }
    in_.erase(0, *taken);
    if (closed_.load()) break;
  }
  return true;
}

bool Link::WriteQueued(Status* why, bool* blocked) {
  *blocked = false;
  for (;;) {
    if (out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty()) return true;
      out_.swap(pending_);
    }
    const Transport::Result r = transport_->Write(out_.data() + out_off_, out_.size() - out_off_);
    if (r.io == Transport::Io::kDone) {
      out_off_ += r.bytes;
      last_tx_ms_ = NowMs();
      queued_.fetch_sub(r.bytes);
      continue;
    }
    if (r.io == Transport::Io::kWantWrite || r.io == Transport::Io::kWantRead) {
      *blocked = true;
      return true;
    }
    *why = Unavailable("link: write failed: " + transport_->LastError(), 0);
    return false;
  }
}

void Link::Run() {
  // A TLS write to a peer that has gone raises SIGPIPE on this thread (OpenSSL's socket BIO
  // does not pass MSG_NOSIGNAL): keep it blocked here, the write error ends the link.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  const int64_t handshake_deadline =
      options_.handshake_timeout_ms > 0 ? NowMs() + options_.handshake_timeout_ms : kNoTimer;
  bool established = false;
  bool poll_out = false;
  Status why;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (close_requested_) {
        why = close_why_;
        break;
      }
    }
    if (!established) {
      const Transport::Io h = transport_->Handshake();
      if (h == Transport::Io::kDone) {
        established = true;
        last_rx_ms_ = last_tx_ms_ = NowMs();
        if (handlers_.on_established) {
          Status s = handlers_.on_established(*transport_);
          if (!s.ok()) {
            why = std::move(s);
            break;
          }
        }
      } else if (h == Transport::Io::kClosed || h == Transport::Io::kError) {
        why = Unavailable("link: handshake failed: " + transport_->LastError(), 0);
        break;
      } else if (NowMs() >= handshake_deadline) {
        why = Unavailable("link: handshake not finished within " +
                              std::to_string(options_.handshake_timeout_ms) + " ms",
                          0);
        break;
      } else {
        poll_out = h == Transport::Io::kWantWrite;
      }
    }
    if (established) {
      bool read_wants_write = false;
      bool write_blocked = false;
      if (!ReadFrames(&why, &read_wants_write)) break;
      if (!WriteQueued(&why, &write_blocked)) break;
      poll_out = read_wants_write || write_blocked;
      bool flushed_close = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (close_after_flush_ && !close_requested_ && pending_.empty() &&
            out_off_ == out_.size()) {
          why = close_why_;
          flushed_close = true;
        }
      }
      if (flushed_close) break;
      const int64_t t = NowMs();
      if (options_.dead_after_ms > 0 && t - last_rx_ms_ >= options_.dead_after_ms) {
        why = Unavailable("link: nothing received for " + std::to_string(t - last_rx_ms_) +
                              " ms (the peer is unreachable or stopped)",
                          0);
        break;
      }
      if (options_.keepalive_ms > 0 && !write_blocked && t - last_tx_ms_ >= options_.keepalive_ms) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          pending_.append(4, '\0');  // a frame of length 0
          queued_.fetch_add(4);
        }
        if (!WriteQueued(&why, &write_blocked)) break;
        poll_out = read_wants_write || write_blocked;
      }
    }
    // The timer.
    int64_t now = NowMs();
    if (timer_due_.load() <= now) {
      timer_due_.store(kNoTimer);
      const int64_t next = handlers_.on_timer ? handlers_.on_timer(now) : kNoTimer;
      ArmTimer(next);
      continue;  // the handler may have queued or closed: look again before waiting
    }
    int64_t due = timer_due_.load();
    if (!established) due = std::min(due, handshake_deadline);
    // No keepalive is due while a write waits for the socket (POLLOUT wakes the thread):
    // a past due time would make poll return at once, a busy loop.
    if (established && options_.keepalive_ms > 0 && !poll_out) {
      due = std::min(due, last_tx_ms_ + options_.keepalive_ms);
    }
    if (established && options_.dead_after_ms > 0) {
      due = std::min(due, last_rx_ms_ + options_.dead_after_ms);
    }
    int timeout = -1;
    if (due != kNoTimer) timeout = static_cast<int>(std::clamp<int64_t>(due - now, 0, 60'000));
    pollfd fds[2] = {{fd_, static_cast<short>(POLLIN | (poll_out ? POLLOUT : 0)), 0},
                     {wake_fd_, POLLIN, 0}};
    const int n = ::poll(fds, 2, timeout);
    if (n < 0 && errno != EINTR) {
      why = Internal(std::string("link: poll: ") + strerror(errno));
      break;
    }
    if (n > 0 && (fds[1].revents & POLLIN) != 0) {
      uint64_t v;
      [[maybe_unused]] const ssize_t r = ::read(wake_fd_, &v, sizeof(v));
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_.store(true);
    close_requested_ = true;
    pending_.clear();
    queued_.store(0);
  }
  if (why.ok()) why = Unavailable("link: closed", 0);
  transport_->Shutdown();
  transport_.reset();
  ::shutdown(fd_, SHUT_RDWR);
  ::close(fd_);
  if (handlers_.on_close) handlers_.on_close(why);
}

}  // namespace iris::rpc
