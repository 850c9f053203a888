#include "cluster/http_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/clock.h"

namespace iris::cluster {
namespace {

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

int PollTimeout(int64_t deadline_ms) {
  const int64_t left = deadline_ms - NowMs();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left, 1'000'000));
}

// host and port of "host:port", "[v6]:port" or "http(s)://host:port[/]".
bool ParseEndpoint(std::string ep, std::string* host, std::string* port) {
  for (const char* scheme : {"http://", "https://"}) {
    if (ep.rfind(scheme, 0) == 0) ep = ep.substr(strlen(scheme));
  }
  while (!ep.empty() && ep.back() == '/') ep.pop_back();
  const size_t colon = ep.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == ep.size()) return false;
  *host = ep.substr(0, colon);
  *port = ep.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return true;
}

std::string SslError() {
  char buf[256];
  const unsigned long e = ERR_get_error();
  if (e == 0) return "TLS error";
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

}  // namespace

Result<std::shared_ptr<SSL_CTX>> MakeClientTlsContext(const TlsFiles& files) {
  if (!files.enabled()) {
    if (!files.cert_file.empty() || !files.key_file.empty()) {
      return BadRequest("--etcd-cert/--etcd-key need --etcd-ca");
    }
    return std::shared_ptr<SSL_CTX>();
  }
  if (files.cert_file.empty() != files.key_file.empty()) {
    return BadRequest("--etcd-cert and --etcd-key go together");
  }
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) return Internal("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx.get(), files.ca_file.c_str(), nullptr) != 1) {
    return BadRequest("cannot load the etcd CA file " + files.ca_file + ": " + SslError());
  }
  if (!files.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), files.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), files.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1) {
      return BadRequest("cannot load the etcd client certificate/key " + files.cert_file + ", " +
                        files.key_file + ": " + SslError());
    }
  }
  return ctx;
}

HttpConnection::HttpConnection(std::string endpoint, std::shared_ptr<SSL_CTX> tls)
    : endpoint_(std::move(endpoint)), tls_(std::move(tls)) {}

HttpConnection::~HttpConnection() { Close(); }

void HttpConnection::Close() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  in_.clear();
  chunks_.Reset();
}

Status HttpConnection::Connect(int64_t deadline_ms) {
  Close();
  std::string host, port;
  if (!ParseEndpoint(endpoint_, &host, &port)) {
    return BadRequest("bad etcd endpoint '" + endpoint_ + "' (want host:port)");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    return Unavailable("cannot resolve etcd endpoint " + endpoint_);
  }
  std::string err = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, PollTimeout(deadline_ms)) == 1) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        rc = soerr == 0 ? 0 : -1;
        errno = soerr;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) {
      fd_ = fd;
      break;
    }
    err = strerror(errno);
    close(fd);
  }
  freeaddrinfo(res);
  if (fd_ < 0) return Unavailable("cannot connect to etcd at " + endpoint_ + ": " + err);
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (tls_) {
    ssl_ = SSL_new(tls_.get());
    SSL_set_fd(ssl_, fd_);
    // Verify the name we dialled: an IP literal against the certificate's IP SANs, a host
    // name against its DNS names (and send it as SNI).
    in6_addr ip_probe;
    const bool is_ip = inet_pton(AF_INET, host.c_str(), &ip_probe) == 1 ||
                       inet_pton(AF_INET6, host.c_str(), &ip_probe) == 1;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, host.c_str());
      SSL_set1_host(ssl_, host.c_str());
    }
    for (;;) {
      const int rc = SSL_connect(ssl_);
      if (rc == 1) break;
      const int e = SSL_get_error(ssl_, rc);
      short events = 0;
      if (e == SSL_ERROR_WANT_READ)
        events = POLLIN;
      else if (e == SSL_ERROR_WANT_WRITE)
        events = POLLOUT;
      else {
        const std::string msg = SslError();
        Close();
        return Unavailable("TLS handshake with etcd at " + endpoint_ + " failed: " + msg);
      }
      pollfd p{fd_, events, 0};
      if (poll(&p, 1, PollTimeout(deadline_ms)) != 1) {
        Close();
        return Unavailable("TLS handshake with etcd at " + endpoint_ + " timed out");
      }
    }
  }
  return Status::Ok();
}

Status HttpConnection::WriteAll(const std::string& data, int64_t deadline_ms) {
  size_t off = 0;
  while (off < data.size()) {
    short wait = POLLOUT;
    if (ssl_ != nullptr) {
      const int n = SSL_write(ssl_, data.data() + off, static_cast<int>(data.size() - off));
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      const int e = SSL_get_error(ssl_, n);
      if (e == SSL_ERROR_WANT_READ)
        wait = POLLIN;
      else if (e != SSL_ERROR_WANT_WRITE)
        return Unavailable("write to etcd failed");
    } else {
      const ssize_t n = send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return Unavailable(std::string("write to etcd failed: ") + strerror(errno));
      }
    }
    pollfd p{fd_, wait, 0};
    if (poll(&p, 1, PollTimeout(deadline_ms)) != 1) return Unavailable("write to etcd timed out");
  }
  return Status::Ok();
}

Status HttpConnection::Fill(int64_t deadline_ms, bool* timed_out) {
  *timed_out = false;
  char buf[16384];
  for (;;) {
    short wait = POLLIN;
    if (ssl_ != nullptr) {
      const int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n > 0) {
        in_.append(buf, static_cast<size_t>(n));
        return Status::Ok();
      }
      const int e = SSL_get_error(ssl_, n);
      if (e == SSL_ERROR_WANT_WRITE)
        wait = POLLOUT;
      else if (e != SSL_ERROR_WANT_READ)
        return Unavailable("etcd closed the connection");
    } else {
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0) {
        in_.append(buf, static_cast<size_t>(n));
        return Status::Ok();
      }
      if (n == 0) return Unavailable("etcd closed the connection");
      if (errno != EAGAIN && errno != EINTR) {
        return Unavailable(std::string("read from etcd failed: ") + strerror(errno));
      }
    }
    pollfd p{fd_, wait, 0};
    const int rc = poll(&p, 1, PollTimeout(deadline_ms));
    if (rc == 0) {
      *timed_out = true;
      return Status::Ok();
    }
    if (rc < 0 && errno != EINTR) return Unavailable("poll failed");
  }
}

Status HttpConnection::ReadHead(int64_t deadline_ms, int* status, int64_t* content_length,
                                bool* chunked, bool* close_after) {
  size_t end;
  while ((end = in_.find("\r\n\r\n")) == std::string::npos) {
    if (in_.size() > 65536) return Unavailable("etcd response head too large");
    bool timed_out = false;
    IRIS_RETURN_IF_ERROR(Fill(deadline_ms, &timed_out));
    if (timed_out) return Unavailable("etcd did not answer in time");
  }
  const std::string head = in_.substr(0, end);
  in_.erase(0, end + 4);
  if (head.rfind("HTTP/1.", 0) != 0 || head.size() < 12) {
    return Unavailable("malformed HTTP response from etcd");
  }
  *status = std::atoi(head.c_str() + 9);
  *content_length = -1;
  *chunked = false;
  *close_after = head.compare(0, 8, "HTTP/1.0") == 0;
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos < head.size()) {
    const size_t next = head.find("\r\n", pos + 2);
    const std::string line =
        head.substr(pos + 2, (next == std::string::npos ? head.size() : next) - pos - 2);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      const std::string name = line.substr(0, colon);
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      if (strcasecmp(name.c_str(), "content-length") == 0) {
        *content_length = std::atoll(value.c_str());
      } else if (strcasecmp(name.c_str(), "transfer-encoding") == 0) {
        *chunked = strcasestr(value.c_str(), "chunked") != nullptr;
      } else if (strcasecmp(name.c_str(), "connection") == 0) {
        if (strcasestr(value.c_str(), "close") != nullptr) *close_after = true;
      }
    }
    pos = next;
  }
  return Status::Ok();
}

Status ChunkedDecoder::Decode(std::string* in, std::string* out, bool* finished) {
  *finished = false;
  for (;;) {
    if (remaining_ < 0) {
      const size_t eol = in->find("\r\n");
      if (eol == std::string::npos) return Status::Ok();
      char* endp = nullptr;
      const long long size = std::strtoll(in->c_str(), &endp, 16);
      if (endp == in->c_str() || size < 0) return Unavailable("bad chunk size from etcd");
      if (size == 0) {
        // The last chunk: its trailer section (header lines, then an empty line) follows.
        // Nothing is consumed until all of it is here.
        const size_t end = in->find("\r\n\r\n", eol);
        if (end == std::string::npos) return Status::Ok();
        in->erase(0, end + 4);
        *finished = true;
        remaining_ = -1;
        return Status::Ok();
      }
      in->erase(0, eol + 2);
      remaining_ = size;
    }
    if (remaining_ > 0) {
      const size_t take = std::min<size_t>(in->size(), static_cast<size_t>(remaining_));
      out->append(*in, 0, take);
      in->erase(0, take);
      remaining_ -= static_cast<int64_t>(take);
      if (remaining_ > 0) return Status::Ok();
    }
    // Chunk data done (remaining_ 0); its CRLF follows.
    if (in->size() < 2) return Status::Ok();
    in->erase(0, 2);
    remaining_ = -1;
  }
}

Status HttpConnection::ReadBody(int64_t deadline_ms, int64_t content_length, bool chunked,
                                std::string* body) {
  if (chunked) {
    chunks_.Reset();
    for (;;) {
      bool finished = false;
      IRIS_RETURN_IF_ERROR(chunks_.Decode(&in_, body, &finished));
      if (finished) return Status::Ok();
      bool timed_out = false;
      IRIS_RETURN_IF_ERROR(Fill(deadline_ms, &timed_out));
      if (timed_out) return Unavailable("etcd response timed out");
    }
  }
  if (content_length >= 0) {
    while (static_cast<int64_t>(in_.size()) < content_length) {
      bool timed_out = false;
      IRIS_RETURN_IF_ERROR(Fill(deadline_ms, &timed_out));
      if (timed_out) return Unavailable("etcd response timed out");
    }
    body->assign(in_, 0, static_cast<size_t>(content_length));
    in_.erase(0, static_cast<size_t>(content_length));
    return Status::Ok();
  }
  // Neither: the body runs to the end of the connection.
  for (;;) {
    bool timed_out = false;
    const Status s = Fill(deadline_ms, &timed_out);
    if (!s.ok()) break;
    if (timed_out) return Unavailable("etcd response timed out");
  }
  *body = std::move(in_);
  in_.clear();
  Close();
  return Status::Ok();
}

namespace {
std::string RequestText(const std::string& endpoint, const std::string& path,
                        const std::string& body) {
  std::string host = endpoint;
  for (const char* scheme : {"http://", "https://"}) {
    if (host.rfind(scheme, 0) == 0) host = host.substr(strlen(scheme));
  }
  std::string req =
      "POST " + path + " HTTP/1.1\r\nHost: " + host +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n\r\n";
  req += body;
  return req;
}
}  // namespace

Result<HttpResponse> HttpConnection::Post(const std::string& path, const std::string& body,
                                          int64_t deadline_ms) {
  // A kept-alive connection may have been closed by the server meanwhile: one retry on a
  // fresh connection when the reused one fails before any response byte arrived.
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = fd_ >= 0;
    if (!reused) IRIS_RETURN_IF_ERROR(Connect(deadline_ms));
    in_.clear();
    Status s = WriteAll(RequestText(endpoint_, path, body), deadline_ms);
    HttpResponse resp;
    int64_t content_length = -1;
    bool chunked = false, close_after = false;
    if (s.ok()) s = ReadHead(deadline_ms, &resp.status, &content_length, &chunked, &close_after);
    if (!s.ok()) {
      Close();
      if (reused && NowMs() < deadline_ms) continue;
      return s;
    }
    s = ReadBody(deadline_ms, content_length, chunked, &resp.body);
    if (!s.ok()) {
      Close();
      return s;
    }
    if (close_after) Close();
    return resp;
  }
  return Unavailable("etcd request failed");
}

Status HttpConnection::StartStream(const std::string& path, const std::string& body,
                                   int64_t deadline_ms, int* status) {
  IRIS_RETURN_IF_ERROR(Connect(deadline_ms));
  Status s = WriteAll(RequestText(endpoint_, path, body), deadline_ms);
  int64_t content_length = -1;
  bool close_after = false;
  if (s.ok()) s = ReadHead(deadline_ms, status, &content_length, &stream_chunked_, &close_after);
  if (!s.ok()) {
    Close();
    return s;
  }
  chunks_.Reset();
  return Status::Ok();
}

Status HttpConnection::ReadSome(std::string* out, int64_t deadline_ms) {
  if (fd_ < 0) return Unavailable("stream closed");
  for (;;) {
    const size_t before = out->size();
    if (stream_chunked_) {
      bool finished = false;
      Status s = chunks_.Decode(&in_, out, &finished);
      if (!s.ok() || finished) {
        Close();
        return s.ok() ? Unavailable("etcd ended the stream") : s;
      }
    } else {
      out->append(in_);
      in_.clear();
    }
    if (out->size() > before) return Status::Ok();
    bool timed_out = false;
    Status s = Fill(deadline_ms, &timed_out);
    if (!s.ok()) {
      Close();
      return s;
    }
    if (timed_out) return Status::Ok();
  }
}

}  // namespace iris::cluster
