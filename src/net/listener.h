#pragma once
// Listener: a non-blocking listening TCP socket with SO_REUSEPORT, so that every loop (and,
// with --edge-processes, every edge process) can bind the same port and the kernel spreads
// new connections among them.
// SO_REUSEPORT would let any process of the same user join the port; irisd keeps other
// nodes off it with a lock (src/server/port_lock.h).
//
// Running out of descriptors (EMFILE/ENFILE, also ENOBUFS/ENOMEM) pauses accepting: the
// listening socket leaves the epoll set, because it stays readable while connections wait in
// the kernel's queue and a level-triggered loop would otherwise spin on it. The owner resumes
// it: from a timer (OnTick, at least kPauseMillis after the pause) or when it has just freed
// a descriptor (Resume). A starvation episode runs from the first failed accept until the
// queue is drained (accept says EAGAIN); the owner hears of its start and end once each.
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
  // starved(true, errno) when an episode of descriptor starvation starts (accepting is
  // paused), starved(false, 0) when it ends. Optional.
  using StarvedFn = std::function<void(bool starved, int err)>;
  static constexpr int64_t kPauseMillis = 100;

  Listener(EventLoop& loop, int fd, AcceptFn on_accept, StarvedFn on_starved = nullptr);
  ~Listener() override;
  Status Start();
  void Stop();  // stops accepting and closes the socket
  void OnEvents(uint32_t events) override;

  // Accepting again after a pause, now (a descriptor was just freed). No-op unless paused.
  void Resume();
  // Resumes a pause that has lasted at least kPauseMillis (monotonic time of SystemClock).
  // Call about every loop tick.
  void OnTick();
  bool paused() const { return paused_; }

 private:
  void Pause(int err);

  EventLoop& loop_;
  int fd_;
  AcceptFn on_accept_;
  StarvedFn on_starved_;
  bool paused_ = false;   // the socket is out of the epoll set
  bool starved_ = false;  // in a starvation episode (reported to on_starved_)
  int64_t paused_at_ms_ = 0;
};

}  // namespace iris::net
