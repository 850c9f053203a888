#include "net/connection.h"

#include <openssl/err.h>
#include <unistd.h>

#include "net/tls.h"

namespace iris::net {

Connection::Connection(EventLoop& loop, SSL_CTX* ctx, int fd, Delegate* delegate,
                       size_t max_output_bytes)
    : loop_(loop),
      ssl_(SSL_new(ctx)),
      fd_(fd),
      delegate_(delegate),
      max_output_(static_cast<uint32_t>(max_output_bytes)) {}

Connection::~Connection() {
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
  interest_ = EPOLLIN | EPOLLRDHUP;
  return loop_.Add(fd_, interest_, this);
}

void Connection::UpdateInterest() {
  if (state_ == State::kClosed) return;
  uint32_t want = EPOLLRDHUP;
  if (!paused_ || state_ == State::kHandshake) want |= EPOLLIN;
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
  if (paused_ && (events & (EPOLLHUP | EPOLLRDHUP))) {
    Finish("peer closed");
    return;
  }
  if (state_ == State::kHandshake) {
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

void Connection::DoRead() {
  if (paused_ || state_ == State::kClosing) {
    // Still detect a peer that went away while we are not reading.
    if (state_ == State::kClosing) DoWrite();
    return;
  }
  auto buf = loop_.scratch();
  // Reads until the socket is drained (bounded by the kernel's receive buffer) or the
  // delegate pauses reading; data left inside OpenSSL is picked up by PauseReading(false).
  while (state_ == State::kOpen && !paused_) {
    ERR_clear_error();
    const int n = SSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) {
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

bool Connection::Write(std::string_view bytes) {
  if (state_ >= State::kClosing) return false;
  if (queued_bytes() + bytes.size() > max_output_) return false;
  if (out_pos_ > 0 && out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
  out_.append(bytes);
  if (state_ == State::kOpen || state_ == State::kClosing) DoWrite();
  UpdateInterest();
  return true;
}

void Connection::DoWrite() {
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
  if (!paused_ && state_ == State::kOpen && SSL_pending(ssl_) > 0) DoRead();
}

void Connection::Close(std::string_view reason) {
  if (state_ >= State::kClosing) return;
  close_reason_ = std::string(reason);
  if (state_ == State::kHandshake) {
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

void Connection::Finish(std::string_view reason) {
  if (state_ == State::kClosed) return;
  state_ = State::kClosed;
  loop_.Remove(fd_);
  close(fd_);
  fd_ = -1;
  std::string().swap(out_);
  out_pos_ = 0;
  delegate_->OnClosed(reason);
}

}  // namespace iris::net
