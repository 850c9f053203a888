#pragma once
// PortLock: only the processes of one irisd node may serve a client port.
//
// The client listener uses SO_REUSEPORT (a socket per event loop, and with --edge-processes
// a set per edge process), and the kernel lets any process of the same user join such a
// port and then splits new connections among every socket on it. A second irisd (another
// data directory, another node) started on the same port would silently take a share of the
// users into its own database. The guard is an advisory lock (flock) on a file named after
// the port, taken by the node's first process (the embedded irisd, or the core process with
// --edge-processes) before it listens and held for its lifetime; the edge processes it
// starts do not take it.
//
// Why a lock file rather than edge processes inheriting listening sockets without
// SO_REUSEPORT: the loops of every process still need SO_REUSEPORT (it is how the kernel
// spreads connections over them), a port group that admits our own sockets admits anyone's,
// and edge processes are restarted on their own and re-join the port by binding it. A lock
// is a few lines, needs nothing passed between processes, and the kernel drops it whenever
// its holder dies (even by SIGKILL), so a restart on the same port never finds a stale one.
//
// Keyed by port, not by address: SO_REUSEPORT also lets a wildcard listener (0.0.0.0:7443)
// and a specific one (127.0.0.1:7443) coexist, the specific one taking its address's
// connections, which is the same silent split. Two nodes on one host need two ports.
// Processes of different users cannot share a port at all (the kernel requires one
// effective uid for SO_REUSEPORT), so the lock only has to work among one user's processes.
//
// The files are <dir>/iris-client-port-<port>.lock with dir = /run/lock when writable,
// else /tmp; a file holds its holder's pid and data directory, for the error message. The
// holder removes it when it stops cleanly; a left-over file (after a crash) is harmless.
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
  // naming the address and the holder, when another process holds it; INTERNAL when the
  // lock file cannot be opened.
  static Result<std::unique_ptr<PortLock>> Acquire(uint16_t port, const std::string& listen_address,
                                                   const std::string& data_dir);
  // The lock file of `port`.
  static std::string PathFor(uint16_t port);

  ~PortLock();  // removes the file, then releases the lock
  PortLock(const PortLock&) = delete;
  PortLock& operator=(const PortLock&) = delete;

 private:
  PortLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

}  // namespace iris::server
