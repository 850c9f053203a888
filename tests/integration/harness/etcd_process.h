#pragma once
// Test harness: a real single-member etcd (/usr/bin/etcd, or $IRIS_ETCD) on loopback with
// free ports and a temporary data directory. Start() waits (deadline 20 s) until etcd
// answers a linearizable read; it can be stopped with any signal and started again on the
// same data directory and ports; the destructor kills it and removes the directory.

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace iris::testing {

class EtcdProcess {
 public:
  EtcdProcess();
  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // Serve clients over TLS with `cert`/`key`, requiring client certificates signed by
  // `ca` (the readiness check presents `client_cert`/`client_key`). Before Start().
  void EnableTls(std::string cert, std::string key, std::string ca, std::string client_cert,
                 std::string client_key);

  // Starts etcd and waits until it serves; fails the test (ADD_FAILURE) and returns false
  // when it does not within 20 s.
  bool Start();
  // Sends `sig` (SIGTERM by default) and waits for the process to exit.
  void Stop(int sig = 15);
  // Stop(sig) then Start() on the same data directory and ports.
  bool Restart(int sig = 9);
  bool running() const { return pid_ > 0; }
  // Sends `sig` without waiting (SIGSTOP / SIGCONT: an unresponsive etcd).
  void Signal(int sig);

  // Serve clients on `host` (an address of this network namespace) instead of loopback.
  // Before Start().
  void set_host(std::string host) { host_ = std::move(host); }
  std::string endpoint() const { return host_ + ":" + std::to_string(client_port_); }
  uint16_t client_port() const { return client_port_; }
  const std::string& dir() const { return dir_; }
  // The tail of etcd's log (for failure messages).
  std::string LogTail() const;

 private:
  std::string dir_;
  std::string host_ = "127.0.0.1";
  uint16_t client_port_ = 0;
  uint16_t peer_port_ = 0;
  pid_t pid_ = -1;
  std::string tls_cert_, tls_key_, tls_ca_, client_cert_, client_key_;
};

}  // namespace iris::testing
