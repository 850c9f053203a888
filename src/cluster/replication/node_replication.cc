#include "cluster/replication/node_replication.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "obs/log.h"

namespace iris::cluster {
namespace {

// A rebuild chunk read before the store applied the rebuild's lsn is read again this much
// later (the store applies committed batches as soon as they are durable here).
constexpr int64_t kBehindRetryMs = 10;

}  // namespace

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
      log_(std::move(log)) {
  // Rebuild ids differ across restarts of this node (a late InstallSnapshot of an earlier
  // incarnation must not name a later rebuild).
  next_rebuild_ = static_cast<uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  rebuild_thread_ = std::thread([this] { RebuildLoop(); });
}

NodeReplication::~NodeReplication() {
  {
    std::lock_guard<std::mutex> lock(rebuild_mu_);
    rebuild_stopping_ = true;
  }
  rebuild_cv_.notify_all();
  if (rebuild_thread_.joinable()) rebuild_thread_.join();
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

Status NodeReplication::AddShard(repl::ShardNo shard, std::vector<repl::NodeId> replicas,
                                 bool shard_elected, const std::vector<repl::NodeId>& target) {
  const auto has_self = [&](const std::vector<repl::NodeId>& v) {
    return std::find(v.begin(), v.end(), options_.self) != v.end();
  };
  if (!has_self(replicas) && !has_self(target)) {
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
  ho.shard_elected = shard_elected || options_.lost_data;
  ho.tick_ms = options_.tick_ms;
  // The snapshot's state is the store's (copied by a rebuild), never carried in a message.
  ho.replica.fetch_snapshots = false;
  // A primary that hears no backup, or commits nothing while W - 1 backups are in sync,
  // for two lease TTLs (at least 3 s) steps down, so that backups that reach each other
  // elect one that can (replica.h): a primary cut off from its backups but not from etcd
  // would otherwise keep its lease.
  if (ho.replica.stall_depose_ms == 0) {
    ho.replica.stall_depose_ms = std::max<int64_t>(3'000, 2'000 * options_.lease_ttl_s);
  }
  const bool rebuilds = env_.copy_chunk && env_.install_chunk && env_.send_transfer;
  ho.compact_every = rebuilds ? options_.compact_every : 0;  // else a lagging replica is stuck

  repl::HostEnvironment he;
  he.send = [this, shard](repl::NodeId to, repl::Message m) {
    if (env_.send) env_.send(to, shard, std::move(m));
  };
  he.etcd_cas = [e](const repl::EtcdCas& c) { e->Cas(c); };
  he.etcd_keep_alive = [e](const repl::EtcdKeepAlive& k) { e->KeepAlive(k); };
  he.etcd_revoke = [e](const repl::EtcdRevoke& r) { e->Revoke(r); };
  he.etcd_switch = [e](const repl::EtcdSwitch& sw) { e->Switch(sw); };
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
  if (rebuilds) {
    he.rebuild = [this, shard](const repl::Rebuild& r) { StartRebuild(shard, r); };
    he.install_chunk = [this, shard](const std::string& payload) {
      return env_.install_chunk(shard, payload);
    };
    he.send_ack = [this, shard](repl::NodeId to, const repl::RebuildAck& ack) {
      env_.send_transfer(to, shard, ack);
    };
    he.compaction_floor = [this, shard] {
      // The lsn every rebuild of this shard (in progress, or finished moments ago and
      // about to be levelled) continues from.
      std::lock_guard<std::mutex> lock(rebuild_mu_);
      repl::Lsn floor = ~repl::Lsn{0};
      for (const auto& [key, r] : rebuilds_) {
        if (key.first == shard) floor = std::min(floor, r.order.lsn);
      }
      return floor;
    };
  }
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

Status NodeReplication::RemoveShard(repl::ShardNo shard) {
  Shard removed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shards_.find(shard);
    if (it != shards_.end()) {
      removed = std::move(it->second);
      shards_.erase(it);
    }
  }
  // The host first (as in the destructor): its strand calls into the etcd session.
  removed.host.reset();
  removed.epochs.reset();
  {
    std::lock_guard<std::mutex> lock(rebuild_mu_);
    for (auto it = rebuilds_.begin(); it != rebuilds_.end();) {
      it = it->first.first == shard ? rebuilds_.erase(it) : std::next(it);
    }
  }
  IRIS_RETURN_IF_ERROR(log_->DropShard(shard));
  obs::LogInfo("replication: replica removed from this node (moved away)",
               {{"shard", shard}, {"node", options_.self}});
  return Status::Ok();
}

std::vector<repl::ShardNo> NodeReplication::Shards() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<repl::ShardNo> out;
  for (const auto& entry : shards_) out.push_back(entry.first);
  return out;
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

void NodeReplication::ReceiveTransfer(repl::NodeId from, repl::ShardNo shard,
                                      repl::Transfer transfer) {
  if (auto* chunk = std::get_if<repl::RebuildChunk>(&transfer)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = shards_.find(shard);
      if (it != shards_.end() && it->second.host) {
        it->second.host->PostRebuildChunk(from, std::move(*chunk));
        return;
      }
    }
    if (env_.send_transfer) {
      env_.send_transfer(from, shard, repl::RebuildAck{chunk->rebuild, chunk->seq, false});
    }
    return;
  }
  const auto& ack = std::get<repl::RebuildAck>(transfer);
  std::optional<repl::InstallSnapshot> install;
  {
    std::lock_guard<std::mutex> lock(rebuild_mu_);
    auto it = rebuilds_.find({shard, from});
    if (it == rebuilds_.end()) return;
    OutgoingRebuild& r = it->second;
    if (!ack.ok && ack.seq == repl::kInstallRefusedSeq && r.id == ack.rebuild && r.copied &&
        !r.awaiting) {
      // The replica refused this rebuild's install (it applied something meanwhile, or a
      // chunk was older than the install): the next order starts over.
      rebuilds_.erase(it);
      return;
    }
    if (r.id != ack.rebuild || r.seq != ack.seq || !r.awaiting) return;  // stale or repeated
    if (!ack.ok) {
      rebuilds_.erase(it);
      return;
    }
    r.awaiting = false;
    r.bytes += r.in_flight_bytes;
    if (r.copied) {
      obs::LogInfo("replication: replica rebuilt",
                   {{"shard", shard},
                    {"replica", from},
                    {"lsn", r.order.lsn},
                    {"chunks", r.seq + 1},
                    {"bytes", r.bytes},
                    {"ms", NowMs() - r.started_ms}});
      // Every chunk is in the replica's store: it may now take the snapshot.
      install = repl::InstallSnapshot{
          r.order.primary_epoch,
          repl::Snapshot{r.order.lsn, r.order.epoch, r.order.hlc, repl::RebuildState(r.id)}};
      // Kept (finished) for a while so that the Rebuild orders the primary repeats until the
      // replica is levelled do not start another copy, and the log it is levelled from
      // stays (compaction_floor).
      r.deadline_ms = NowMs() + options_.rebuild_level_grace_ms;
    } else {
      ++r.seq;
    }
  }
  rebuild_cv_.notify_all();
  if (install && env_.send) env_.send(from, shard, std::move(*install));
}

void NodeReplication::StartRebuild(repl::ShardNo shard, const repl::Rebuild& order) {
  bool log = false;
  {
    std::lock_guard<std::mutex> lock(rebuild_mu_);
    if (rebuild_stopping_) return;
    auto it = rebuilds_.find({shard, order.peer});
    if (it != rebuilds_.end() && it->second.order.primary_epoch >= order.primary_epoch) return;
    OutgoingRebuild r;
    r.shard = shard;
    r.order = order;
    r.id = ++next_rebuild_;
    r.started_ms = NowMs();
    rebuilds_[{shard, order.peer}] = std::move(r);
    // Once a minute per replica and shard: a replica that stays down is ordered again and
    // again.
    int64_t& last = rebuild_logged_ms_[{shard, order.peer}];
    if (last == 0 || NowMs() - last >= 60'000) {
      last = NowMs();
      log = true;
    }
  }
  if (log) {
    obs::LogInfo("replication: rebuilding a replica that is behind the log",
                 {{"shard", shard}, {"replica", order.peer}, {"lsn", order.lsn}});
  }
  rebuild_cv_.notify_all();
}

int64_t NodeReplication::NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void NodeReplication::RebuildLoop() {
  // Throttle: the next chunk may leave at send_at; each chunk of B bytes moves it B/rate on.
  int64_t send_at_us = 0;
  std::unique_lock<std::mutex> lock(rebuild_mu_);
  for (;;) {
    if (rebuild_stopping_) return;
    const int64_t now = NowMs();
    int64_t wake = now + 1000;
    OutgoingRebuild* next = nullptr;
    for (auto it = rebuilds_.begin(); it != rebuilds_.end();) {
      OutgoingRebuild& r = it->second;
      const bool finished = r.copied && !r.awaiting;
      if ((r.awaiting || finished) && now >= r.deadline_ms) {
        it = rebuilds_.erase(it);  // no ack (the primary orders another), or finished long ago
        continue;
      }
      if (r.awaiting || finished) {
        wake = std::min(wake, r.deadline_ms);
      } else if (now < r.not_before_ms) {
        wake = std::min(wake, r.not_before_ms);
      } else if (next == nullptr) {
        next = &r;
      }
      ++it;
    }
    const int64_t now_us = now * 1000;
    if (next == nullptr || now_us < send_at_us) {
      const int64_t until = next == nullptr ? wake : std::min(wake, send_at_us / 1000 + 1);
      rebuild_cv_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, until - now)));
      continue;
    }
    // Read the chunk without the lock (store I/O); the entry stays (not awaiting, so an ack
    // cannot touch it, and only this thread sends).
    const std::pair<repl::ShardNo, repl::NodeId> key{next->shard, next->order.peer};
    const uint64_t id = next->id;
    const repl::Lsn order_lsn = next->order.lsn;
    std::string cursor = next->cursor;
    lock.unlock();
    // What the host has applied before the read is in the store when it is read: with the
    // store's own record (which a rebuild's install does not move), the position the chunk
    // was read at. Known to be short of the order's lsn already: not read at all.
    const std::optional<repl::ReplicaHost::View> before = view(key.first);
    repl::Lsn known = before ? before->applied_lsn : 0;
    if (known < order_lsn && env_.applied_lsn) {
      if (Result<repl::Lsn> stored = env_.applied_lsn(key.first); stored.ok()) {
        known = std::max(known, *stored);
      }
    }
    bool done = false;
    repl::Lsn read_lsn = known;
    Result<std::string> chunk = std::string();
    if (known >= order_lsn) {
      chunk = env_.copy_chunk(key.first, &cursor, options_.rebuild_chunk_bytes, &done, &read_lsn);
      if (before) read_lsn = std::max(read_lsn, before->applied_lsn);
    }
    lock.lock();
    auto it = rebuilds_.find(key);
    if (it == rebuilds_.end() || it->second.id != id) continue;  // replaced meanwhile
    if (!chunk.ok()) {
      obs::LogError("replication: rebuild stopped: cannot read the shard",
                    {{"shard", key.first}, {"error", chunk.status().message()}});
      rebuilds_.erase(it);
      continue;
    }
    OutgoingRebuild& r = it->second;
    if (read_lsn < r.order.lsn) {
      // The order's lsn is committed but not yet applied to this store (a commit this node
      // learnt before its own copy was durable, or one applied just after the order): the
      // chunk lacks batches up to that lsn, which the replica will never replay (it is
      // levelled from the lsn on). Dropped; read again once the store has applied them.
      const int64_t t = NowMs();
      if (r.behind_since_ms == 0) {
        r.behind_since_ms = t;
        obs::LogInfo("replication: a rebuild waits for this store to apply its lsn",
                     {{"shard", key.first},
                      {"replica", key.second},
                      {"lsn", r.order.lsn},
                      {"applied", read_lsn}});
      }
      if (t - r.behind_since_ms >= options_.rebuild_ack_timeout_ms) {
        obs::LogWarn("replication: rebuild stopped: the store did not apply the rebuild's lsn",
                     {{"shard", key.first},
                      {"replica", key.second},
                      {"lsn", r.order.lsn},
                      {"applied", read_lsn}});
        rebuilds_.erase(it);  // the primary orders another
      } else {
        r.not_before_ms = t + kBehindRetryMs;
      }
      continue;
    }
    r.behind_since_ms = 0;
    r.cursor = std::move(cursor);
    r.copied = done;
    r.awaiting = true;
    r.deadline_ms = NowMs() + options_.rebuild_ack_timeout_ms;
    const size_t bytes = chunk->size();
    r.in_flight_bytes = bytes;
    repl::RebuildChunk c{r.id, r.seq, r.order.primary_epoch, done, std::move(chunk).value(),
                         read_lsn};
    const int64_t rate = std::max<int64_t>(1, options_.rebuild_bytes_per_sec);
    send_at_us = std::max(send_at_us, now_us) +
                 static_cast<int64_t>(bytes) * 1'000'000 / rate;
    lock.unlock();
    const bool sent = env_.send_transfer(key.second, key.first, std::move(c));
    lock.lock();
    if (!sent) {
      // No link to the replica (it is down): keep the entry, finished, so that the orders
      // the primary repeats every rebuild_retry_ms are ignored for a while instead of
      // reading a chunk each time.
      it = rebuilds_.find(key);
      if (it != rebuilds_.end() && it->second.id == id) {
        it->second.copied = true;
        it->second.awaiting = false;
        it->second.deadline_ms = NowMs() + options_.rebuild_no_link_hold_ms;
      }
    }
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
         v.accepted == it->second.serving_epoch && it->second.epochs &&
         it->second.epochs->LeaseValid(it->second.serving_epoch);
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
