#pragma once
// ClusterNode: what irisd starts with --etcd. It owns the etcd client, the ClusterView (the
// snapshot every thread reads), this node's Membership and, on storage nodes, a
// PlacementController candidate.
//
//   auto node = ClusterNode::Create(options, callbacks);   // BAD_REQUEST for bad options
//   Status s = (*node)->Start();  // UNAVAILABLE: etcd unreachable; BAD_REQUEST: no
//                                 // `irisctl cluster init` for this cluster name
//   std::shared_ptr<const Placement> p = (*node)->snapshot();   // any thread, one atomic load
//   (*node)->RevokeJti(jti, until_ms);   // blocking: from a worker thread
//   (*node)->Stop();                     // leaves the cluster (revokes the node's lease)
//
// Callbacks (ClusterView::Callbacks) run on the cluster's threads (the thread calling
// Start() for the initial state), one at a time; post work to event loops from them.
//
// Thread-safety: Start/Stop from one thread; everything else from any thread.

#include <memory>

#include "cluster/cluster_view.h"
#include "cluster/etcd_client.h"
#include "cluster/membership.h"
#include "cluster/placement.h"
#include "cluster/placement_controller.h"

namespace iris::cluster {

struct ClusterNodeOptions {
  EtcdOptions etcd;
  std::string cluster;  // --cluster
  NodeInfo self;        // id, addresses, role, incarnation (Membership)
  // The incarnation of this node's previous process, from its data directory ("" if none):
  // it may still hold the node's key (Membership's claim rule).
  std::string previous_incarnation;
  int64_t lease_ttl_s = 3;            // node and controller leases
  int64_t revocation_ttl_s = 86'400;  // the longest token lifetime (tokens live <= 24 h)
};

class ClusterNode {
 public:
  static Result<std::unique_ptr<ClusterNode>> Create(ClusterNodeOptions options,
                                                     ClusterView::Callbacks callbacks);
  ~ClusterNode();

  Status Start();
  void Stop();  // idempotent

  std::shared_ptr<const Placement> snapshot() const { return view_->snapshot(); }
  bool stale() const { return view_->stale(); }
  bool registered() const { return membership_->registered(); }
  bool controller() const { return controller_ != nullptr && controller_->leader(); }
  const NodeInfo& self() const { return options_.self; }

  // Revocations for every node (ClusterView::RevokeJti/RevokeUser with the configured TTL).
  Status RevokeJti(const std::string& jti, int64_t until_ms);
  Status RevokeUser(uint64_t user, int64_t before_ms);

  EtcdClient& etcd() { return *client_; }
  const ClusterKeys& keys() const { return keys_; }

 private:
  ClusterNode(ClusterNodeOptions options, ClusterKeys keys, std::unique_ptr<EtcdClient> client,
              ClusterView::Callbacks callbacks);

  const ClusterNodeOptions options_;
  const ClusterKeys keys_;
  std::unique_ptr<EtcdClient> client_;
  std::unique_ptr<ClusterView> view_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<PlacementController> controller_;  // storage nodes only
  bool started_ = false;
};

}  // namespace iris::cluster
