#pragma once
// Test harness: a private network for a cluster whose links a test cuts (issue 17,
// partitions). The test process first leaves the host's network namespace for a fresh one
// of its own (EnterPrivateNetwork, before any thread starts); inside it a bridge (the hub,
// HubAddress()) joins one network namespace per node, each reached through a veth pair and
// holding one address (Address(k), 10.77.0.k). etcd and the test's clients live on the
// hub; node k's processes run in its namespace (Namespace(k), entered by
// ServerProcess::set_network_namespace). Every address is one the test assigned inside
// namespaces it created; nothing touches the host's network.
//
// Faults:
//  - Isolate(k): node k's veth goes down: it reaches nobody (peers, etcd, clients) and
//    nobody reaches it;
//  - Cut(a, b): traffic between nodes a and b is dropped both ways (an nftables rule in
//    the bridge family on the hub), each still reaching etcd, the clients and the others;
//  - CutFromHubPort(k, port): node k's TCP traffic with the hub's `port` (etcd's) is
//    dropped both ways (rules on the hub's input and output), everything else still flows;
//  - HealAll(): every link up, every rule gone.
// Requires root (network namespaces, veth, nftables), as CI has.

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris::testing {

class NetworkLab {
 public:
  // unshare(CLONE_NEWNET) for the calling process (call it from main(), before any thread
  // exists: a namespace is per thread, and later threads inherit the caller's) and brings
  // up its loopback.
  static Status EnterPrivateNetwork();

  // Creates the hub and `nodes` node namespaces (named "iris-<pid>-<lab>-n<k>"). Check ok().
  explicit NetworkLab(int nodes);
  ~NetworkLab();
  NetworkLab(const NetworkLab&) = delete;
  NetworkLab& operator=(const NetworkLab&) = delete;

  const Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }
  int nodes() const { return nodes_; }
  static std::string HubAddress() { return "10.77.0.254"; }
  static std::string Address(int k) { return "10.77.0." + std::to_string(k); }
  // The namespace's file (for setns): /run/netns/<name>.
  std::string Namespace(int k) const { return "/run/netns/" + Name(k); }

  Status Isolate(int k);
  Status Reconnect(int k);
  Status Cut(int a, int b);
  Status CutFromHubPort(int k, uint16_t port);
  Status HealAll();

 private:
  std::string Name(int k) const;
  // The hub's end of node k's veth pair (names are unique per lab in the process).
  std::string Veth(int k) const {
    return "v" + std::to_string(instance_) + "n" + std::to_string(k);
  }
  static int NextInstance();
  Status Run(const std::vector<std::string>& argv);

  int nodes_;
  int instance_;
  std::string prefix_;
  std::vector<int> created_;  // namespaces to delete
  bool bridge_ = false;        // the hub's bridge exists
  bool table_ = false;         // the nftables bridge table exists
  bool hub_table_ = false;     // the nftables ip table (the hub's own traffic) exists
  Status status_;
};

}  // namespace iris::testing
