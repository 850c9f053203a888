#include "net/connection.h"

#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "net/tls.h"

namespace iris::net {
namespace {

// Bytes read from one connection in one loop turn: a peer that sends without pause is
// served in slices, so the other connections of its loop (and the loop's timers) are never
// kept waiting for it. The loop is level-triggered: what is left is read next turn.
constexpr size_t kReadBudgetPerTurn = 256 * 1024;

}  // namespace

Connection::Connection(EventLoop& loop, SSL_CTX* ctx, int fd, Delegate* delegate,
                       size_t max_output_bytes)
    : loop_(loop),
      ssl_(SSL_new(ctx)),
      fd_(fd),
      delegate_(delegate),
      max_output_(static_cast<uint32_t>(max_output_bytes)) {}

Connection::~Connection() {
  if (secrets_) OPENSSL_cleanse(secrets_.get(), sizeof(*secrets_));
  if (flush_scheduled_) loop_.CancelFlush(this);
  if (fd_ >= 0) {
    loop_.Remove(fd_);
    close(fd_);
  }
  if (ssl_ != nullptr) SSL_free(ssl_);
}

Status Connection::Start() {
  if (ssl_ == nullptr) return Internal("SSL_new: " + OpenSslError());
  SSL_set_fd(ssl_, fd_);
  SSL_set_accept_state(ssl_);
  secrets_ = std::make_unique<TlsTrafficSecrets>();
  CaptureTrafficSecrets(ssl_, secrets_.get());
  interest_ = EPOLLIN | EPOLLRDHUP;
  return loop_.Add(fd_, interest_, this);
}

void Connection::ExpectProxyHeader() {
  state_ = State::kProxyHeader;
  proxy_ = std::make_unique<ProxyHeaderParser>();
}

void Connection::DoProxyHeader() {
  size_t budget = kReadBudgetPerTurn;
  uint8_t buf[256];
  while (state_ == State::kProxyHeader) {
    const size_t want = std::min(proxy_->wanted(), sizeof(buf));
    const ssize_t n = RecvSome(std::span<uint8_t>(buf, want), &budget);
    if (n <= 0) return;  // nothing more now, or finished
    proxy_->Feed(std::span<const uint8_t>(buf, static_cast<size_t>(n)));
    if (proxy_->state() == ProxyHeaderParser::State::kNeedMore) continue;
    const bool done = proxy_->state() == ProxyHeaderParser::State::kDone;
    const Result<ProxyHeader> header =
        done ? Result<ProxyHeader>(proxy_->header()) : BadRequest(proxy_->error());
    proxy_.reset();
    state_ = State::kHandshake;
    if (!delegate_->OnProxyHeader(header)) {
      Finish(done ? "refused after its PROXY header" : "malformed PROXY header");
      return;
    }
    if (state_ == State::kHandshake) DoHandshake();  // the ClientHello may be here already
    return;
  }
}

void Connection::UpdateInterest() {
  if (state_ == State::kClosed) return;
  uint32_t want = EPOLLRDHUP;
  // A closing connection still reads (and discards) so that unread input cannot keep a
  // level-triggered descriptor ready forever.
  if (!paused_ || state_ != State::kOpen) want |= EPOLLIN;
  if (queued_bytes() > 0 || want_write_) want |= EPOLLOUT;
  if (want != interest_) {
    interest_ = want;
    loop_.Modify(fd_, interest_, this).IgnoreError();
  }
}

void Connection::OnEvents(uint32_t events) {
  if (state_ == State::kClosed) return;
  if (events & EPOLLERR) {
    Finish("socket error");
    return;
  }
  if ((paused_ || state_ == State::kClosing) && (events & (EPOLLHUP | EPOLLRDHUP))) {
    Finish("peer closed");
    return;
  }
  if (state_ == State::kProxyHeader) {
    DoProxyHeader();
  } else if (state_ == State::kHandshake) {
    DoHandshake();
  } else {
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) DoRead();
    if (state_ != State::kClosed && (events & EPOLLOUT)) DoWrite();
  }
  UpdateInterest();
}

void Connection::DoHandshake() {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    state_ = State::kOpen;
    OffloadRecords();
    delegate_->OnHandshakeDone();
    if (state_ == State::kOpen) DoRead();  // data may have arrived with the Finished message
    return;
  }
  const int err = SSL_get_error(ssl_, r);
  if (err == SSL_ERROR_WANT_READ) {
    want_write_ = false;
  } else if (err == SSL_ERROR_WANT_WRITE) {
    want_write_ = true;
  } else {
    Finish("TLS handshake failed: " + OpenSslError());
  }
}

void Connection::OffloadRecords() {
  CaptureTrafficSecrets(ssl_, nullptr);
  std::unique_ptr<TlsTrafficSecrets> secrets = std::move(secrets_);
  // OpenSSL reads a record at a time (no read-ahead), so after the client's Finished the
  // socket holds the rest; if OpenSSL still buffers anything, it keeps the connection.
  if (!secrets || !secrets->complete() || SSL_has_pending(ssl_) || SSL_pending(ssl_) > 0 ||
      BIO_wpending(SSL_get_wbio(ssl_)) > 0) {
    return;
  }
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  if (cipher == nullptr) return;
  const auto suite = static_cast<uint16_t>(SSL_CIPHER_get_id(cipher) & 0xffff);
  Result<Tls13Records> records =
      Tls13Records::ForServer(suite, std::span<const uint8_t>(secrets->client, secrets->client_len),
                              std::span<const uint8_t>(secrets->server, secrets->server_len));
  OPENSSL_cleanse(secrets.get(), sizeof(*secrets));
  if (!records.ok()) return;
  records_.emplace(std::move(*records));
  SSL_free(ssl_);  // the socket BIO does not own the descriptor
  ssl_ = nullptr;
}

ssize_t Connection::RecvSome(std::span<uint8_t> buf, size_t* budget) {
  for (;;) {
    const ssize_t n = recv(fd_, buf.data(), std::min(buf.size(), *budget), 0);
    if (n > 0) {
      *budget -= static_cast<size_t>(n);
      return n;
    }
    if (n == 0) {
      Finish("peer closed");
      return -1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    Finish("connection reset");
    return -1;
  }
}

void Connection::DiscardInput() {
  const std::span<uint8_t> scratch = loop_.scratch();
  size_t budget = kReadBudgetPerTurn;
  while (state_ == State::kClosing && budget > 0 && RecvSome(scratch, &budget) > 0) {
  }
}

void Connection::DoRead() {
  if (state_ == State::kClosing) {
    // Nothing more is processed; what arrives is dropped, and the peer's close ends it.
    DiscardInput();
    if (state_ == State::kClosing) DoWrite();
    return;
  }
  if (records_ && state_ == State::kOpen) {
    DoReadRecords();
    return;
  }
  if (paused_) return;
  auto buf = loop_.scratch();
  // Reads until the socket is drained, the turn's budget is spent or the delegate pauses
  // reading; data left inside OpenSSL is picked up by PauseReading(false) or the next turn.
  size_t budget = kReadBudgetPerTurn;
  while (state_ == State::kOpen && !paused_) {
    if (budget == 0 && SSL_pending(ssl_) == 0) return;
    ERR_clear_error();
    const int n = SSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) {
      budget -= std::min(budget, static_cast<size_t>(n));
      delegate_->OnData(buf.first(static_cast<size_t>(n)));
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ) return;
    if (err == SSL_ERROR_WANT_WRITE) {
      want_write_ = true;
      return;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      Finish("peer closed");
    } else {
      Finish(err == SSL_ERROR_SYSCALL ? "connection reset" : "TLS error: " + OpenSslError());
    }
    return;
  }
}

size_t Connection::ProcessRecords(std::span<uint8_t> buf) {
  size_t at = 0;
  while (state_ == State::kOpen && !paused_) {
    const std::span<uint8_t> rest = buf.subspan(at);
    uint8_t alert = Tls13Records::kNoAlert;
    Result<size_t> len = Tls13Records::CompleteRecordLength(rest, &alert);
    if (!len.ok()) {
      FailWithAlert(alert, len.status().message());
      return at;
    }
    if (*len == 0) break;
    Result<Tls13Records::Opened> opened = records_->Open(rest.first(*len));
    if (!opened.ok()) {
      FailWithAlert(records_->alert(), opened.status().message());
      return at;
    }
    at += *len;
    if (opened->type == Tls13Records::kApplicationData) {
      if (!opened->content.empty()) delegate_->OnData(opened->content);
      continue;
    }
    // A KeyUpdate the peer asks us to answer goes out with our next data (no output here).
    Result<Tls13Records::Event> ev = records_->HandleControl(*opened);
    if (!ev.ok()) {
      FailWithAlert(records_->alert(), ev.status().message());
      return at;
    }
    if (*ev == Tls13Records::Event::kCloseNotify) {
      // Our close_notify answers theirs (section 6.1), unless sealed records still wait.
      FailWithAlert(Tls13Records::kAlertCloseNotify, "peer closed");
      return at;
    }
  }
  return at;
}

void Connection::DoReadRecords() {
  if (paused_) return;
  // A partly received record from an earlier read (or records left when reading paused).
  if (!in_.empty()) {
    const size_t used =
        ProcessRecords(std::span<uint8_t>(reinterpret_cast<uint8_t*>(in_.data()), in_.size()));
    if (state_ == State::kClosed) return;
    in_.erase(0, used);
    if (paused_ || state_ != State::kOpen) return;
  }
  const std::span<uint8_t> scratch = loop_.scratch();
  size_t budget = kReadBudgetPerTurn;
  while (state_ == State::kOpen && !paused_ && budget > 0) {
    const ssize_t n = RecvSome(scratch, &budget);
    if (n < 0) return;  // finished
    if (n == 0) break;  // drained
    std::span<uint8_t> data = scratch.first(static_cast<size_t>(n));
    if (!in_.empty()) {
      // Complete the pending record; process from the connection's own buffer.
      in_.append(reinterpret_cast<const char*>(data.data()), data.size());
      const size_t used =
          ProcessRecords(std::span<uint8_t>(reinterpret_cast<uint8_t*>(in_.data()), in_.size()));
      if (state_ == State::kClosed) return;
      in_.erase(0, used);
    } else {
      const size_t used = ProcessRecords(data);
      if (state_ == State::kClosed) return;
      in_.assign(reinterpret_cast<const char*>(data.data()) + used, data.size() - used);
    }
  }
  if (!in_.empty()) buffers_used_ = true;
}

void Connection::TrimBuffers() {
  if (buffers_used_) {
    buffers_used_ = false;
    return;
  }
  if (out_pos_ == out_.size() && out_.capacity() > 0) {
    std::string().swap(out_);
    out_pos_ = 0;
  }
  if (in_.empty() && in_.capacity() > 0) std::string().swap(in_);
}

bool Connection::Write(std::string_view bytes) {
  if (state_ >= State::kClosing) return false;
  if (queued_bytes() + bytes.size() > max_output_) return false;
  if (out_pos_ > 0 && out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
  out_.append(bytes);
  buffers_used_ = true;
  // Everything written during this loop turn leaves together: one TLS record (up to 16 KiB)
  // and one send() for many frames.
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    loop_.ScheduleFlush(this);
  }
  return true;
}

void Connection::OnFlush() {
  flush_scheduled_ = false;
  if (state_ == State::kOpen || state_ == State::kClosing) DoWrite();
  UpdateInterest();
}

ssize_t Connection::SendAvailable(std::string_view data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else if (errno != EINTR) {
      return -1;
    }
  }
  return static_cast<ssize_t>(sent);
}

void Connection::DoWriteRecords() {
  want_write_ = false;
  if (out_pos_ < out_.size()) {
    const std::string_view plain = std::string_view(out_).substr(out_pos_);
    Status sealed;
    if (wire_pos_ == wire_.size()) {
      // Nothing older waits: seal into the loop's buffer and send from there; only what the
      // socket does not take is copied into the connection.
      std::string& buf = loop_.seal_buffer();
      buf.clear();
      sealed = records_->SealApplicationData(plain, &buf);
      const ssize_t sent = sealed.ok() ? SendAvailable(buf) : 0;
      if (sent < 0) {
        Finish("write failed");
        return;
      }
      wire_.assign(buf, static_cast<size_t>(sent));
      wire_pos_ = 0;
    } else {
      sealed = records_->SealApplicationData(plain, &wire_);
    }
    out_.clear();  // the capacity stays for the next turn (TrimBuffers releases it)
    out_pos_ = 0;
    if (!sealed.ok()) {
      Finish(sealed.message());
      return;
    }
  }
  if (state_ == State::kClosing && wire_pos_ == wire_.size()) {
    // Everything is out: say goodbye (best effort) and close.
    std::string alert;
    if (records_->SealAlert(0, &alert).ok()) {
      [[maybe_unused]] ssize_t n = send(fd_, alert.data(), alert.size(), MSG_NOSIGNAL);
    }
    Finish(close_reason_);
    return;
  }
  if (wire_pos_ < wire_.size()) {
    const ssize_t n = SendAvailable(std::string_view(wire_).substr(wire_pos_));
    if (n < 0) {
      Finish("write failed");
      return;
    }
    wire_pos_ += static_cast<size_t>(n);
    if (wire_pos_ < wire_.size()) {
      want_write_ = true;  // the socket is full
      return;
    }
  }
  std::string().swap(wire_);
  wire_pos_ = 0;
  if (state_ == State::kClosing) {
    DoWriteRecords();  // sends close_notify and finishes
    return;
  }
  delegate_->OnWritable();
}

void Connection::DoWrite() {
  if (records_) {
    DoWriteRecords();
    return;
  }
  want_write_ = false;
  while (queued_bytes() > 0) {
    ERR_clear_error();
    const size_t chunk = std::min<size_t>(queued_bytes(), 16 * 1024);
    const int n = SSL_write(ssl_, out_.data() + out_pos_, static_cast<int>(chunk));
    if (n > 0) {
      out_pos_ += static_cast<size_t>(n);
      continue;
    }
    const int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      want_write_ = err == SSL_ERROR_WANT_WRITE;
      return;
    }
    Finish("write failed");
    return;
  }
  // Drained: release the queue's memory.
  std::string().swap(out_);
  out_pos_ = 0;
  if (state_ == State::kClosing) {
    SSL_shutdown(ssl_);
    Finish(close_reason_);
    return;
  }
  delegate_->OnWritable();
}

void Connection::PauseReading(bool paused) {
  if (paused_ == paused || state_ == State::kClosed) return;
  paused_ = paused;
  UpdateInterest();
  if (paused_ || state_ != State::kOpen) return;
  if (records_) {
    // Records read before the pause; new socket data wakes the loop (level-triggered).
    if (!in_.empty()) DoReadRecords();
  } else if (SSL_pending(ssl_) > 0) {
    DoRead();
  }
}

void Connection::Close(std::string_view reason) {
  if (state_ >= State::kClosing) return;
  close_reason_ = std::string(reason);
  if (state_ == State::kProxyHeader || state_ == State::kHandshake) {
    Finish(reason);
    return;
  }
  state_ = State::kClosing;
  DoWrite();
  UpdateInterest();
}

void Connection::Abort(std::string_view reason) {
  if (state_ == State::kClosed) return;
  Finish(reason);
}

void Connection::FailWithAlert(uint8_t alert, std::string_view reason) {
  if (state_ == State::kClosed) return;
  // Best effort, without waiting: the alert follows what is already sealed (it carries the
  // next sequence number), so it goes out only if all of that does.
  if (records_ && alert != Tls13Records::kNoAlert) {
    if (wire_pos_ < wire_.size()) {
      const ssize_t n = SendAvailable(std::string_view(wire_).substr(wire_pos_));
      if (n > 0) wire_pos_ += static_cast<size_t>(n);
    }
    std::string sealed;
    if (wire_pos_ == wire_.size() && records_->SealAlert(alert, &sealed).ok()) {
      [[maybe_unused]] ssize_t n = send(fd_, sealed.data(), sealed.size(), MSG_NOSIGNAL);
    }
  }
  Finish(reason);
}

void Connection::Finish(std::string_view reason) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  // Keys and secrets do not outlive the connection's use of them.
  records_.reset();
  if (secrets_) {
    OPENSSL_cleanse(secrets_.get(), sizeof(*secrets_));
    secrets_.reset();
  }
  loop_.Remove(fd_);
  close(fd_);
  fd_ = -1;
  std::string().swap(out_);
  out_pos_ = 0;
  std::string().swap(wire_);
  wire_pos_ = 0;
  std::string().swap(in_);
  delegate_->OnClosed(reason);
}

}  // namespace iris::net
