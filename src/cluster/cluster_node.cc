#include "cluster/cluster_node.h"

namespace iris::cluster {

Result<std::unique_ptr<ClusterNode>> ClusterNode::Create(ClusterNodeOptions options,
                                                         ClusterView::Callbacks callbacks) {
  IRIS_ASSIGN_OR_RETURN(ClusterKeys keys, ClusterKeys::Create(options.cluster));
  if (options.self.id == 0) return BadRequest("--node-id must be non-zero");
  if (options.lease_ttl_s < 1) return BadRequest("the lease TTL must be at least 1 s");
  if (options.revocation_ttl_s < 1) return BadRequest("the revocation TTL must be positive");
  IRIS_ASSIGN_OR_RETURN(std::unique_ptr<EtcdClient> client, EtcdClient::Create(options.etcd));
  return std::unique_ptr<ClusterNode>(new ClusterNode(std::move(options), std::move(keys),
                                                      std::move(client), std::move(callbacks)));
}

ClusterNode::ClusterNode(ClusterNodeOptions options, ClusterKeys keys,
                         std::unique_ptr<EtcdClient> client, ClusterView::Callbacks callbacks)
    : options_(std::move(options)), keys_(std::move(keys)), client_(std::move(client)) {
  view_ = std::make_unique<ClusterView>(*client_, keys_, std::move(callbacks));
  membership_ = std::make_unique<Membership>(*client_, keys_, options_.self, options_.lease_ttl_s,
                                             options_.previous_incarnation);
  if (options_.self.role == NodeRole::kStorage) {
    controller_ = std::make_unique<PlacementController>(*client_, keys_, options_.self.id,
                                                        options_.lease_ttl_s);
  }
}

ClusterNode::~ClusterNode() { Stop(); }

Status ClusterNode::Start() {
  // The node id first: a process refused here has done nothing yet in the cluster (no view,
  // so no peer links dialled under a node id another process holds).
  IRIS_RETURN_IF_ERROR(membership_->Start());
  if (Status s = view_->Start(); !s.ok()) {
    membership_->Stop();
    return s;
  }
  if (!view_->snapshot()->configured()) {
    view_->Stop();
    membership_->Stop();
    return BadRequest("cluster '" + options_.cluster +
                      "' is not initialised in etcd; run `irisctl cluster init --etcd ... "
                      "--cluster " +
                      options_.cluster + "` first");
  }
  if (controller_) controller_->Start();
  started_ = true;
  return Status::Ok();
}

void ClusterNode::Stop() {
  if (!started_) return;
  started_ = false;
  if (controller_) controller_->Stop();
  membership_->Stop();
  view_->Stop();
}

Status ClusterNode::RevokeJti(const std::string& jti, int64_t until_ms) {
  return ClusterView::RevokeJti(*client_, keys_, jti, until_ms, options_.revocation_ttl_s);
}

Status ClusterNode::RevokeUser(uint64_t user, int64_t before_ms) {
  return ClusterView::RevokeUser(*client_, keys_, user, before_ms, options_.revocation_ttl_s);
}

}  // namespace iris::cluster
