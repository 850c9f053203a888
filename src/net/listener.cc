#include "net/listener.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/clock.h"

namespace iris::net {

Status SplitHostPort(const std::string& hp, std::string* host, uint16_t* port) {
  std::string p;
  if (!hp.empty() && hp[0] == '[') {
    const size_t close = hp.find(']');
    if (close == std::string::npos || close + 1 >= hp.size() || hp[close + 1] != ':') {
      return BadRequest("bad address '" + hp + "': expected [v6]:port");
    }
    *host = hp.substr(1, close - 1);
    p = hp.substr(close + 2);
  } else {
    const size_t colon = hp.rfind(':');
    if (colon == std::string::npos) return BadRequest("bad address '" + hp + "': expected host:port");
    *host = hp.substr(0, colon);
    p = hp.substr(colon + 1);
  }
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) {
    return BadRequest("bad port in '" + hp + "'");
  }
  const unsigned long v = std::stoul(p);
  if (v > 65535) return BadRequest("bad port in '" + hp + "'");
  *port = static_cast<uint16_t>(v);
  if (host->empty()) *host = "0.0.0.0";
  return Status::Ok();
}

Result<int> ListenTcp(const std::string& host_port, int backlog) {
  auto fd = BindTcp(host_port);
  if (!fd.ok()) return fd;
  if (listen(*fd, backlog) != 0) {
    const std::string err = strerror(errno);
    close(*fd);
    return Internal("listen: " + err);
  }
  return fd;
}

Result<int> BindTcp(const std::string& host_port) {
  std::string host;
  uint16_t port = 0;
  IRIS_RETURN_IF_ERROR(SplitHostPort(host_port, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port);
  if (getaddrinfo(host.c_str(), port_str.c_str(), &hints, &res) != 0 || res == nullptr) {
    return BadRequest("cannot resolve listen address '" + host_port + "'");
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return Internal(std::string("socket: ") + strerror(errno));
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  const int rc = bind(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc != 0) {
    const std::string err = strerror(errno);
    close(fd);
    return Unavailable("cannot bind " + host_port + ": " + err, 0);
  }
  return fd;
}

Result<uint16_t> LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return Internal(std::string("getsockname: ") + strerror(errno));
  }
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

Listener::Listener(EventLoop& loop, int fd, AcceptFn on_accept, StarvedFn on_starved)
    : loop_(loop), fd_(fd), on_accept_(std::move(on_accept)), on_starved_(std::move(on_starved)) {}

Listener::~Listener() { Stop(); }

Status Listener::Start() { return loop_.Add(fd_, EPOLLIN, this); }

void Listener::Stop() {
  if (fd_ >= 0) {
    if (!paused_) loop_.Remove(fd_);
    close(fd_);
    fd_ = -1;
  }
  paused_ = false;
  if (starved_) {
    starved_ = false;
    if (on_starved_) on_starved_(false, 0);
  }
}

void Listener::Pause(int err) {
  if (!paused_) {
    loop_.Remove(fd_);
    paused_ = true;
  }
  paused_at_ms_ = SystemClock::Instance().MonoMillis();
  if (!starved_) {
    starved_ = true;
    if (on_starved_) on_starved_(true, err);
  }
}

void Listener::Resume() {
  if (!paused_ || fd_ < 0) return;
  if (!loop_.Add(fd_, EPOLLIN, this).ok()) {
    paused_at_ms_ = SystemClock::Instance().MonoMillis();  // retried on a later tick
    return;
  }
  paused_ = false;  // the queued connections are reported on the loop's next turn
}

void Listener::OnTick() {
  if (paused_ && SystemClock::Instance().MonoMillis() - paused_at_ms_ >= kPauseMillis) Resume();
}

void Listener::OnEvents(uint32_t) {
  for (int i = 0; i < 256 && fd_ >= 0 && !paused_; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    const int fd = accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len,
                           SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // Drained: whatever starved us is over.
        if (starved_) {
          starved_ = false;
          if (on_starved_) on_starved_(false, 0);
        }
        return;
      }
      // Out of descriptors or kernel memory: the connection stays queued in the kernel until
      // one frees up. The socket stays readable meanwhile, so stop watching it (see the class
      // comment) instead of returning to a loop that would report it again at once.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        Pause(errno);
        return;
      }
      continue;  // anything else: the peer gave up (ECONNABORTED, ...); try the next
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char ip[INET6_ADDRSTRLEN] = {0};
    if (ss.ss_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, ip, sizeof(ip));
    } else if (ss.ss_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, ip, sizeof(ip));
    }
    on_accept_(fd, ip);
  }
}

}  // namespace iris::net
