#include "cluster/placement_controller.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "cluster/cluster_view.h"
#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using obs::LogInfo;
using obs::LogWarn;

Status InitClusterConfig(EtcdClient& client, const ClusterKeys& keys, const ClusterConfig& config) {
  IRIS_RETURN_IF_ERROR(ValidateConfig(config));
  IRIS_ASSIGN_OR_RETURN(TxnResult r, client.Txn({Compare::Absent(keys.Config())},
                                                {TxnOp::Put(keys.Config(), ConfigToJson(config))}));
  if (r.succeeded) return Status::Ok();
  IRIS_ASSIGN_OR_RETURN(RangeResult existing, client.Range(keys.Config()));
  if (existing.kvs.empty()) return Unavailable("the cluster config changed meanwhile; retry");
  auto have = ParseConfig(existing.kvs[0].value);
  if (have.ok() && *have == config) return Status::Ok();
  return BadRequest("cluster " + keys.prefix() + " is already initialised with " +
                    existing.kvs[0].value +
                    "; vnodes, replicas, initial_nodes and shards_per_node cannot change "
                    "(asked for " +
                    ConfigToJson(config) + ")");
}

PlacementController::PlacementController(EtcdClient& client, ClusterKeys keys, NodeId self,
                                         int64_t lease_ttl_s)
    : client_(client), keys_(std::move(keys)), self_(self), ttl_s_(lease_ttl_s) {}

PlacementController::~PlacementController() { Stop(); }

void PlacementController::Start() {
  thread_ = std::thread([this] { Run(); });
}

void PlacementController::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PlacementController::Wake() {
  std::lock_guard<std::mutex> lock(mu_);
  changed_ = true;
  cv_.notify_all();
}

void PlacementController::StepDown() {
  if (keeper_) {
    keeper_->Stop();
    keeper_.reset();
  }
  if (leader_.exchange(false)) {
    LogWarn("cluster: no longer the placement controller", {{"node", self_}});
    quiet_until_ms_ = SystemClock::Instance().MonoMillis() + ttl_s_ * 1000;
  }
  lease_id_ = 0;
  won_revision_ = 0;
}

Status PlacementController::Campaign() {
  if (lease_id_ == 0) {
    IRIS_ASSIGN_OR_RETURN(Lease lease, client_.LeaseGrant(ttl_s_));
    lease_id_ = lease.id;
    keeper_ = std::make_unique<LeaseKeeper>(client_, lease, [this] {
      std::lock_guard<std::mutex> lock(mu_);
      lost_ = true;
      cv_.notify_all();
    });
    keeper_->Start();
  }
  const std::string value = nlohmann::json{{"id", self_}}.dump();
  IRIS_ASSIGN_OR_RETURN(TxnResult r,
                        client_.Txn({Compare::Absent(keys_.Controller())},
                                    {TxnOp::Put(keys_.Controller(), value, lease_id_.load())}));
  if (!r.succeeded) {
    // The answer to a first attempt may have been lost and the request retried: the key
    // under my own lease means I won.
    IRIS_ASSIGN_OR_RETURN(RangeResult held, client_.Range(keys_.Controller()));
    if (!held.kvs.empty() && held.kvs[0].lease == lease_id_.load()) {
      r.succeeded = true;
      r.revision = held.kvs[0].mod_revision;
    }
  }
  if (r.succeeded) {
    won_revision_ = r.revision;
    leader_ = true;
    LogInfo("cluster: this node is the placement controller",
            {{"node", self_}, {"revision", r.revision}});
  }
  return Status::Ok();
}

Status PlacementController::Reconcile() {
  IRIS_ASSIGN_OR_RETURN(RangeResult all, client_.Range(keys_.prefix(), true));
  ClusterState state;
  int64_t placement_mod = 0;
  bool still_mine = false;
  std::map<std::string, int64_t> mod_revision;  // shard keys
  std::set<std::string> leader_keys;            // leaders/<s> present (a primary's lease)
  for (const KeyValue& kv : all.kvs) {
    ApplyKey(keys_, kv.key, kv.value, false, &state).IgnoreError();
    if (kv.key == keys_.Placement()) placement_mod = kv.mod_revision;
    if (kv.key.rfind(keys_.ShardsPrefix(), 0) == 0) mod_revision[kv.key] = kv.mod_revision;
    if (kv.key.rfind(keys_.LeadersPrefix(), 0) == 0) leader_keys.insert(kv.key);
    if (kv.key == keys_.Controller()) still_mine = kv.mod_revision == won_revision_;
  }
  if (!still_mine) {
    StepDown();  // the key lapsed or someone else holds it now
    Wake();
    return Status::Ok();
  }
  if (!state.config) return Status::Ok();  // not initialised: nothing to place
  std::set<NodeId> placed;
  for (const auto& [id, s] : state.shards) placed.insert(s.replicas.begin(), s.replicas.end());
  std::vector<NodeId> joining;
  for (const auto& [id, n] : state.nodes) {
    if (n.alive && n.role == NodeRole::kStorage && placed.count(id) == 0) joining.push_back(id);
  }
  if (state.placement.version > 0 && state.config->replicas > 1) {
    return PlanMoves(state, mod_revision, leader_keys);
  }
  if (state.placement.version > 0) {
    // Without replication data does not move between nodes: giving a late joiner vnodes
    // would move inboxes to its empty store.
    for (NodeId id : joining) {
      if (!reported_unplaced_.insert(id).second) continue;
      unplaced_reported_ = static_cast<int64_t>(reported_unplaced_.size());
      LogWarn("cluster: storage node " + std::to_string(id) +
                  " joined an already placed cluster; it holds no vnodes until rebalancing "
                  "(issue 16) moves data to it",
              {{"node", id}, {"version", state.placement.version}});
    }
    return Status::Ok();
  }
  const int64_t have = static_cast<int64_t>(joining.size());
  if (have < state.config->initial_nodes) {
    if (have != waiting_have_.load()) {
      LogInfo("cluster: waiting for " + std::to_string(state.config->initial_nodes) +
                  " storage nodes before the first placement: have " + std::to_string(have),
              {{"initial_nodes", state.config->initial_nodes}, {"have", have}});
    }
    waiting_have_ = have;
    return Status::Ok();
  }
  waiting_have_ = -1;
  // shards_per_node shards per node: the nodes again and again, so that consecutive shards
  // (a replica set is a window of them) have distinct primaries.
  std::vector<NodeId> shard_primaries;
  for (int32_t k = 0; k < state.config->shards_per_node; ++k) {
    shard_primaries.insert(shard_primaries.end(), joining.begin(), joining.end());
  }
  PlacementPlan plan = AddNodes(*state.config, state.placement, state.shards, shard_primaries);
  std::vector<TxnOp> ops = {TxnOp::Put(keys_.Placement(), PlacementToJson(plan.map))};
  for (const auto& [id, s] : plan.shards) {
    auto old = state.shards.find(id);
    if (old == state.shards.end() || !(old->second == s)) {
      ops.push_back(TxnOp::Put(keys_.Shard(id), ShardToJson(s)));
    }
  }
  std::vector<Compare> cmp = {Compare::ModRevisionEquals(keys_.Controller(), won_revision_)};
  cmp.push_back(placement_mod == 0 ? Compare::Absent(keys_.Placement())
                                   : Compare::ModRevisionEquals(keys_.Placement(), placement_mod));
  IRIS_ASSIGN_OR_RETURN(TxnResult r, client_.Txn(cmp, ops));
  if (!r.succeeded) {
    Wake();  // lost a race (or the controller key): look again
    return Status::Ok();
  }
  ++placements_written_;
  std::string ids;
  for (NodeId n : joining) ids += (ids.empty() ? "" : ",") + std::to_string(n);
  LogInfo("cluster: first placement written",
          {{"nodes", ids},
           {"version", plan.map.version},
           {"shards", static_cast<uint64_t>(plan.shards.size())},
           {"revision", r.revision}});
  return Status::Ok();
}

Status PlacementController::PlanMoves(const ClusterState& state,
                                      const std::map<std::string, int64_t>& mod_revision,
                                      const std::set<std::string>& leader_keys) {
  // Shards without a primary: stuck once that has lasted stuck_after_ms (a failover takes a
  // few seconds; a shard no write ever reached has never had one).
  const int64_t now = SystemClock::Instance().MonoMillis();
  std::set<ShardId> stuck;
  for (const auto& [id, s] : state.shards) {
    if (leader_keys.count(keys_.Leader(id)) != 0) {
      leaderless_since_ms_.erase(id);
      continue;
    }
    const int64_t since = leaderless_since_ms_.try_emplace(id, now).first->second;
    if (now - since >= stuck_after_ms_ && s.elected) stuck.insert(id);
  }
  std::optional<MovePlan> plan = PlanMove(state, stuck);
  if (!plan) return Status::Ok();
  auto it = state.shards.find(plan->shard);
  auto rev = mod_revision.find(keys_.Shard(plan->shard));
  if (it == state.shards.end() || rev == mod_revision.end()) return Status::Ok();
  ShardInfo next = it->second;
  next.target = plan->target;
  std::vector<Compare> cmp = {Compare::ModRevisionEquals(keys_.Controller(), won_revision_),
                              Compare::ModRevisionEquals(keys_.Shard(plan->shard), rev->second)};
  if (!it->second.elected && !plan->target.empty()) {
    // No primary was ever elected in this shard, so it holds nothing acknowledged: its
    // replicas change at once (a new epoch, so that a candidacy of the old set fails its
    // CAS), provided no candidate holds the leader key now.
    next.replicas = plan->target;
    next.target.clear();
    ++next.epoch;
    if (std::find(next.replicas.begin(), next.replicas.end(), next.primary) ==
        next.replicas.end()) {
      next.primary = next.replicas.front();  // where requests go until the first election
    }
    cmp.push_back(Compare::Absent(keys_.Leader(plan->shard)));
    plan->why += ", never elected: replicas changed at once";
  }
  IRIS_ASSIGN_OR_RETURN(
      TxnResult r, client_.Txn(cmp, {TxnOp::Put(keys_.Shard(plan->shard), ShardToJson(next))}));
  if (!r.succeeded) {
    Wake();  // the record moved on (a failover, a switch) or the controller key: look again
    return Status::Ok();
  }
  ++moves_planned_;
  std::string from, to;
  for (NodeId n : it->second.replicas) from += (from.empty() ? "" : ",") + std::to_string(n);
  for (NodeId n : plan->target) to += (to.empty() ? "" : ",") + std::to_string(n);
  LogInfo(
      plan->target.empty() ? "cluster: replica move cancelled" : "cluster: replica move planned",
      {{"shard", plan->shard},
       {"why", plan->why},
       {"replicas", from},
       {"target", to},
       {"epoch", it->second.epoch}});
  return Status::Ok();
}

void PlacementController::Run() {
  int64_t backoff_ms = 100;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const bool need_watch = !watch_ || rewatch_;
    rewatch_ = false;
    changed_ = false;
    if (lost_) {
      lost_ = false;
      lock.unlock();
      StepDown();
      lock.lock();
    }
    lock.unlock();
    Status s;
    if (need_watch) {
      if (watch_) watch_->Stop();
      watch_.reset();
      auto r = client_.Range(keys_.Controller());
      if (r.ok()) {
        EtcdWatch::Callbacks cb;
        cb.on_events = [this](const std::vector<WatchEvent>&, int64_t) { Wake(); };
        cb.on_compacted = [this](int64_t) {
          std::lock_guard<std::mutex> l(mu_);
          rewatch_ = true;
          cv_.notify_all();
        };
        watch_ = std::make_unique<EtcdWatch>(client_, keys_.prefix(), r->revision + 1, cb);
        watch_->Start();
      } else {
        s = r.status();
      }
    }
    const int64_t quiet_ms = quiet_until_ms_ - SystemClock::Instance().MonoMillis();
    if (s.ok() && !leader_ && quiet_ms <= 0) s = Campaign();
    if (s.ok() && leader_) s = Reconcile();
    lock.lock();
    if (!s.ok()) {
      LogWarn("cluster: placement controller step failed; retrying",
              {{"node", self_}, {"error", s.message()}});
      cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [this] { return stop_; });
      backoff_ms = std::min<int64_t>(backoff_ms * 2, 2000);
      continue;
    }
    backoff_ms = 100;
    // Periodic look as a safety net besides the watch (sooner when a quiet period ends).
    const int64_t look_ms = quiet_ms > 0 ? std::min<int64_t>(quiet_ms, 2000) : 2000;
    cv_.wait_for(lock, std::chrono::milliseconds(look_ms), [this, quiet_ms] {
      return stop_ || lost_ || rewatch_ || !watch_ || (changed_ && quiet_ms <= 0);
    });
  }
  lock.unlock();
  if (watch_) watch_->Stop();
  const int64_t lease = lease_id_.load();
  StepDown();
  if (lease != 0) client_.LeaseRevoke(lease).IgnoreError();
}

}  // namespace iris::cluster
