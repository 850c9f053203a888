#include "cluster/cluster_view.h"

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using obs::LogInfo;
using obs::LogWarn;

ClusterView::ClusterView(EtcdClient& client, ClusterKeys keys, Callbacks callbacks)
    : client_(client),
      keys_(std::move(keys)),
      callbacks_(std::move(callbacks)),
      snapshot_(std::make_shared<const Placement>(ClusterState{})) {}

ClusterView::~ClusterView() { Stop(); }

Result<ClusterState> ClusterView::Load(EtcdClient& client, const ClusterKeys& keys) {
  IRIS_ASSIGN_OR_RETURN(RangeResult r, client.Range(keys.prefix(), /*prefix=*/true));
  ClusterState state;
  state.revision = r.revision;
  for (const KeyValue& kv : r.kvs) ApplyKey(keys, kv.key, kv.value, false, &state).IgnoreError();
  for (const auto& [id, shard] : state.shards) {
    for (NodeId n : shard.replicas) {
      if (state.nodes.find(n) == state.nodes.end()) state.nodes[n] = NodeInfo{.id = n};
    }
  }
  return state;
}

void ClusterView::StartWatch(int64_t from_revision) {
  EtcdWatch::Callbacks cb;
  cb.on_events = [this](const std::vector<WatchEvent>& events, int64_t revision) {
    OnEvents(events, revision);
  };
  cb.on_compacted = [this](int64_t) {
    std::lock_guard<std::mutex> lock(mu_);
    reload_ = true;
    cv_.notify_all();
  };
  cb.on_connection = [this](bool connected) { SetStale(!connected); };
  watch_ = std::make_unique<EtcdWatch>(client_, keys_.prefix(), from_revision, cb);
  watch_->Start();
}

Status ClusterView::Start() {
  IRIS_ASSIGN_OR_RETURN(ClusterState state, Load(client_, keys_));
  const int64_t next = state.revision + 1;
  Publish(std::move(state));
  StartWatch(next);
  supervisor_ = std::thread([this] { Supervise(); });
  return Status::Ok();
}

void ClusterView::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
  if (watch_) watch_->Stop();
}

void ClusterView::SetStale(bool stale) {
  if (stale_.exchange(stale) == stale) return;
  if (stale) {
    LogWarn("cluster view: etcd unreachable; serving the last snapshot",
            {{"revision", snapshot()->revision()}});
  } else {
    LogInfo("cluster view: watching etcd again", {{"revision", snapshot()->revision()}});
  }
  std::lock_guard<std::mutex> lock(apply_mu_);
  if (callbacks_.on_stale) callbacks_.on_stale(stale);
}

void ClusterView::Supervise() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || reload_; });
    if (stop_) return;
    reload_ = false;
    lock.unlock();
    watch_->Stop();
    SetStale(true);
    int64_t backoff_ms = 100;
    Result<ClusterState> state = Unavailable("not read yet");
    for (;;) {
      state = Load(client_, keys_);
      if (state.ok()) break;
      std::unique_lock<std::mutex> wait_lock(mu_);
      if (cv_.wait_for(wait_lock, std::chrono::milliseconds(backoff_ms),
                       [this] { return stop_; })) {
        return;
      }
      backoff_ms = std::min<int64_t>(backoff_ms * 2, 2000);
    }
    const int64_t next = state->revision + 1;
    LogInfo("cluster view: re-read after compaction", {{"revision", state->revision}});
    Publish(std::move(*state));
    StartWatch(next);
    SetStale(false);
    lock.lock();
  }
}

void ClusterView::OnEvents(const std::vector<WatchEvent>& events, int64_t revision) {
  ClusterState next;
  {
    std::lock_guard<std::mutex> lock(apply_mu_);
    next = state_;
  }
  for (const WatchEvent& e : events) {
    ApplyKey(keys_, e.kv.key, e.kv.value, e.type == WatchEvent::Type::kDelete, &next).IgnoreError();
  }
  next.revision = revision;
  Publish(std::move(next));
}

void ClusterView::Publish(ClusterState next) {
  std::lock_guard<std::mutex> lock(apply_mu_);
  // Remember nodes that went away, and name the replicas never seen registered.
  for (const auto& [id, info] : state_.nodes) {
    if (next.nodes.find(id) == next.nodes.end()) {
      NodeInfo down = info;
      down.alive = false;
      next.nodes[id] = down;
    }
  }
  for (const auto& [id, shard] : next.shards) {
    for (NodeId n : shard.replicas) {
      if (next.nodes.find(n) == next.nodes.end()) next.nodes[n] = NodeInfo{.id = n};
    }
  }
  const ClusterState prev = std::move(state_);
  state_ = std::move(next);
  auto snap = std::make_shared<const Placement>(state_);
  std::atomic_store(&snapshot_, std::shared_ptr<const Placement>(snap));

  for (const auto& [id, info] : state_.nodes) {
    auto it = prev.nodes.find(id);
    const bool was_alive = it != prev.nodes.end() && it->second.alive;
    if (info.alive) {
      const bool changed = !was_alive || it->second.peer != info.peer ||
                           it->second.client != info.client || it->second.admin != info.admin ||
                           it->second.role != info.role;
      if (changed) {
        LogInfo("cluster: node up", {{"node", info.id},
                                     {"peer", info.peer},
                                     {"role", std::string(NodeRoleName(info.role))}});
        if (callbacks_.on_node_up) callbacks_.on_node_up(info);
      }
    } else if (was_alive) {
      LogWarn("cluster: node down", {{"node", info.id}});
      if (callbacks_.on_node_down) callbacks_.on_node_down(info);
    }
  }
  const bool config_changed = prev.config.has_value() != state_.config.has_value() ||
                              (prev.config && (prev.config->vnodes != state_.config->vnodes ||
                                               prev.config->replicas != state_.config->replicas));
  if (config_changed || prev.placement.version != state_.placement.version ||
      prev.placement.shard_of_vnode != state_.placement.shard_of_vnode ||
      prev.shards != state_.shards) {
    if (callbacks_.on_placement) callbacks_.on_placement(snap);
  }
  for (const auto& [jti, until] : state_.revoked_jti) {
    auto it = prev.revoked_jti.find(jti);
    if ((it == prev.revoked_jti.end() || it->second != until) && callbacks_.on_revoked_jti) {
      callbacks_.on_revoked_jti(jti, until);
    }
  }
  for (const auto& [user, before] : state_.revoked_users) {
    auto it = prev.revoked_users.find(user);
    if ((it == prev.revoked_users.end() || it->second != before) && callbacks_.on_revoked_user) {
      callbacks_.on_revoked_user(user, before);
    }
  }
}

namespace {
Status PutUnderFreshLease(EtcdClient& client, const std::string& key, const std::string& value,
                          int64_t ttl_s) {
  IRIS_ASSIGN_OR_RETURN(Lease lease, client.LeaseGrant(ttl_s));
  return client.Put(key, value, lease.id).status();
}
}  // namespace

Status ClusterView::RevokeJti(EtcdClient& client, const ClusterKeys& keys, const std::string& jti,
                              int64_t until_ms, int64_t ttl_s) {
  if (jti.empty() || jti.size() > 256 || jti.find('/') != std::string::npos) {
    return BadRequest("jti must be 1..256 characters without '/'");
  }
  return PutUnderFreshLease(client, keys.RevokedJti(jti),
                            nlohmann::json{{"until_ms", until_ms}}.dump(), ttl_s);
}

Status ClusterView::RevokeUser(EtcdClient& client, const ClusterKeys& keys, uint64_t user,
                               int64_t before_ms, int64_t ttl_s) {
  if (user == 0) return BadRequest("user must be non-zero");
  return PutUnderFreshLease(client, keys.RevokedUser(user),
                            nlohmann::json{{"before_ms", before_ms}}.dump(), ttl_s);
}

}  // namespace iris::cluster
