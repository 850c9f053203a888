#pragma once
// ClusterView: this node's view of the cluster metadata in etcd (placement.h lists the keys).
//
// Start() reads everything under /iris/<cluster>/ once, then a watch (EtcdWatch) follows
// every change from the revision after that read. Each change builds a new immutable
// Placement and swaps it in atomically, so any thread gets the current snapshot with one
// atomic load (snapshot()) and keeps using it as long as it holds the pointer.
//
// Outages: when the watch stream breaks (etcd down or unreachable) the view keeps the last
// snapshot and reports itself stale (stale(), on_stale(true)); the watch reconnects with
// backoff (trying the other endpoints) and resumes from the revision after the last event it
// applied, so no change is missed or applied twice; when etcd compacted that revision away,
// the view re-reads everything and diffs against what it had (callbacks fire for what
// changed meanwhile). Re-registering this node after an outage is Membership's job.
//
// Callbacks: for the initial read they run on the thread calling Start(); afterwards on the
// view's threads; never two at once. They must not call Stop().
// on_node_up fires for a node that registers (or re-registers with other addresses),
// on_node_down for a registered node whose key disappeared (lease lapsed or revoked): the
// view remembers it (alive = false) with its last addresses. Revocation callbacks fire once
// per new or changed entry, including those already present at Start().
//
// Thread-safety: snapshot(), stale() and the Revoke* calls are thread-safe; the Revoke* calls
// block on etcd (up to the request timeout): call them from a worker, not an event loop.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"

namespace iris::cluster {

class ClusterView {
 public:
  struct Callbacks {
    std::function<void(const NodeInfo&)> on_node_up;
    std::function<void(const NodeInfo&)> on_node_down;
    // The config, placement map or a shard record changed.
    std::function<void(const std::shared_ptr<const Placement>&)> on_placement;
    std::function<void(const std::string& jti, int64_t until_ms)> on_revoked_jti;
    std::function<void(uint64_t user, int64_t before_ms)> on_revoked_user;
    std::function<void(bool stale)> on_stale;
  };

  // `client` must outlive the view.
  ClusterView(EtcdClient& client, ClusterKeys keys, Callbacks callbacks);
  ~ClusterView();

  // Initial read + watch. UNAVAILABLE when etcd cannot be read (nothing started then).
  Status Start();
  // Stops the watch; waits for the view's threads. Idempotent.
  void Stop();

  // The current snapshot (never null after Start(); an empty Placement before).
  std::shared_ptr<const Placement> snapshot() const { return std::atomic_load(&snapshot_); }
  bool stale() const { return stale_.load(); }
  const ClusterKeys& keys() const { return keys_; }

  // Puts a revocation under a lease of `ttl_s` (the longest token lifetime): every node's
  // view fires on_revoked_jti / on_revoked_user. UNAVAILABLE when etcd is unreachable.
  static Status RevokeJti(EtcdClient& client, const ClusterKeys& keys, const std::string& jti,
                          int64_t until_ms, int64_t ttl_s);
  static Status RevokeUser(EtcdClient& client, const ClusterKeys& keys, uint64_t user,
                           int64_t before_ms, int64_t ttl_s);

  // Reads everything under keys.prefix() into a ClusterState (irisctl status uses it).
  static Result<ClusterState> Load(EtcdClient& client, const ClusterKeys& keys);

 private:
  void Supervise();  // re-reads after a compaction
  // A new watch_ of every key from `from_revision` on: events go to OnEvents, a compaction
  // asks Supervise to re-read, the stream's state sets stale. Precondition: no watch_ runs.
  void StartWatch(int64_t from_revision);
  void OnEvents(const std::vector<WatchEvent>& events, int64_t revision);
  // Publishes `next` (under apply_mu_) and fires callbacks for what differs from state_.
  void Publish(ClusterState next);
  void SetStale(bool stale);

  EtcdClient& client_;
  const ClusterKeys keys_;
  const Callbacks callbacks_;
  std::shared_ptr<const Placement> snapshot_;  // atomic access only
  std::atomic<bool> stale_{false};

  std::mutex apply_mu_;  // serialises Publish and the callbacks
  ClusterState state_;   // guarded by apply_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                 // guarded by mu_
  bool reload_ = false;               // guarded by mu_: the watch ended (compaction)
  std::unique_ptr<EtcdWatch> watch_;  // owned by the supervisor thread after Start()
  std::thread supervisor_;
};

}  // namespace iris::cluster
