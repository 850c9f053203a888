#include "cluster/replication/node_replication.h"

#include <algorithm>
#include <utility>

namespace iris::cluster {

Result<std::unique_ptr<NodeReplication>> NodeReplication::Open(NodeReplicationOptions options,
                                                               EtcdClient& etcd, ClusterKeys keys,
                                                               NodeReplicationEnv env) {
  IRIS_ASSIGN_OR_RETURN(std::unique_ptr<repl::ShardLog> log,
                        repl::ShardLog::Open(options.log_path));
  return std::unique_ptr<NodeReplication>(new NodeReplication(
      std::move(options), etcd, std::move(keys), std::move(env), std::move(log)));
}

NodeReplication::NodeReplication(NodeReplicationOptions options, EtcdClient& etcd, ClusterKeys keys,
                                 NodeReplicationEnv env, std::unique_ptr<repl::ShardLog> log)
    : options_(std::move(options)),
      etcd_(etcd),
      keys_(std::move(keys)),
      env_(std::move(env)),
      log_(std::move(log)) {}

NodeReplication::~NodeReplication() {
  std::map<repl::ShardNo, Shard> shards;
  {
    std::lock_guard<std::mutex> lock(mu_);
    shards.swap(shards_);
  }
  for (auto& entry : shards) {
    // The host first: its strand calls into the etcd session and the log, and its
    // destructor refuses what waits (Answer takes mu_, which is not held here).
    entry.second.host.reset();
    entry.second.epochs.reset();
  }
  std::map<uint64_t, std::function<void(Status)>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(waiting_);
  }
  for (auto& entry : left) entry.second(Unavailable("replication stopping", 100));
  log_.reset();
}

Status NodeReplication::AddShard(repl::ShardNo shard, std::vector<repl::NodeId> replicas) {
  if (std::find(replicas.begin(), replicas.end(), options_.self) == replicas.end()) {
    return BadRequest("node " + std::to_string(options_.self) + " is not a replica of shard " +
                      std::to_string(shard));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shards_.count(shard) != 0) return Status::Ok();
  }
  repl::Lsn applied = 0;
  if (env_.applied_lsn) {
    IRIS_ASSIGN_OR_RETURN(applied, env_.applied_lsn(shard));
  }
  const auto post = [this, shard](repl::Event event) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(shard);
    if (it != shards_.end() && it->second.host) it->second.host->Post(std::move(event));
  };
  auto epochs =
      std::make_unique<ShardEpochs>(etcd_, keys_, shard, options_.self, options_.lease_ttl_s, post);
  ShardEpochs* e = epochs.get();

  repl::HostOptions ho;
  ho.shard = shard;
  ho.replica = options_.replica;
  ho.replica.self = options_.self;
  ho.replica.replicas = std::move(replicas);
  ho.applied_lsn = applied;
  ho.tick_ms = options_.tick_ms;

  repl::HostEnvironment he;
  he.send = [this, shard](repl::NodeId to, repl::Message m) {
    if (env_.send) env_.send(to, shard, std::move(m));
  };
  he.etcd_cas = [e](const repl::EtcdCas& c) { e->Cas(c); };
  he.etcd_keep_alive = [e](const repl::EtcdKeepAlive& k) { e->KeepAlive(k); };
  he.etcd_revoke = [e](const repl::EtcdRevoke& r) { e->Revoke(r); };
  he.apply = [this, shard](const std::vector<repl::Batch>& batches) {
    if (!env_.apply) return Status::Ok();
    return env_.apply(shard, batches);
  };
  he.acknowledge = [this](const repl::Acknowledge& a) { Answer(a.request_ids, Status::Ok()); };
  he.refuse = [this](const repl::Refuse& r) { Answer(r.request_ids, r.status); };
  he.failed = [this, shard](const Status& s) {
    if (env_.failed) env_.failed(shard, s);
  };
  he.role_changed = [this, shard](repl::Role, repl::Epoch epoch, uint64_t hlc) {
    OnRoleChanged(shard, epoch, hlc);
  };
  IRIS_ASSIGN_OR_RETURN(std::unique_ptr<repl::ReplicaHost> host,
                        repl::ReplicaHost::Start(std::move(ho), *log_, std::move(he)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    Shard& s = shards_[shard];
    s.epochs = std::move(epochs);
    s.host = std::move(host);
  }
  // Outside mu_: the first read posts the record (post takes mu_).
  return e->Start();
}

void NodeReplication::Replicate(repl::ShardNo shard, std::string payload, uint64_t hlc,
                                std::function<void(Status)> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(shard);
    if (it != shards_.end() && it->second.host) {
      const uint64_t id = next_request_++;
      waiting_.emplace(id, std::move(done));
      it->second.host->Post(repl::ClientAppend{id, std::move(payload), hlc});
      return;
    }
  }
  done(Unavailable("this node holds no replica of shard " + std::to_string(shard), 100));
}

void NodeReplication::Receive(repl::NodeId from, repl::ShardNo shard, repl::Message message) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shards_.find(shard);
  if (it != shards_.end() && it->second.host) {
    it->second.host->Post(repl::Receive{from, std::move(message)});
  }
}

std::optional<repl::ReplicaHost::View> NodeReplication::view(repl::ShardNo shard) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shards_.find(shard);
  if (it == shards_.end() || !it->second.host) return std::nullopt;
  return it->second.host->view();
}

bool NodeReplication::Serving(repl::ShardNo shard) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shards_.find(shard);
  if (it == shards_.end() || !it->second.host) return false;
  const repl::ReplicaHost::View v = it->second.host->view();
  return it->second.serving_epoch != 0 && v.role == repl::Role::kPrimary &&
         v.accepted == it->second.serving_epoch;
}

void NodeReplication::Answer(const std::vector<uint64_t>& request_ids, const Status& status) {
  std::vector<std::function<void(Status)>> answers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t id : request_ids) {
      auto it = waiting_.find(id);
      if (it == waiting_.end()) continue;
      answers.push_back(std::move(it->second));
      waiting_.erase(it);
    }
  }
  for (auto& done : answers) done(status);
}

void NodeReplication::OnRoleChanged(repl::ShardNo shard, repl::Epoch epoch,
                                    uint64_t hlc_high_water) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(shard);
    if (it == shards_.end()) return;
    it->second.serving_epoch = 0;
  }
  if (epoch == 0) return;
  const auto opened = [this, shard, epoch](Status s) {
    if (!s.ok()) return;  // the store is stopping
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(shard);
    if (it == shards_.end() || !it->second.host) return;
    it->second.serving_epoch = epoch;
    it->second.host->OpenForAppends(epoch);
  };
  if (env_.take_over) {
    env_.take_over(shard, hlc_high_water, opened);
  } else {
    opened(Status::Ok());
  }
}

}  // namespace iris::cluster
