#include "net/http/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <list>
#include <mutex>
#include <utility>
#include <vector>

#include "common/assert.h"

namespace iris::net::http {

// Completed deferred responses on their way to the server's thread.
struct HttpResponder::Mailbox {
  std::mutex mu;
  bool closed = false;  // the server stopped: nothing more is accepted
  int wake_fd = -1;     // the server's eventfd; written under mu, so never after its close
  std::vector<std::pair<uint64_t, HttpResponse>> ready;  // (connection id, response)
};

bool HttpResponder::Complete(HttpResponse response) {
  std::lock_guard<std::mutex> lock(mailbox_->mu);
  if (done_ || mailbox_->closed) return false;
  done_ = true;
  mailbox_->ready.emplace_back(connection_id_, std::move(response));
  const uint64_t one = 1;
  // A full counter still wakes the loop, so the result does not matter.
  [[maybe_unused]] ssize_t n = write(mailbox_->wake_fd, &one, sizeof(one));
  return true;
}

bool HttpResponder::Abandon() {
  std::lock_guard<std::mutex> lock(mailbox_->mu);
  if (done_) return false;
  done_ = true;
  return true;
}

struct HttpServer::Connection {
  // kPending: a deferred handler has the request; nothing is read or written meanwhile.
  enum class Phase { kReading, kPending, kWriting, kDraining };

  uint64_t id = 0;
  int fd = -1;
  std::string peer;     // "address:port", as HttpRequest::peer
  std::string address;  // the client address alone: the key of per_ip_
  Phase phase = Phase::kReading;
  Clock::time_point deadline;
  std::string in;       // bytes received so far (head, then body)
  size_t head_end = 0;  // offset just past "\r\n\r\n"; 0 until seen
  ParsedHead head;      // valid once head_end != 0
  std::string out;      // the response being written
  size_t out_offset = 0;
  size_t drained = 0;                        // bytes discarded while lingering
  std::shared_ptr<HttpResponder> responder;  // while kPending
};

namespace {

constexpr size_t kReadChunk = 16 * 1024;
constexpr size_t kMaxDrainBytes = 1 << 20;
constexpr int kMaxAcceptsPerWake = 64;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

HttpResponse ErrorResponse(int status, std::string_view why) {
  HttpResponse r;
  r.status = status;
  r.body = std::string(ReasonPhrase(status));
  if (!why.empty()) {
    r.body += ": ";
    r.body += why;
  }
  r.body += '\n';
  return r;
}

// The client address without its port ("?" for other families).
std::string PeerAddress(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(addr).sin_addr, host, sizeof(host));
  } else if (addr.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(addr).sin6_addr, host, sizeof(host));
  }
  return host;
}

std::string PeerName(const sockaddr_storage& addr) {
  std::string out;
  if (addr.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(addr);
    out.append(PeerAddress(addr));
    out.push_back(':');
    out.append(std::to_string(ntohs(a.sin_port)));
  } else if (addr.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(addr);
    out.push_back('[');
    out.append(PeerAddress(addr));
    out.append("]:");
    out.append(std::to_string(ntohs(a.sin6_port)));
  }
  return out;
}

// Answers 503 on a connection that will not be served, if the socket takes it at once, and
// closes it.
void RefuseConnection(int fd, std::string_view why) {
  const std::string reply = SerializeResponse(ErrorResponse(503, why));
  [[maybe_unused]] ssize_t sent = send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
  // Discard what already arrived so that close() sends FIN, not a reset that could
  // destroy the 503 before the client reads it.
  shutdown(fd, SHUT_WR);
  char buf[4096];
  for (int k = 0; k < 16 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0; ++k) {
  }
  close(fd);
}

// The offset just past the blank line ending a request head, searching bytes from `from`
// on (minus what a terminator split across reads needs); npos if not there yet. A blank
// line of bare LFs also ends the head, so that ParseRequestHead refuses it (400) at once
// instead of the client waiting for the read timeout.
size_t FindHeadEnd(std::string_view in, size_t from) {
  from = from >= 3 ? from - 3 : 0;
  for (size_t i = in.find('\n', from); i != std::string_view::npos; i = in.find('\n', i + 1)) {
    if (i + 1 < in.size() && in[i + 1] == '\n') return i + 2;
    if (i + 2 < in.size() && in[i + 1] == '\r' && in[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

}  // namespace

HttpServer::HttpServer(HttpServerOptions options) : options_(options) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(std::string method, std::string path, Handler handler) {
  IRIS_RELEASE_ASSERT(!started_);
  routes_[std::move(path)][std::move(method)] = RouteEntry{std::move(handler), nullptr, {}};
}

void HttpServer::RouteDeferred(std::string method, std::string path, DeferredHandler handler,
                               std::chrono::milliseconds deadline) {
  IRIS_RELEASE_ASSERT(!started_);
  routes_[std::move(path)][std::move(method)] = RouteEntry{nullptr, std::move(handler), deadline};
}

Status HttpServer::Start(const std::string& address, uint16_t port) {
  if (started_) return Internal("HttpServer::Start called twice");

  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string host = address;
  if (host.empty() || host == "localhost") host = "127.0.0.1";
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    addr_len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    addr_len = sizeof(sockaddr_in6);
  } else {
    return BadRequest("admin listener address is not a numeric IP address: " + address);
  }

  const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Internal(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    const int err = errno;
    close(fd);
    return Unavailable("bind " + address + ":" + std::to_string(port) + ": " + std::strerror(err));
  }
  if (listen(fd, 128) != 0) {
    const int err = errno;
    close(fd);
    return Internal(std::string("listen: ") + std::strerror(err));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0) {
    const int err = errno;
    close(fd);
    return Internal(std::string("getsockname: ") + std::strerror(err));
  }
  const uint16_t bound_port = bound.ss_family == AF_INET
                                  ? ntohs(reinterpret_cast<sockaddr_in&>(bound).sin_port)
                                  : ntohs(reinterpret_cast<sockaddr_in6&>(bound).sin6_port);
  const int wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake < 0) {
    const int err = errno;
    close(fd);
    return Internal(std::string("eventfd: ") + std::strerror(err));
  }

  listen_fd_ = fd;
  wake_fd_ = wake;
  mailbox_ = std::make_shared<HttpResponder::Mailbox>();
  mailbox_->wake_fd = wake;
  started_ = true;
  port_.store(bound_port, std::memory_order_release);
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  // A full counter still wakes the loop, so the result does not matter.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  thread_.join();
  {
    std::lock_guard<std::mutex> lock(mailbox_->mu);
    mailbox_->closed = true;
    mailbox_->ready.clear();
  }
  close(listen_fd_);
  close(wake_fd_);
  listen_fd_ = -1;
  wake_fd_ = -1;
}

void HttpServer::Run() {
  std::vector<pollfd> fds;
  std::vector<Connection*> polled;
  Clock::time_point accept_paused_until{};

  while (!stopping_.load(std::memory_order_acquire)) {
    Clock::time_point now = Clock::now();
    fds.clear();
    polled.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    const bool accepting = now >= accept_paused_until;
    if (accepting) fds.push_back({listen_fd_, POLLIN, 0});
    Clock::time_point next_deadline = accepting ? Clock::time_point::max() : accept_paused_until;
    for (Connection& c : connections_) {
      // A pending connection is watched for errors and hang-ups only (reported anyway).
      const short events = c.phase == Connection::Phase::kWriting   ? POLLOUT
                           : c.phase == Connection::Phase::kPending ? 0
                                                                    : POLLIN;
      fds.push_back({c.fd, events, 0});
      polled.push_back(&c);
      next_deadline = std::min(next_deadline, c.deadline);
    }
    int timeout_ms = -1;
    if (next_deadline != Clock::time_point::max()) {
      const int64_t left =
          std::chrono::ceil<std::chrono::milliseconds>(next_deadline - now).count();
      timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 60'000));
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) {
      IRIS_BUG("HttpServer: poll failed");
      break;
    }
    if (stopping_.load(std::memory_order_acquire)) break;
    now = Clock::now();

    size_t i = 0;
    if (fds[i++].revents != 0) {
      uint64_t v = 0;
      [[maybe_unused]] ssize_t n = read(wake_fd_, &v, sizeof(v));
    }
    const bool listener_ready = accepting && fds[i++].revents != 0;

    for (size_t k = 0; k < polled.size(); ++k, ++i) {
      Connection& c = *polled[k];
      bool keep = true;
      if (fds[i].revents != 0) {
        switch (c.phase) {
          case Connection::Phase::kReading: keep = OnReadable(c, now); break;
          case Connection::Phase::kPending: keep = false; break;  // the client went away
          case Connection::Phase::kWriting: keep = OnWritable(c, now); break;
          case Connection::Phase::kDraining: keep = OnDrain(c); break;
        }
      }
      if (keep && now >= c.deadline) {
        if (c.phase == Connection::Phase::kReading) {
          keep = Respond(c, ErrorResponse(408, "request not received in time"), now);
        } else if (c.phase == Connection::Phase::kPending) {
          if (c.responder->Abandon()) {
            c.responder.reset();
            keep = Respond(c, ErrorResponse(503, "no answer in time"), now);
          } else {
            // Completed just now: DeliverCompleted below sends it.
            c.deadline = Clock::time_point::max();
          }
        } else {
          keep = false;
        }
      }
      if (!keep) CloseConnection(c);
    }
    DeliverCompleted(now);
    connections_.remove_if([](const Connection& c) { return c.fd < 0; });

    if (listener_ready && !AcceptAll(now)) {
      accept_paused_until = now + std::chrono::milliseconds(100);
    }
    open_connections_.store(connections_.size(), std::memory_order_relaxed);
  }

  for (Connection& c : connections_) {
    if (c.responder) c.responder->Abandon();
    close(c.fd);
  }
  connections_.clear();
  per_ip_.clear();
  open_connections_.store(0, std::memory_order_relaxed);
}

bool HttpServer::AcceptAll(Clock::time_point now) {
  for (int n = 0; n < kMaxAcceptsPerWake; ++n) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    const int fd =
        accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) return false;
      return true;  // EAGAIN: the queue is empty
    }
    if (connections_.size() >= options_.max_connections) {
      RefuseConnection(fd, "too many admin connections");
      continue;
    }
    std::string address = PeerAddress(addr);
    size_t& open_from_address = per_ip_[address];  // entry erased when it drops back to 0
    if (open_from_address >= std::max<size_t>(options_.max_connections_per_ip, 1)) {
      RefuseConnection(fd, "too many admin connections from this address");
      continue;
    }
    ++open_from_address;
    Connection& c = connections_.emplace_back();
    c.id = next_connection_id_++;
    c.fd = fd;
    c.peer = PeerName(addr);
    c.address = std::move(address);
    c.deadline = now + options_.read_timeout;
  }
  return true;
}

void HttpServer::CloseConnection(Connection& c) {
  if (c.responder) {
    c.responder->Abandon();  // a later Complete() is refused
    c.responder.reset();
  }
  close(c.fd);
  c.fd = -1;
  ReleaseSlot(c);
}

void HttpServer::DeliverCompleted(Clock::time_point now) {
  std::vector<std::pair<uint64_t, HttpResponse>> ready;
  {
    std::lock_guard<std::mutex> lock(mailbox_->mu);
    ready.swap(mailbox_->ready);
  }
  for (auto& [id, response] : ready) {
    for (Connection& c : connections_) {
      if (c.id != id || c.fd < 0 || c.phase != Connection::Phase::kPending) continue;
      c.responder.reset();
      if (!Respond(c, response, now)) CloseConnection(c);
      break;
    }
  }
}

void HttpServer::ReleaseSlot(const Connection& c) {
  auto it = per_ip_.find(c.address);
  if (it == per_ip_.end()) return;
  if (--it->second == 0) per_ip_.erase(it);
}

bool HttpServer::OnReadable(Connection& c, Clock::time_point now) {
  char buf[kReadChunk];
  while (true) {
    // Never hold more than the head limit plus the announced body.
    const size_t limit =
        c.head_end == 0 ? options_.max_head_bytes + 4 : c.head_end + c.head.content_length;
    if (c.in.size() >= limit) break;
    const ssize_t n = recv(c.fd, buf, std::min(sizeof(buf), limit - c.in.size()), 0);
    if (n == 0) return false;  // the client closed before sending a whole request
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return false;
    }
    const size_t old_size = c.in.size();
    c.in.append(buf, static_cast<size_t>(n));
    if (c.head_end == 0) {
      const size_t end = FindHeadEnd(c.in, old_size);
      if (end == std::string::npos) {
        if (c.in.size() > options_.max_head_bytes) {
          return Respond(c, ErrorResponse(431, "request head over the limit"), now);
        }
        continue;
      }
      c.head_end = end;
      if (c.head_end > options_.max_head_bytes) {
        return Respond(c, ErrorResponse(431, "request head over the limit"), now);
      }
      c.head =
          ParseRequestHead(std::string_view(c.in).substr(0, c.head_end), options_.max_body_bytes);
      if (c.head.error_status != 0) {
        return Respond(c, ErrorResponse(c.head.error_status, c.head.error), now);
      }
      if (c.head.expect_continue && c.in.size() - c.head_end < c.head.content_length) {
        // Best effort: 25 bytes into an empty send buffer of a fresh socket.
        [[maybe_unused]] ssize_t sent =
            send(c.fd, kContinue.data(), kContinue.size(), MSG_NOSIGNAL);
      }
    }
  }
  if (c.head_end == 0 || c.in.size() - c.head_end < c.head.content_length) return true;

  HttpRequest& request = c.head.request;
  request.body = c.in.substr(c.head_end, c.head.content_length);
  request.peer = c.peer;
  c.in.clear();
  c.in.shrink_to_fit();
  return Dispatch(c, request, now);
}

bool HttpServer::Dispatch(Connection& c, const HttpRequest& request, Clock::time_point now) {
  auto path_it = routes_.find(request.path);
  if (path_it == routes_.end()) return Respond(c, ErrorResponse(404, ""), now);
  auto method_it = path_it->second.find(request.method);
  if (method_it == path_it->second.end()) {
    HttpResponse r = ErrorResponse(405, "");
    std::string allow;
    for (const auto& [method, route] : path_it->second) {
      if (!allow.empty()) allow += ", ";
      allow += method;
    }
    r.headers.emplace_back("Allow", std::move(allow));
    return Respond(c, r, now);
  }
  const RouteEntry& route = method_it->second;
  std::string failure;
  if (route.deferred) {
    // Pending from here on; the handler may complete at once (DeliverCompleted sends it in
    // this loop turn) or from another thread later.
    c.responder.reset(new HttpResponder(mailbox_, c.id));
    c.phase = Connection::Phase::kPending;
    c.deadline = now + route.deadline;
    try {
      route.deferred(request, c.responder);
      return true;
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "handler failed";
    }
    if (!c.responder->Abandon()) return true;  // it answered before throwing
    c.responder.reset();
    return Respond(c, ErrorResponse(500, failure), now);
  }
  try {
    return Respond(c, route.handler(request), now);
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "handler failed";
  }
  return Respond(c, ErrorResponse(500, failure), now);
}

bool HttpServer::Respond(Connection& c, const HttpResponse& response, Clock::time_point now) {
  c.out = SerializeResponse(response);
  c.out_offset = 0;
  c.phase = Connection::Phase::kWriting;
  c.deadline = now + options_.write_timeout;
  return OnWritable(c, now);
}

bool HttpServer::OnWritable(Connection& c, Clock::time_point now) {
  while (c.out_offset < c.out.size()) {
    const ssize_t n =
        send(c.fd, c.out.data() + c.out_offset, c.out.size() - c.out_offset, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      return false;
    }
    c.out_offset += static_cast<size_t>(n);
  }
  // All sent: half-close and discard the rest of the request (lingering close), so that
  // unread input does not turn our close into a reset that destroys the response.
  shutdown(c.fd, SHUT_WR);
  c.out.clear();
  c.out.shrink_to_fit();
  c.in.clear();
  c.in.shrink_to_fit();
  c.phase = Connection::Phase::kDraining;
  c.deadline = now + options_.linger;
  return true;
}

bool HttpServer::OnDrain(Connection& c) {
  char buf[kReadChunk];
  while (true) {
    const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    c.drained += static_cast<size_t>(n);
    if (c.drained > kMaxDrainBytes) return false;
  }
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Walk the longer input whole; only the lengths affect the time taken.
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

bool CheckBearer(const HttpRequest& request, std::string_view token) {
  if (token.empty()) return false;
  const std::string* value = request.Header("authorization");
  if (value == nullptr) return false;
  std::string_view v = *value;
  constexpr std::string_view kScheme = "bearer ";
  if (v.size() < kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    const char ch = v[i] >= 'A' && v[i] <= 'Z' ? static_cast<char>(v[i] - 'A' + 'a') : v[i];
    if (ch != kScheme[i]) return false;
  }
  v.remove_prefix(kScheme.size());
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  return ConstantTimeEquals(v, token);
}

}  // namespace iris::net::http
