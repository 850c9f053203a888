#include "cluster/shard_epochs.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using json = nlohmann::json;

ShardEpochs::ShardEpochs(EtcdClient& client, ClusterKeys keys, ShardId shard, NodeId self,
                         int64_t lease_ttl_s, std::function<void(repl::Event)> post)
    : client_(client),
      keys_(std::move(keys)),
      shard_(shard),
      self_(self),
      lease_ttl_s_(lease_ttl_s),
      post_(std::move(post)) {
  thread_ = std::thread([this] { Run(); });
}

ShardEpochs::~ShardEpochs() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;  // from now on the watches' callbacks queue nothing
  }
  cv_.notify_all();
  thread_.join();
  std::lock_guard<std::mutex> lock(watch_mu_);
  for (std::unique_ptr<EtcdWatch>& w : watches_) {
    if (w) w->Stop();
  }
}

std::string ShardEpochs::LeaderKey() const { return keys_.Leader(shard_); }

Status ShardEpochs::Start() {
  Result<repl::ShardRecord> record = ReadRecord();
  if (!record.ok()) return record.status();
  post_(repl::EtcdWatch{*record});
  const int64_t from = static_cast<int64_t>(record->revision) + 1;
  StartWatch(0, from);
  StartWatch(1, from);
  return Status::Ok();
}

std::string ShardEpochs::WatchedKey(int which) const {
  return which == 0 ? keys_.Shard(shard_) : keys_.Leader(shard_);
}

void ShardEpochs::StartWatch(int which, int64_t from) {
  const std::string key = WatchedKey(which);
  EtcdWatch::Callbacks cb;
  cb.on_events = [this, key](const std::vector<WatchEvent>& events, int64_t) {
    for (const WatchEvent& e : events) {
      if (e.kv.key == key) {  // the prefix also matches shards/<s>0...
        Queue([this] { PostRecord(); });
        return;
      }
    }
  };
  // etcd compacted the history this watch needed: it has stopped. Read the record again and
  // follow the key from that read on (ShardEpochs' thread replaces the watch).
  cb.on_compacted = [this, which](int64_t) { Queue([this, which] { RestartWatch(which); }); };
  auto watch = std::make_unique<EtcdWatch>(client_, key, from, std::move(cb));
  watch->Start();
  std::unique_ptr<EtcdWatch> old;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    old = std::move(watches_[which]);
    watches_[which] = std::move(watch);
  }
  if (old) old->Stop();  // it has ended (compaction); joins its thread
}

void ShardEpochs::RestartWatch(int which) {
  Result<repl::ShardRecord> record = ReadRecord();
  if (!record.ok()) {
    // etcd unreachable: try again behind whatever else is queued (each read is bounded by
    // the request timeout).
    Queue([this, which] { RestartWatch(which); });
    return;
  }
  post_(repl::EtcdWatch{*record});
  StartWatch(which, static_cast<int64_t>(record->revision) + 1);
}

Result<repl::ShardRecord> ShardEpochs::ReadRecord() {
  IRIS_ASSIGN_OR_RETURN(RangeResult shard, client_.Range(keys_.Shard(shard_)));
  IRIS_ASSIGN_OR_RETURN(RangeResult leader, client_.Range(keys_.Leader(shard_)));
  repl::ShardRecord r;
  // The shard key's content is exactly as of the first read's revision; the leader key, read
  // after it, may be newer, which at worst makes a switch compared against this revision
  // fail (and be read again). Taking the second read's revision instead would let a change
  // of the shard key between the two reads pass for seen (a switch made on a target the
  // controller had already replaced).
  r.revision = static_cast<uint64_t>(shard.revision);
  if (!shard.kvs.empty()) {
    IRIS_ASSIGN_OR_RETURN(ShardInfo info, ParseShard(shard.kvs[0].value));
    r.epoch = static_cast<repl::Epoch>(info.epoch);
    r.primary = info.primary;
    r.replicas = info.replicas;
    r.target = info.target;
  }
  if (!leader.kvs.empty()) {
    json j = json::parse(leader.kvs[0].value, nullptr, false);
    if (j.is_object() && j.contains("epoch") && j["epoch"].is_number_unsigned()) {
      r.lease_live = j["epoch"].get<repl::Epoch>() == r.epoch;
    }
  }
  return r;
}

void ShardEpochs::PostRecord() {
  Result<repl::ShardRecord> record = ReadRecord();
  if (!record.ok()) {
    obs::LogWarn("replication: cannot read the shard record",
                 {{"shard", shard_}, {"error", record.status().message()}});
    // The change that asked for this read must not be missed: read again behind whatever
    // else is queued (each read is bounded by the request timeout).
    Queue([this] { PostRecord(); });
    return;
  }
  post_(repl::EtcdWatch{*record});
}

void ShardEpochs::Queue(std::function<void()> call) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    calls_.push_back(std::move(call));
  }
  cv_.notify_one();
}

void ShardEpochs::Run() {
  for (;;) {
    std::function<void()> call;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !calls_.empty(); });
      if (stopping_) return;
      call = std::move(calls_.front());
      calls_.pop_front();
    }
    call();
  }
}

void ShardEpochs::Cas(const repl::EtcdCas& cas) {
  Queue([this, cas] { DoCas(cas); });
}

void ShardEpochs::DoCas(const repl::EtcdCas& cas) {
  const auto answer = [&](bool ok) {
    Result<repl::ShardRecord> now = ReadRecord();
    post_(repl::EtcdTxnResult{cas.new_epoch, ok, now.ok() ? *now : repl::ShardRecord{}});
  };
  Result<RangeResult> read = client_.Range(keys_.Shard(shard_));
  if (!read.ok() || read->kvs.empty()) {
    answer(false);
    return;
  }
  Result<ShardInfo> info = ParseShard(read->kvs[0].value);
  if (!info.ok() || static_cast<repl::Epoch>(info->epoch) != cas.expected_epoch) {
    answer(false);
    return;
  }
  const int64_t grant_sent_ms = SystemClock::Instance().MonoMillis();
  Result<Lease> lease = client_.LeaseGrant(lease_ttl_s_);
  if (!lease.ok()) {
    answer(false);
    return;
  }
  ShardInfo next = *info;
  next.epoch = static_cast<int64_t>(cas.new_epoch);
  next.primary = cas.primary;
  next.elected = true;
  const std::string leader = json{{"epoch", cas.new_epoch}, {"primary", cas.primary}}.dump();
  Result<TxnResult> txn =
      client_.Txn({Compare::ModRevisionEquals(keys_.Shard(shard_), read->kvs[0].mod_revision),
                   Compare::Absent(keys_.Leader(shard_))},
                  {TxnOp::Put(keys_.Shard(shard_), ShardToJson(next)),
                   TxnOp::Put(keys_.Leader(shard_), leader, lease->id)});
  bool won = txn.ok() && txn->succeeded;
  if (!txn.ok()) {
    // The answer was lost: etcd may have applied it. Our lease on leaders/<s> says so.
    Result<RangeResult> check = client_.Range(keys_.Leader(shard_));
    won = check.ok() && !check->kvs.empty() && check->kvs[0].lease == lease->id;
  }
  if (won) {
    leases_[cas.new_epoch] = lease->id;
    Renewed(cas.new_epoch, grant_sent_ms, lease->ttl_s > 0 ? lease->ttl_s : lease_ttl_s_);
    obs::LogInfo("replication: primary of a new epoch",
                 {{"shard", shard_}, {"node", self_}, {"epoch", cas.new_epoch}});
  } else {
    client_.LeaseRevoke(lease->id).IgnoreError();
  }
  answer(won);
}

void ShardEpochs::Switch(const repl::EtcdSwitch& sw) {
  Queue([this, sw] { DoSwitch(sw); });
}

void ShardEpochs::DoSwitch(const repl::EtcdSwitch& sw) {
  const auto answer = [&](bool ok) {
    Result<repl::ShardRecord> now = ReadRecord();
    post_(repl::EtcdTxnResult{sw.new_epoch, ok, now.ok() ? *now : repl::ShardRecord{}});
  };
  auto held = leases_.find(sw.expected_epoch);
  Result<RangeResult> shard = client_.Range(keys_.Shard(shard_));
  Result<RangeResult> leader = client_.Range(keys_.Leader(shard_));
  if (held == leases_.end() || !shard.ok() || shard->kvs.empty() || !leader.ok() ||
      leader->kvs.empty()) {
    answer(false);
    return;
  }
  const int64_t lease = held->second;
  const KeyValue& skv = shard->kvs[0];
  const KeyValue& lkv = leader->kvs[0];
  Result<ShardInfo> info = ParseShard(skv.value);
  const auto revision = static_cast<int64_t>(sw.revision);
  if (!info.ok() || static_cast<repl::Epoch>(info->epoch) != sw.expected_epoch ||
      skv.mod_revision > revision || lkv.mod_revision > revision || lkv.lease != lease) {
    answer(false);
    return;
  }
  const bool stays = std::find(sw.replicas.begin(), sw.replicas.end(), self_) != sw.replicas.end();
  ShardInfo next = *info;
  next.epoch = static_cast<int64_t>(sw.new_epoch);
  next.replicas = sw.replicas;
  next.target.clear();
  next.elected = true;
  std::vector<TxnOp> ops{TxnOp::Put(keys_.Shard(shard_), ShardToJson(next))};  // (resent below)
  if (stays) {
    ops.push_back(TxnOp::Put(keys_.Leader(shard_),
                             json{{"epoch", sw.new_epoch}, {"primary", self_}}.dump(), lease));
  } else {
    ops.push_back(TxnOp::Delete(keys_.Leader(shard_)));
  }
  const std::vector<Compare> cmp = {
      Compare::ModRevisionEquals(keys_.Shard(shard_), skv.mod_revision),
      Compare::ModRevisionEquals(keys_.Leader(shard_), lkv.mod_revision)};
  Result<TxnResult> txn = client_.Txn(cmp, ops);
  bool won = txn.ok() && txn->succeeded;
  if (!txn.ok()) {
    // The answer was lost: etcd may have applied the transaction, or may still. The outcome
    // must be known before anything is answered: a switch taken for refused would let the
    // primary commit again with the node the switch took out (whose copy then goes). The
    // primary takes no append while its switch is in flight, so it waits here: the same
    // transaction again (its compares make a second application impossible) until etcd
    // answers; if the compares fail, the keys moved on — through this switch (the shard
    // key then says e' with these replicas: nothing else writes e' for this shard, the
    // epoch being this node's) or through another change, after which the lost one can
    // never apply.
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      Result<TxnResult> again = client_.Txn(cmp, ops);
      if (!again.ok()) continue;
      if (again->succeeded) {
        won = true;
        break;
      }
      Result<RangeResult> check = client_.Range(keys_.Shard(shard_));
      if (!check.ok()) continue;
      won = false;
      if (!check->kvs.empty()) {
        Result<ShardInfo> now = ParseShard(check->kvs[0].value);
        won = now.ok() && static_cast<repl::Epoch>(now->epoch) == sw.new_epoch &&
              now->replicas == sw.replicas;
      }
      break;
    }
  }
  if (won) {
    leases_.erase(held);
    if (stays) {
      leases_[sw.new_epoch] = lease;
      // The lease is the same one: what was known of it holds for the new epoch.
      if (valid_epoch_.load() == sw.expected_epoch) valid_epoch_.store(sw.new_epoch);
    } else {
      if (valid_epoch_.load() == sw.expected_epoch) valid_epoch_.store(0);
      client_.LeaseRevoke(lease).IgnoreError();
    }
    obs::LogInfo("replication: replica set switched", {{"shard", shard_},
                                                       {"node", self_},
                                                       {"epoch", sw.new_epoch},
                                                       {"replicas", json(sw.replicas).dump()},
                                                       {"primary_stays", stays}});
  }
  answer(won);
}

void ShardEpochs::KeepAlive(const repl::EtcdKeepAlive& keep_alive) {
  const repl::Epoch epoch = keep_alive.epoch;
  Queue([this, epoch] {
    auto held = leases_.find(epoch);
    if (held == leases_.end()) {
      post_(repl::LeaseLapsed{epoch});
      return;
    }
    const int64_t sent_ms = SystemClock::Instance().MonoMillis();
    Result<int64_t> ttl = client_.LeaseKeepAliveOnce(held->second);
    if (ttl.ok() && *ttl > 0) Renewed(epoch, sent_ms, *ttl);
    if (!ttl.ok() && ttl.status().code() == StatusCode::kNotFound) {
      leases_.erase(held);
      if (valid_epoch_.load() == epoch) valid_epoch_.store(0);
      post_(repl::LeaseLapsed{epoch});
    }
  });
}

void ShardEpochs::Renewed(repl::Epoch epoch, int64_t sent_ms, int64_t ttl_s) {
  // The margin covers the two clocks' rates and etcd's own timer granularity.
  const int64_t ttl_ms = ttl_s * 1000;
  const int64_t until = sent_ms + ttl_ms - std::max<int64_t>(250, ttl_ms / 10);
  valid_until_ms_.store(until);
  valid_epoch_.store(epoch);
}

int64_t ShardEpochs::LeaseValidUntilMs(repl::Epoch epoch) const {
  return epoch != 0 && valid_epoch_.load() == epoch ? valid_until_ms_.load() : 0;
}

bool ShardEpochs::LeaseValid(repl::Epoch epoch) const {
  return epoch != 0 && valid_epoch_.load() == epoch &&
         SystemClock::Instance().MonoMillis() < valid_until_ms_.load();
}

void ShardEpochs::Revoke(const repl::EtcdRevoke& revoke) {
  const repl::Epoch epoch = revoke.epoch;
  Queue([this, epoch] {
    auto held = leases_.find(epoch);
    if (held == leases_.end()) return;
    if (valid_epoch_.load() == epoch) valid_epoch_.store(0);
    client_.LeaseRevoke(held->second).IgnoreError();
    leases_.erase(held);
  });
}

}  // namespace iris::cluster
