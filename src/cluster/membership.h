#pragma once
// Membership: keeps this node registered as /iris/<cluster>/nodes/<id> under a lease of
// `ttl_s` seconds, renewed by a LeaseKeeper every ttl/3. When the lease is lost (etcd
// unreachable for a whole TTL, or the lease expired or was revoked) the node's key is gone
// for everyone; Membership then registers again with a new lease as soon as etcd answers
// (backoff 100 ms doubling to 2 s). Stop() revokes the lease, so the node disappears at once.
//
// A restarted node simply overwrites its key (the old lease, if still alive, lapses on its
// own); two live processes claiming one node id are not detected here (the peer-link
// certificate names the node id).
//
// Thread-safety: Start/Stop from one thread; registered()/lease_id() from any.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"

namespace iris::cluster {

class Membership {
 public:
  // `client` must outlive this object. ttl_s >= 1.
  Membership(EtcdClient& client, ClusterKeys keys, NodeInfo self, int64_t ttl_s = 3);
  ~Membership();

  // Starts the registration thread; does not wait for etcd.
  void Start();
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
  Status Register();

  EtcdClient& client_;
  const ClusterKeys keys_;
  const NodeInfo self_;
  const int64_t ttl_s_;
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
