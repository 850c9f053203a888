#pragma once
// Test harness: a real Iris cluster on loopback — one etcd (EtcdProcess), a cluster CA and
// node certificates made by `irisctl cluster certs`, `irisctl cluster init`, and irisd
// processes started with --etcd (storage nodes, and edge-only nodes with --role edge). The
// nodes share one JWT secret and one admin token. Waiting is on observable conditions with
// deadlines (a node's key in etcd, the placement map).

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/placement.h"
#include "common/jump_hash.h"
#include "harness/etcd_process.h"
#include "harness/network_lab.h"
#include "harness/server_process.h"

namespace iris::testing {

class LocalCluster {
 public:
  struct Options {
    int storage_nodes = 3;
    int edge_nodes = 0;  // --role edge; their node ids follow the storage nodes'
    int replicas = 1;
    int shards_per_node = 1;  // irisctl cluster init --shards-per-node
    int vnodes = 4096;
    std::string name = "test";
    std::vector<std::string> node_args;  // more irisd flags, given to every node
    // When set (it must outlive the cluster and have a namespace per node): etcd serves on
    // the lab's hub and node k runs in the lab's namespace k, on its address there.
    NetworkLab* lab = nullptr;
    // When set: node k's log (its standard error) goes to <log_dir>/node-<k>.log.
    std::string log_dir;
    // When set: called with each node before its first start (e.g. to mount a file system
    // over its data directory).
    std::function<void(NodeId, ServerProcess&)> before_start;
  };
  explicit LocalCluster(Options options);
  ~LocalCluster();

  // Starts etcd, makes the certificates, initialises the cluster, starts every node and
  // waits (30 s) until every storage node is registered and owns its part of the placement.
  void Start();
  // Waits (`timeout_ms`) until every storage node that runs is registered in etcd and every
  // vnode has a primary; fails the test otherwise.
  void WaitReady(int timeout_ms = 30'000);

  size_t size() const { return nodes_.size(); }
  // Node `id` (1-based, as in --node-id).
  ServerProcess& node(NodeId id) { return *nodes_.at(id - 1); }
  EtcdProcess& etcd() { return etcd_; }
  const std::string& dir() const { return dir_; }
  const std::string& name() const { return options_.name; }

  // The storage node whose shard owns `id` (user or group) in the current placement.
  NodeId OwnerOf(uint64_t id);
  // The shard of `id` in the current placement (-1: none).
  int64_t ShardOf(uint64_t id);
  // The cluster's records as etcd holds them now.
  Result<cluster::ClusterState> State();
  // Reads State() every `poll_ms` until holds(state, why) is true; false at the deadline,
  // with *why saying what did not hold (holds sets it) or why etcd could not be read. No
  // test failure of its own.
  using StateCheck = std::function<bool(const cluster::ClusterState& state, std::string* why)>;
  bool WaitForState(const StateCheck& holds, int64_t timeout_ms, std::string* why,
                    int64_t poll_ms = 50);
  // Waits (`timeout_ms`) until node `id` is registered (alive) in etcd; fails the test
  // otherwise.
  void WaitRegistered(NodeId id, int timeout_ms = 30'000);
  // The first user id >= `from` that `node` owns.
  uint64_t UserOwnedBy(NodeId node, uint64_t from);
  // Runs irisctl with `args`; returns its exit code and sets *output (stdout + stderr).
  int Irisctl(const std::vector<std::string>& args, std::string* output);
  // Starts one more storage node (the next id; its certificate made here) that joins the
  // running cluster, and waits until it is registered. Returns its id.
  NodeId AddStorageNode();
  // The arguments of node `id` (for a test that starts a node of its own).
  std::vector<std::string> NodeArgs(NodeId id, bool edge_only) const;

 private:
  Options options_;
  std::string dir_;
  EtcdProcess etcd_;
  std::vector<std::unique_ptr<ServerProcess>> nodes_;
};

}  // namespace iris::testing
