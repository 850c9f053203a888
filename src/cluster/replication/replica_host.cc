#include "cluster/replication/replica_host.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "common/assert.h"
#include "obs/log.h"

namespace iris::cluster::repl {

struct ReplicaHost::Shared {
  struct Item {
    Event event;
    bool sync_report = false;  // a WalSynced from the log: checked against the generation
    uint64_t generation = 0;
    Status failure;        // a failed log write (sync_report): stops the shard
    Epoch open_epoch = 0;  // non-zero: an OpenForAppends, no event
    std::optional<std::pair<NodeId, RebuildChunk>> chunk;  // a rebuild chunk, no event
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> items;
  bool stopping = false;
  View view;
};

Result<std::unique_ptr<ReplicaHost>> ReplicaHost::Start(HostOptions options, ShardLog& log,
                                                        HostEnvironment env) {
  Result<DurableState> durable = log.Load(options.shard);
  if (!durable.ok()) return durable.status();
  durable->committed = options.applied_lsn;  // the store applies committed batches only
  if ((options.shard_elected || options.applied_lsn > 0) && durable->promised == 0 && durable->accepted == 0 &&
      durable->snapshot.lsn == 0 && durable->batches.empty()) {
    durable->amnesiac = true;  // persisted with the promise etcd's record gives it
    obs::LogWarn(
        "replication: a replica without a log joins a shard that has had a primary: "
        "it does not vote until the primary has levelled it",
        {{"shard", options.shard}});
  }
  auto host = std::unique_ptr<ReplicaHost>(
      new ReplicaHost(std::move(options), log, std::move(env), std::move(durable).value()));
  host->Publish();
  host->thread_ = std::thread([h = host.get()] { h->Run(); });
  return host;
}

ReplicaHost::ReplicaHost(HostOptions options, ShardLog& log, HostEnvironment env,
                         DurableState durable)
    : opts_(std::move(options)),
      log_(log),
      env_(std::move(env)),
      replica_(opts_.replica, std::move(durable)),
      clock_(opts_.clock != nullptr ? *opts_.clock : SystemClock::Instance()),
      shared_(std::make_shared<Shared>()) {
  // What the store already holds; a snapshot the log starts from is applied by definition.
  applied_ = std::max(opts_.applied_lsn, replica_.snapshot().lsn);
}

ReplicaHost::~ReplicaHost() {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!waiting_.empty() && env_.refuse) {
    env_.refuse(Refuse{std::vector<uint64_t>(waiting_.begin(), waiting_.end()),
                       Unavailable("shard replica stopping", 100)});
  }
}

void ReplicaHost::Post(Event event) {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    if (shared_->stopping) return;
    shared_->items.push_back(Shared::Item{std::move(event), false, 0, Status::Ok()});
  }
  shared_->cv.notify_one();
}

void ReplicaHost::OpenForAppends(Epoch epoch) {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    if (shared_->stopping) return;
    shared_->items.push_back(Shared::Item{Tick{}, false, 0, Status::Ok(), epoch});
  }
  shared_->cv.notify_one();
}

void ReplicaHost::PostRebuildChunk(NodeId from, RebuildChunk chunk) {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    if (shared_->stopping) return;
    Shared::Item item{Tick{}, false, 0, Status::Ok()};
    item.chunk.emplace(from, std::move(chunk));
    shared_->items.push_back(std::move(item));
  }
  shared_->cv.notify_one();
}

void ReplicaHost::OnRebuildChunk(NodeId from, RebuildChunk& c) {
  const auto answer = [&](bool ok) {
    if (env_.send_ack) env_.send_ack(from, RebuildAck{c.rebuild, c.seq, ok});
  };
  const Role role = replica_.role();
  // A primary's or candidate's store is the shard's; a fenced sender's copy is not taken.
  if (failed_ || !env_.install_chunk || role == Role::kPrimary || role == Role::kCandidate ||
      c.epoch < replica_.promised()) {
    answer(false);
    return;
  }
  const bool current = c.rebuild == rebuild_.id && from == rebuild_.from;
  if (c.seq == 0 && !current) {
    rebuild_ = IncomingRebuild{c.rebuild, from, 0, false, true};  // replaces an older one
  } else if (!current || c.seq > rebuild_.next_seq) {
    answer(false);
    return;
  }
  if (c.seq < rebuild_.next_seq) {  // a resend of a chunk already installed
    answer(true);
    return;
  }
  if (c.read_lsn < applied_ || !rebuild_.clean) {
    // Older than what this store applied (it would put back records later batches changed),
    // or useless: something was applied since the first chunk, so the install would be
    // refused. The replica was levelled meanwhile; the primary orders another if needed.
    rebuild_ = IncomingRebuild{};
    answer(false);
    return;
  }
  const Status s = env_.install_chunk(c.payload);
  if (!s.ok()) {
    rebuild_ = IncomingRebuild{};  // nothing of this chunk was written; the primary retries
    answer(false);
    return;
  }
  ++rebuild_.next_seq;
  rebuild_.min_read_lsn = std::min(rebuild_.min_read_lsn, c.read_lsn);
  rebuild_.complete = c.last;
  answer(true);
}

bool ReplicaHost::InstallAllowed(NodeId from, const InstallSnapshot& m) const {
  if (!env_.install_chunk) return true;
  // Every chunk must hold the batches up to the snapshot's lsn: the replica is levelled
  // from there on, so a batch before it that a chunk lacks would be lost here.
  return rebuild_.id != 0 && from == rebuild_.from && rebuild_.complete && rebuild_.clean &&
         m.snapshot.state == RebuildState(rebuild_.id) && m.snapshot.lsn <= rebuild_.min_read_lsn;
}

void ReplicaHost::ReportRole() {
  if (!env_.role_changed) {
    open_epoch_ = replica_.primary_epoch();
    return;
  }
  const Epoch epoch = replica_.primary_epoch();
  if (epoch == reported_epoch_) return;
  if (epoch != 0 && applied_ < replica_.LastLsn()) return;  // inherited batches still to apply
  reported_epoch_ = epoch;
  env_.role_changed(replica_.role(), epoch, replica_.HlcHighWater());
}

ReplicaHost::View ReplicaHost::view() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->view;
}

void ReplicaHost::Publish() {
  View v;
  v.role = replica_.role();
  v.promised = replica_.promised();
  v.accepted = replica_.accepted();
  v.last_lsn = replica_.LastLsn();
  v.durable_lsn = replica_.DurableLsn();
  v.commit_lsn = replica_.CommitLsn();
  v.applied_lsn = applied_;
  v.snapshot_lsn = replica_.snapshot().lsn;
  v.hlc_high_water = replica_.HlcHighWater();
  v.rebuilds_installed = rebuilds_installed_;
  v.failed = failed_;
  v.amnesiac = replica_.amnesiac();
  v.removed = replica_.removed();
  v.members = replica_.Members();
  v.switching = replica_.switching();
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->view = v;
}

void ReplicaHost::Run() {
  const auto now_ms = [&] { return clock_.MonoNanos() / 1'000'000; };
  int64_t next_tick = now_ms();
  for (;;) {
    Shared::Item item;
    bool tick = false;
    {
      std::unique_lock<std::mutex> lock(shared_->mu);
      for (;;) {
        if (shared_->stopping) return;
        if (!shared_->items.empty()) break;
        const int64_t wait = next_tick - now_ms();
        if (wait <= 0) break;
        shared_->cv.wait_for(lock, std::chrono::milliseconds(wait));
      }
      if (!shared_->items.empty()) {
        item = std::move(shared_->items.front());
        shared_->items.pop_front();
      } else {
        tick = true;
      }
    }
    if (item.open_epoch != 0) {
      open_epoch_ = item.open_epoch;
      continue;
    }
    if (item.chunk) {
      OnRebuildChunk(item.chunk->first, item.chunk->second);
      Publish();
      continue;
    }
    if (tick) {
      next_tick = now_ms() + opts_.tick_ms;
      item.event = Tick{now_ms()};
    } else if (item.sync_report && !item.failure.ok()) {
      Fail(item.failure);
      continue;
    } else if (item.sync_report && item.generation != generation_) {
      continue;  // reports an lsn a later truncate or install may have removed
    }
    if (failed_) {
      if (auto* append = std::get_if<ClientAppend>(&item.event)) {
        if (env_.refuse) env_.refuse(Refuse{{append->request_id}, Unavailable("shard stopped")});
      } else if (auto* await = std::get_if<AwaitCommit>(&item.event)) {
        if (env_.refuse) env_.refuse(Refuse{{await->request_id}, Unavailable("shard stopped")});
      }
      continue;
    }
    if (auto* append = std::get_if<ClientAppend>(&item.event)) {
      if (replica_.primary_epoch() != 0 && replica_.primary_epoch() != open_epoch_) {
        // A new primary whose store has not yet taken the shard over (role_changed).
        if (env_.refuse) {
          env_.refuse(Refuse{{append->request_id}, Unavailable("primary taking over", 100)});
        }
        continue;
      }
      waiting_.insert(append->request_id);
    } else if (auto* await = std::get_if<AwaitCommit>(&item.event)) {
      waiting_.insert(await->request_id);
    } else if (auto* receive = std::get_if<Receive>(&item.event)) {
      if (const auto* install = std::get_if<InstallSnapshot>(&receive->message)) {
        if (!InstallAllowed(receive->from, *install)) {
          // Not (or not wholly) copied here: the sender drops that rebuild, and the
          // primary's next order starts another.
          if (const uint64_t id = RebuildIdOf(install->snapshot.state);
              id != 0 && id != installed_rebuild_ && env_.send_ack) {
            env_.send_ack(receive->from, RebuildAck{id, kInstallRefusedSeq, false});
          }
          Publish();
          continue;
        }
      }
    }
    const Role before = replica_.role();
    const Epoch epoch_before = replica_.accepted();
    Carry(replica_.Step(std::move(item.event)));
    if (before == Role::kPrimary && replica_.role() != Role::kPrimary) {
      obs::LogWarn("replication: this node is no longer the shard's primary",
                   {{"shard", opts_.shard},
                    {"epoch", epoch_before},
                    {"role", RoleName(replica_.role())}});
    }
    // A backup applies what the primary says is committed, once it is durable here.
    if (!failed_) ApplyUpTo(std::min(replica_.CommitLsn(), replica_.DurableLsn()));
    if (!failed_ && opts_.compact_every > 0 &&
        applied_ >= replica_.snapshot().lsn + opts_.compact_every) {
      const Lsn upto =
          env_.compaction_floor ? std::min(applied_, env_.compaction_floor()) : applied_;
      if (upto > replica_.snapshot().lsn) Carry(replica_.Step(CompactLog{upto, std::string()}));
    }
    if (!failed_) ReportRole();
    Publish();
  }
}

void ReplicaHost::Carry(std::vector<Effect> effects) {
  for (Effect& effect : effects) {
    if (failed_) return;
    const uint64_t generation = generation_;
    std::weak_ptr<Shared> weak = shared_;
    const ShardLog::SyncedFn synced = [weak, generation](Status status, Lsn last) {
      std::shared_ptr<Shared> shared = weak.lock();
      if (!shared) return;
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (shared->stopping) return;
        shared->items.push_back(Shared::Item{WalSynced{last}, true, generation, status});
      }
      shared->cv.notify_one();
    };
    Status status;
    if (log_.Carry(opts_.shard, effect, synced, &status)) {
      if (!status.ok()) {
        Fail(status);
        return;
      }
      if (const auto* t = std::get_if<WalTruncate>(&effect)) {
        ++generation_;
        Post(WalSynced{t->after_lsn});
      } else if (const auto* i = std::get_if<WalInstallSnapshot>(&effect)) {
        ++generation_;
        applied_ = std::max(applied_, i->snapshot.lsn);
        if (rebuild_.id != 0 && i->snapshot.state == RebuildState(rebuild_.id)) {
          ++rebuilds_installed_;
          installed_rebuild_ = rebuild_.id;
          rebuild_ = IncomingRebuild{};
        }
        Post(WalSynced{i->snapshot.lsn});
      }
      continue;
    }
    std::visit(
        [&](auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, Send>) {
            if (env_.send) env_.send(x.to, std::move(x.message));
          } else if constexpr (std::is_same_v<T, EtcdCas>) {
            if (env_.etcd_cas) env_.etcd_cas(x);
          } else if constexpr (std::is_same_v<T, EtcdSwitch>) {
            if (env_.etcd_switch) env_.etcd_switch(x);
          } else if constexpr (std::is_same_v<T, EtcdKeepAlive>) {
            if (env_.etcd_keep_alive) env_.etcd_keep_alive(x);
          } else if constexpr (std::is_same_v<T, EtcdRevoke>) {
            if (env_.etcd_revoke) env_.etcd_revoke(x);
          } else if constexpr (std::is_same_v<T, Commit>) {
            ApplyUpTo(x.last_lsn);
          } else if constexpr (std::is_same_v<T, Acknowledge>) {
            for (uint64_t id : x.request_ids) waiting_.erase(id);
            if (env_.acknowledge) env_.acknowledge(x);
          } else if constexpr (std::is_same_v<T, Refuse>) {
            for (uint64_t id : x.request_ids) waiting_.erase(id);
            if (env_.refuse) env_.refuse(x);
          } else if constexpr (std::is_same_v<T, Rebuild>) {
            if (env_.rebuild) env_.rebuild(x);
          }
        },
        effect);
  }
}

void ReplicaHost::ApplyUpTo(Lsn lsn) {
  if (lsn <= applied_) return;
  const Lsn first = replica_.snapshot().lsn + 1;
  if (applied_ + 1 < first) {
    // The batches between were compacted into a snapshot this host never applied: only a
    // rebuild (InstallSnapshot) can bring the store there.
    Fail(Internal("shard " + std::to_string(opts_.shard) + ": batches " +
                  std::to_string(applied_ + 1) + ".." + std::to_string(first - 1) +
                  " were compacted before they were applied"));
    return;
  }
  const std::vector<Batch>& log = replica_.batches();
  const Lsn upto = std::min(lsn, replica_.LastLsn());
  if (upto <= applied_) return;
  std::vector<Batch> batches(log.begin() + static_cast<ptrdiff_t>(applied_ + 1 - first),
                             log.begin() + static_cast<ptrdiff_t>(upto + 1 - first));
  if (env_.apply) {
    const Status s = env_.apply(batches);
    if (!s.ok()) {
      Fail(s);
      return;
    }
  }
  applied_ = upto;
  rebuild_.clean = false;
}

void ReplicaHost::Fail(const Status& status) {
  if (failed_) return;
  failed_ = true;
  if (env_.failed) env_.failed(status);
  if (!waiting_.empty() && env_.refuse) {
    env_.refuse(Refuse{std::vector<uint64_t>(waiting_.begin(), waiting_.end()),
                       Unavailable("shard stopped: " + status.message())});
  }
  waiting_.clear();
  Publish();
}

}  // namespace iris::cluster::repl
