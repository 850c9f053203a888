#pragma once
// Membership: keeps this node registered as /iris/<cluster>/nodes/<id> under a lease of
// `ttl_s` seconds, renewed by a LeaseKeeper every ttl/3. When the lease is lost (etcd
// unreachable for a whole TTL, or the lease expired or was revoked) the node's key is gone
// for everyone; Membership then registers again with a new lease as soon as etcd answers
// (backoff 100 ms doubling to 2 s). Stop() revokes the lease, so the node disappears at once.
//
// One node id, one live process. The record carries `self.incarnation` (random per process
// start) and is written only by an etcd transaction that finds the key absent, or held by
// this process (`self.incarnation`) or by the previous process of this node
// (`previous_incarnation`, which the caller reads from the node's data directory: a node
// restarted while its old lease is still alive takes its key over at once). A key held by
// any other incarnation belongs to another live process (a key goes with its lease, and a
// lease lives only while renewed): Start() waits up to one lease TTL (+1 s) for it to
// lapse, then refuses. Records of older versions (no incarnation) are taken over.
//
// Thread-safety: Start/Stop from one thread; registered()/lease_id() from any.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"

namespace iris::cluster {

// A new incarnation: 16 random hex digits, unique per process start with overwhelming
// probability.
std::string NewNodeIncarnation();

class Membership {
 public:
  // `client` must outlive this object. ttl_s >= 1. `self.incarnation` must be unique to
  // this process (an empty one is replaced by a random one).
  Membership(EtcdClient& client, ClusterKeys keys, NodeInfo self, int64_t ttl_s = 3,
             std::string previous_incarnation = "");
  ~Membership();

  // Registers the node, then starts the thread that keeps it registered. BAD_REQUEST when
  // another live process holds this node id (the message names the id and the holder):
  // the node must not start. When etcd fails otherwise, returns OK and the thread keeps
  // trying (backoff).
  Status Start();
  // Waits up to `timeout_ms` for the node to be registered; false at the deadline.
  bool WaitRegistered(int timeout_ms);
  // Stops renewing and revokes the lease (best effort). Idempotent.
  void Stop();

  bool registered() const { return lease_id_.load() != 0; }
  int64_t lease_id() const { return lease_id_.load(); }
  // How many times the node registered (1 after the first; +1 per re-registration).
  int64_t registrations() const { return registrations_.load(); }

 private:
  void Run();
  // One attempt to claim the key (see the class comment). BAD_REQUEST when another
  // incarnation holds it.
  Status Register();

  EtcdClient& client_;
  const ClusterKeys keys_;
  const NodeInfo self_;
  const int64_t ttl_s_;
  const std::string previous_incarnation_;
  std::atomic<int64_t> lease_id_{0};
  std::atomic<int64_t> registrations_{0};
  std::unique_ptr<LeaseKeeper> keeper_;  // owned by the thread
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  bool lost_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace iris::cluster
