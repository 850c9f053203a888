#pragma once
// PortLock: only the processes of one irisd node may serve a client port.
//
// The client listener uses SO_REUSEPORT (a socket per event loop, and with --edge-processes
// a set per edge process), and the kernel lets any process of the same user join such a
// port and then splits new connections among every socket on it. A second irisd (another
// data directory, another node) started on the same port would silently take a share of the
// users into its own database. The guard is a lock named after the port, taken by the
// node's first process (the embedded irisd, or the core process with --edge-processes)
// before it listens and held for its lifetime; the edge processes it starts do not take it.
//
// Why a lock rather than edge processes inheriting listening sockets without SO_REUSEPORT:
// the loops of every process still need SO_REUSEPORT (it is how the kernel spreads
// connections over them), a port group that admits our own sockets admits anyone's, and edge
// processes are restarted on their own and re-join the port by binding it.
//
// The lock is a Unix socket bound in the abstract namespace ("\0iris-client-port-<port>"),
// rather than an flock'ed file: a name can be bound once per network namespace, which is
// exactly the scope of TCP ports (two containers with their own network each have their own
// port 7443, and so their own name); the kernel frees it when its holder dies, even by
// SIGKILL, so a restart on the same port never finds a stale lock; and it leaves no file to
// clean up and needs no writable directory. The socket listens (nothing is ever accepted)
// only so that a refused process can learn the holder's pid (SO_PEERCRED) for its message.
//
// Keyed by port, not by address: SO_REUSEPORT also lets a wildcard listener (0.0.0.0:7443)
// and a specific one (127.0.0.1:7443) coexist, the specific one taking its address's
// connections, which is the same silent split. Two nodes on one host need two ports.
//
// Thread-safety: none needed (taken and released by the controlling thread).

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace iris::server {

class PortLock {
 public:
  // Takes the lock of `port` (not 0) for `listen_address` (used in messages). UNAVAILABLE,
  // naming the address and the holder's pid, when another process holds it; INTERNAL when
  // the lock cannot be created.
  static Result<std::unique_ptr<PortLock>> Acquire(uint16_t port,
                                                   const std::string& listen_address);

  ~PortLock();  // releases the lock
  PortLock(const PortLock&) = delete;
  PortLock& operator=(const PortLock&) = delete;

 private:
  explicit PortLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace iris::server
