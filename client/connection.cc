#include "iris/client/connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <google/protobuf/message_lite.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "client/connection_test_access.h"
#include "common/clock.h"
#include "net/tls.h"
#include "wire/frame.h"

namespace iris::client {
namespace {

// OpenSSL writes to its socket with write(2), which raises SIGPIPE when the server has
// closed the connection, and SIGPIPE ends the process by default: a library must not do
// that to its application. SIGPIPE is blocked on this thread for the scope, and one raised
// meanwhile (and not pending before) is taken back; the write fails with EPIPE instead.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    if (!was_pending_) pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~NoSigpipe() {
    if (was_pending_) return;
    const timespec zero{0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t old_{};
  bool was_pending_ = false;
};

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

enum class Wait { kReady, kTimeout, kWoken };

// Waits for `events` on fd until deadline, or until wake_fd (when >= 0) is readable.
Wait WaitFdOrWake(int fd, short events, int64_t deadline, int wake_fd) {
  for (;;) {
    const int64_t left = deadline - NowMs();
    if (left <= 0) return Wait::kTimeout;
    pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int r = poll(p, wake_fd >= 0 ? 2 : 1, static_cast<int>(left));
    if (r > 0) {
      if (p[0].revents != 0) return Wait::kReady;
      return Wait::kWoken;
    }
    if (r < 0 && errno != EINTR) return Wait::kReady;  // let the caller see the error
  }
}

// Waits for `events` on fd until deadline. False on timeout.
bool WaitFd(int fd, short events, int64_t deadline) {
  return WaitFdOrWake(fd, events, deadline, -1) == Wait::kReady;
}

}  // namespace

struct Connection::Tls {
  std::unique_ptr<net::TlsContext> ctx;
  SSL* ssl = nullptr;
  std::mutex mu;  // guards every call on ssl (one sender + one reader thread)
};

Connection::Connection() : tls_(std::make_unique<Tls>()) {}

Status ConnectionTestAccess::SendRaw(Connection& c, std::string_view bytes) {
  return c.SendBytes(bytes);
}

Result<std::unique_ptr<Connection>> Connection::Connect(const ConnectOptions& o) {
  auto ctx = net::TlsContext::Client(o.ca_file, o.fingerprint);
  if (!ctx.ok()) return ctx.status();
  std::unique_ptr<Connection> c(new Connection());
  c->tls_->ctx = std::move(*ctx);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(o.port);
  if (getaddrinfo(o.host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    return Unavailable("cannot resolve server address " + o.host, 0);
  }
  c->fd_ = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd_ < 0) {
    freeaddrinfo(res);
    return Internal(std::string("socket: ") + strerror(errno));
  }
  if (!o.source_address.empty()) {
    addrinfo* src = nullptr;
    if (getaddrinfo(o.source_address.c_str(), nullptr, &hints, &src) == 0 && src != nullptr) {
      const int rc = bind(c->fd_, src->ai_addr, src->ai_addrlen);
      freeaddrinfo(src);
      if (rc != 0) {
        freeaddrinfo(res);
        return Unavailable(
            "cannot bind source address " + o.source_address + ": " + strerror(errno), 0);
      }
    }
  }
  int one = 1;
  setsockopt(c->fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const int64_t deadline = NowMs() + o.timeout_ms;
  int rc = connect(c->fd_, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc != 0 && errno != EINPROGRESS) {
    return Unavailable("cannot connect to " + o.host + ":" + port + ": " + strerror(errno), 0);
  }
  if (rc != 0) {
    if (!WaitFd(c->fd_, POLLOUT, deadline)) {
      return Unavailable("timed out connecting to " + o.host + ":" + port, 0);
    }
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd_, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return Unavailable("cannot connect to " + o.host + ":" + port + ": " + strerror(err), 0);
    }
  }
  SSL* ssl = SSL_new(c->tls_->ctx->get());
  c->tls_->ssl = ssl;
  SSL_set_fd(ssl, c->fd_);
  SSL_set_tlsext_host_name(ssl, o.host.c_str());
  if (o.fingerprint.empty()) {
    in6_addr a6;
    in_addr a4;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (inet_pton(AF_INET, o.host.c_str(), &a4) == 1 ||
        inet_pton(AF_INET6, o.host.c_str(), &a6) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(param, o.host.c_str());
    } else {
      SSL_set1_host(ssl, o.host.c_str());
    }
  }
  std::string presented;  // the pin of the key the server showed (pinned contexts)
  net::CapturePresentedPin(ssl, &presented);
  SSL_set_connect_state(ssl);
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl);
    if (r == 1) {
      net::CapturePresentedPin(ssl, nullptr);
      break;
    }
    const int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (!WaitFd(c->fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
        return Unavailable("timed out in the TLS handshake", 0);
      }
      continue;
    }
    const long verify = SSL_get_verify_result(ssl);
    net::CapturePresentedPin(ssl, nullptr);
    if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_CERTIFICATE_VERIFY_FAILED &&
        (verify == X509_V_OK || !o.fingerprint.empty())) {
      // The pin check runs as the verify callback and leaves no X509 error.
      net::CapturePresentedPin(ssl, nullptr);
      const bool spki = c->tls_->ctx->pin_kind() == net::TlsContext::PinKind::kSpki;
      return Unauthenticated(
          std::string("server certificate does not match the pinned ") +
          (spki ? "public key " : "certificate fingerprint ") + o.fingerprint +
          (presented.empty() ? "" : " (the server presented " + presented + ")") +
          (spki ? ""
                : "; a certificate fingerprint changes at every renewal, pin the "
                  "public key (pin-sha256:...) instead"));
    }
    if (verify != X509_V_OK) {
      return Unauthenticated(std::string("server certificate rejected: ") +
                             X509_verify_cert_error_string(verify));
    }
    return Unavailable("TLS handshake failed: " + net::OpenSslError(), 0);
  }
  return c;
}

Connection::~Connection() { Close(); }

void Connection::Close() {
  if (tls_->ssl != nullptr) {
    if (fd_ >= 0) {
      NoSigpipe no_sigpipe;
      SSL_shutdown(tls_->ssl);
    }
    SSL_free(tls_->ssl);
    tls_->ssl = nullptr;
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

void Connection::Abort() {
  if (fd_ >= 0) {
    linger l{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd_);
    fd_ = -1;
  }
  if (tls_->ssl != nullptr) {
    SSL_free(tls_->ssl);
    tls_->ssl = nullptr;
  }
}

Status Connection::SendFrame(uint8_t opcode, const google::protobuf::MessageLite& m) {
  std::string frame;
  IRIS_RETURN_IF_ERROR(wire::AppendMessageFrame(&frame, opcode, m));
  return SendBytes(frame);
}

Status Connection::SendBytes(std::string_view bytes) {
  if (fd_ < 0) return Unavailable("connection closed", 0);
  SSL* ssl = tls_->ssl;
  const int64_t deadline = NowMs() + 30'000;
  while (!bytes.empty()) {
    int n, err = SSL_ERROR_NONE;
    {
      std::lock_guard<std::mutex> lock(tls_->mu);
      NoSigpipe no_sigpipe;
      ERR_clear_error();
      n = SSL_write(ssl, bytes.data(), static_cast<int>(std::min<size_t>(bytes.size(), 1 << 20)));
      if (n <= 0) err = SSL_get_error(ssl, n);
    }
    if (n > 0) {
      bytes.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      if (!WaitFd(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
        return Overloaded("write timed out", 0);
      }
      continue;
    }
    return Unavailable("connection closed while writing", 0);
  }
  return Status::Ok();
}

Status Connection::FillAtLeast(size_t n, int timeout_ms, int wake_fd) {
  SSL* ssl = tls_->ssl;
  const int64_t deadline = NowMs() + timeout_ms;
  char buf[16384];
  while (in_.size() < n) {
    if (fd_ < 0) return Unavailable("connection closed", 0);
    int r, err = SSL_ERROR_NONE;
    {
      std::lock_guard<std::mutex> lock(tls_->mu);
      ERR_clear_error();
      r = SSL_read(ssl, buf, sizeof(buf));
      if (r <= 0) err = SSL_get_error(ssl, r);
    }
    if (r > 0) {
      in_.append(buf, static_cast<size_t>(r));
      continue;
    }
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      const Wait w =
          WaitFdOrWake(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, wake_fd);
      if (w == Wait::kTimeout) {
        return Overloaded("no frame within " + std::to_string(timeout_ms) + " ms", 0);
      }
      if (w == Wait::kWoken) return Overloaded("woken", 0);
      continue;
    }
    if (err == SSL_ERROR_ZERO_RETURN) return Unavailable("server closed the connection", 0);
    return Unavailable("connection lost", 0);
  }
  return Status::Ok();
}

Result<ReceivedFrame> Connection::ReadFrame(int timeout_ms) { return ReadFrame(timeout_ms, -1); }

Result<ReceivedFrame> Connection::ReadFrame(int timeout_ms, int wake_fd) {
  IRIS_RETURN_IF_ERROR(FillAtLeast(wire::kFrameHeaderBytes, timeout_ms, wake_fd));
  const auto* h = reinterpret_cast<const uint8_t*>(in_.data());
  const size_t len = (static_cast<size_t>(h[1]) << 8) | h[2];
  IRIS_RETURN_IF_ERROR(FillAtLeast(wire::kFrameHeaderBytes + len, timeout_ms, wake_fd));
  ReceivedFrame f;
  f.opcode = static_cast<uint8_t>(in_[0]);
  f.payload = in_.substr(wire::kFrameHeaderBytes, len);
  in_.erase(0, wire::kFrameHeaderBytes + len);
  return f;
}

}  // namespace iris::client
