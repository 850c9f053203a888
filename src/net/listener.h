#pragma once
// Listener: a non-blocking listening TCP socket with SO_REUSEPORT, so that every loop (and,
// with --edge-processes, every edge process) can bind the same port and the kernel spreads
// new connections among them.
//
// Thread-safety: loop thread only.

#include <functional>
#include <string>

#include "net/event_loop.h"

namespace iris::net {

// "host:port" → bound, listening socket (SO_REUSEPORT, non-blocking, close-on-exec).
Result<int> ListenTcp(const std::string& host_port, int backlog = 4096);
// "host:port" → bound socket (SO_REUSEPORT) that does not listen: it reserves the port
// without receiving connections.
Result<int> BindTcp(const std::string& host_port);
// The local port of a bound socket.
Result<uint16_t> LocalPort(int fd);
// Splits "host:port" ("[::1]:7443" for IPv6).
Status SplitHostPort(const std::string& host_port, std::string* host, uint16_t* port);

class Listener final : public EventLoop::Handler {
 public:
  // on_accept(fd, peer_ip) owns the accepted fd (non-blocking, TCP_NODELAY set).
  using AcceptFn = std::function<void(int fd, const std::string& peer_ip)>;
  Listener(EventLoop& loop, int fd, AcceptFn on_accept);
  ~Listener() override;
  Status Start();
  void Stop();  // stops accepting and closes the socket
  void OnEvents(uint32_t events) override;

 private:
  EventLoop& loop_;
  int fd_;
  AcceptFn on_accept_;
};

}  // namespace iris::net
