#include "cluster/replication/replica.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "common/assert.h"

namespace iris::cluster::repl {

const char* RoleName(Role role) {
  switch (role) {
    case Role::kBackup: return "backup";
    case Role::kCandidate: return "candidate";
    case Role::kPrimary: return "primary";
    case Role::kDeposed: return "deposed";
  }
  return "?";
}

Replica::Replica(Options options, DurableState durable)
    : opts_(std::move(options)),
      promised_(durable.promised),
      accepted_(durable.accepted),
      amnesiac_(durable.amnesiac && !opts_.mutations.amnesiac_votes),
      snapshot_(std::move(durable.snapshot)),
      log_(std::move(durable.batches)) {
  IRIS_RELEASE_ASSERT(opts_.write_quorum >= 1 && opts_.write_quorum <= opts_.replicas.size());
  durable_lsn_ = LastLsn();
  commit_lsn_ = std::max(snapshot_.lsn, std::min(durable.committed, LastLsn()));
  // With promised == accepted nothing of a later epoch touched the log (a Level, snapshot
  // or fetch of a later epoch raises promised first), so the durable log is a prefix of the
  // log of accepted's primary: a stale Level of that epoch must not cut it back. Otherwise
  // the log may be half levelled (a Level truncated and refilled it, then the crash took
  // part of the refill) and follows no primary's log until one levels it again.
  log_epoch_ = promised_ == accepted_ ? accepted_ : 0;
  highest_seen_ = std::max(promised_, accepted_);
}

std::vector<Effect> Replica::Step(Event event) {
  out_.clear();
  std::visit(
      [this](auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ClientAppend>) {
          OnClientAppend(e);
        } else if constexpr (std::is_same_v<T, AwaitCommit>) {
          OnAwaitCommit(e);
        } else if constexpr (std::is_same_v<T, Receive>) {
          OnReceive(e.from, e.message);
        } else if constexpr (std::is_same_v<T, WalSynced>) {
          OnWalSynced(e);
        } else if constexpr (std::is_same_v<T, Tick>) {
          OnTick(e);
        } else if constexpr (std::is_same_v<T, EtcdTxnResult>) {
          OnTxnResult(e);
        } else if constexpr (std::is_same_v<T, EtcdWatch>) {
          OnRecord(e.record);
        } else if constexpr (std::is_same_v<T, LeaseLapsed>) {
          if (role_ == Role::kPrimary && e.epoch == accepted_) Depose("lease lapsed");
        } else if constexpr (std::is_same_v<T, CompactLog>) {
          OnCompact(e);
        }
      },
      event);
  return std::move(out_);
}

namespace {
bool Contains(const std::vector<NodeId>& v, NodeId n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}
}  // namespace

const std::vector<NodeId>& Replica::Members() const {
  return record_known_ && !record_.replicas.empty() ? record_.replicas : opts_.replicas;
}

bool Replica::removed() const {
  return record_known_ && !Contains(Members(), opts_.self) && !Contains(record_.target, opts_.self);
}

bool Replica::Known(NodeId n) const {
  return Contains(Members(), n) || Contains(record_.target, n) || Contains(opts_.replicas, n) ||
         peers_.count(n) != 0;
}

uint64_t Replica::HlcHighWater() const {
  return log_.empty() ? snapshot_.hlc : std::max(snapshot_.hlc, log_.back().hlc);
}

// ---- Log helpers -------------------------------------------------------------------------

std::optional<Epoch> Replica::EpochAt(Lsn lsn) const {
  if (lsn == snapshot_.lsn) return snapshot_.epoch;
  if (lsn < snapshot_.lsn || lsn > LastLsn()) return std::nullopt;
  return At(lsn).epoch;
}

void Replica::TruncateAfter(Lsn lsn) {
  lsn = std::max(lsn, snapshot_.lsn);
  if (lsn >= LastLsn()) return;
  log_.resize(lsn - snapshot_.lsn);
  durable_lsn_ = std::min(durable_lsn_, lsn);
  level_matched_ = std::min(level_matched_, lsn);
  // Only a protocol bug truncates a committed batch; keep the invariant commit <= last
  // so that the simulation's checker, not an assertion, reports it.
  commit_lsn_ = std::min(commit_lsn_, lsn);
  Emit(WalTruncate{lsn});
}

std::vector<Batch> Replica::Slice(Lsn after, Lsn upto) const {
  std::vector<Batch> out;
  after = std::max(after, snapshot_.lsn);
  upto = std::min(upto, LastLsn());
  for (Lsn l = after + 1; l <= upto; ++l) out.push_back(At(l));
  return out;
}

bool Replica::Adopt(Lsn from_lsn, Epoch from_epoch, std::vector<Batch>& batches, bool exact) {
  for (size_t i = 0; i < batches.size(); ++i) {
    if (batches[i].lsn != from_lsn + 1 + i) return false;  // malformed: not contiguous
  }
  if (from_lsn > LastLsn()) return false;
  // Below the snapshot everything is committed, hence common to every log.
  if (from_lsn >= snapshot_.lsn && EpochAt(from_lsn) != from_epoch) return false;
  const Lsn last = from_lsn + batches.size();
  // Stale: an exact Level never ends below what this replica knows is committed (every
  // live primary's log reaches the commit point; a delayed one may not, e.g. after pieces).
  if (exact && (last < snapshot_.lsn || last < commit_lsn_)) return false;
  std::vector<Batch> appended;
  for (Batch& b : batches) {
    if (b.lsn <= snapshot_.lsn) continue;
    if (b.lsn <= LastLsn()) {
      if (At(b.lsn).epoch == b.epoch) continue;  // (epoch, lsn) names one batch: same
      TruncateAfter(b.lsn - 1);                  // conflict: never committed, drop it
    }
    log_.push_back(b);
    appended.push_back(std::move(b));
  }
  if (exact) TruncateAfter(last);
  if (!appended.empty()) Emit(WalAppend{std::move(appended)});
  return true;
}

void Replica::TakeSnapshot(Snapshot& s) {
  if (s.lsn <= snapshot_.lsn) return;
  if (EpochAt(s.lsn) == s.epoch) {
    // The batches after s.lsn continue it: keep them.
    log_.erase(log_.begin(), log_.begin() + static_cast<ptrdiff_t>(s.lsn - snapshot_.lsn));
    snapshot_ = s;
    Emit(WalCompact{s});
  } else {
    log_.clear();
    snapshot_ = s;
    durable_lsn_ = s.lsn;
    level_matched_ = 0;  // a different history: nothing known to match any primary's
    Emit(WalInstallSnapshot{s});
  }
  durable_lsn_ = std::max(durable_lsn_, s.lsn);
  commit_lsn_ = std::max(commit_lsn_, s.lsn);
}

// ---- Dispatch ------------------------------------------------------------------------------

void Replica::OnReceive(NodeId from, Message& m) {
  if (from == opts_.self || !Known(from)) return;  // not a replica of this shard
  if (amnesiac_ && !record_known_ &&
      (std::holds_alternative<ShipBatch>(m) || std::holds_alternative<Level>(m) ||
       std::holds_alternative<InstallSnapshot>(m) || std::holds_alternative<Heartbeat>(m))) {
    // The promise this replica made before it lost its log is lost too: until etcd's record
    // (read after this start) gives it one back (OnRecord), a deposed primary could level
    // it and reach W through it. Dropped: the primary sends again.
    return;
  }
  std::visit(
      [this, from](auto& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, ShipBatch>) {
          OnShipBatch(from, msg);
        } else if constexpr (std::is_same_v<T, BatchAck>) {
          OnBatchAck(from, msg);
        } else if constexpr (std::is_same_v<T, Level>) {
          OnLevel(from, msg);
        } else if constexpr (std::is_same_v<T, PromiseRequest>) {
          OnPromiseRequest(from, msg);
        } else if constexpr (std::is_same_v<T, Promise>) {
          OnPromise(from, msg);
        } else if constexpr (std::is_same_v<T, FetchRequest>) {
          OnFetchRequest(from, msg);
        } else if constexpr (std::is_same_v<T, FetchReply>) {
          OnFetchReply(from, msg);
        } else if constexpr (std::is_same_v<T, InstallSnapshot>) {
          OnInstallSnapshot(from, msg);
        } else if constexpr (std::is_same_v<T, Heartbeat>) {
          OnHeartbeat(from, msg);
        }
      },
      m);
}

void Replica::SeeEpoch(Epoch e, bool primary_exists) {
  highest_seen_ = std::max(highest_seen_, e);
  if (role_ == Role::kPrimary && e > accepted_) {
    Depose("a later epoch exists");
  } else if (role_ == Role::kCandidate &&
             (e > cand_epoch_ || (primary_exists && e == cand_epoch_))) {
    AbandonCandidacy();
  }
}

void Replica::Persist() { Emit(PersistMeta{promised_, accepted_, amnesiac_}); }

bool Replica::Due(int64_t& last_ms, int64_t period_ms) {
  if (now_ < last_ms || now_ - last_ms >= period_ms) {  // a clock jumping back fires too
    last_ms = now_;
    return true;
  }
  return false;
}

// ---- Backup side ---------------------------------------------------------------------------

void Replica::SendAck(NodeId to, Epoch epoch, bool ok, bool report_match) {
  // A "level me" says how far this log is known to equal that primary's, so that the
  // Level (or its next piece) starts there rather than at the commit point: a follower's
  // whole log is a prefix of its primary's; a backup being levelled in pieces matches up to
  // the last piece it took. (Answers to Heartbeats and ShipBatches in the middle of a pieced
  // Level would otherwise send the primary back to the start of the uncommitted tail.)
  Lsn matched = 0;
  if (!ok && report_match && epoch == promised_) {
    if (log_epoch_ == epoch) {
      matched = LastLsn();
    } else if (level_epoch_ == epoch) {
      matched = std::min(level_matched_, LastLsn());
    }
  }
  SendTo(to, BatchAck{epoch, ok, ok ? durable_lsn_ : 0, promised_, commit_lsn_, matched});
}

bool Replica::FollowsPrimary(NodeId from, Epoch epoch) {
  if (epoch < promised_ && !opts_.mutations.skip_epoch_check) {
    Nack(from, epoch);  // fenced: carries promised_, which deposes the sender
    return false;
  }
  SeeEpoch(epoch, true);
  if (role_ == Role::kPrimary || role_ == Role::kCandidate) return false;
  if (log_epoch_ != epoch) {
    Nack(from, epoch);  // not levelled by this primary yet
    return false;
  }
  leader_ = from;
  return true;
}

void Replica::OnShipBatch(NodeId from, ShipBatch& m) {
  if (!FollowsPrimary(from, m.epoch)) return;
  Batch& b = m.batch;
  if (b.lsn <= LastLsn()) {
    if (b.lsn <= snapshot_.lsn || EpochAt(b.lsn) == b.epoch) {
      MaybeAcceptAndAck();  // a duplicate: tell the primary where we are
    } else {
      NackMismatch(from, m.epoch);
    }
    return;
  }
  if (b.lsn != LastLsn() + 1) {
    Nack(from, m.epoch);  // a gap (lost or reordered batches): ask to be levelled
    return;
  }
  log_.push_back(b);
  commit_lsn_ = std::max(commit_lsn_, std::min(m.commit_lsn, LastLsn()));
  Emit(WalAppend{{std::move(b)}});
}

void Replica::OnHeartbeat(NodeId from, const Heartbeat& m) {
  if (!FollowsPrimary(from, m.epoch)) return;
  commit_lsn_ = std::max(commit_lsn_, std::min(m.commit_lsn, LastLsn()));
  MaybeAcceptAndAck();
}

void Replica::OnLevel(NodeId from, Level& m) {
  if (m.epoch < promised_) {
    Nack(from, m.epoch);
    return;
  }
  SeeEpoch(m.epoch, true);
  if (role_ == Role::kPrimary || role_ == Role::kCandidate) return;
  if (m.epoch > promised_) {
    promised_ = m.epoch;  // a primary that won its CAS: an implicit promise
    Persist();
  }
  const Lsn piece_end = m.from_lsn + m.batches.size();
  if (m.last_lsn > piece_end) {
    // A piece of a Level too large for one message. Take its batches like a Level that
    // keeps what lies beyond (a conflict drops only what was never committed), but follow
    // nothing yet: the last piece is a whole Level. The answer says where the next piece
    // starts (the primary sends it within its Level pacing or retransmission timer).
    if (!Adopt(m.from_lsn, m.from_epoch, m.batches, /*exact=*/false)) {
      NackMismatch(from, m.epoch);
      return;
    }
    commit_lsn_ = std::max(commit_lsn_, std::min(m.commit_lsn, piece_end));
    level_epoch_ = m.epoch;
    level_matched_ = piece_end;
    Nack(from, m.epoch);
    return;
  }
  // A backup that already follows this primary keeps what lies beyond (later ShipBatches
  // may have overtaken this Level); any other makes its log exactly the primary's.
  const bool exact = log_epoch_ != m.epoch;
  if (!Adopt(m.from_lsn, m.from_epoch, m.batches, exact)) {
    NackMismatch(from, m.epoch);
    return;
  }
  // Follow this epoch once everything up to the primary's last lsn (as of this Level) is
  // durable here: that includes every batch committed before the epoch began. A piece
  // of a longer Level stops short of it.
  if (accepted_ != m.epoch) accept_at_ = LastLsn();
  log_epoch_ = m.epoch;
  level_epoch_ = m.epoch;
  level_matched_ = LastLsn();
  leader_ = from;
  role_ = Role::kBackup;
  commit_lsn_ = std::max(commit_lsn_, std::min(m.commit_lsn, LastLsn()));
  MaybeAcceptAndAck();
}

void Replica::OnInstallSnapshot(NodeId from, InstallSnapshot& m) {
  if (m.epoch < promised_) {
    Nack(from, m.epoch);
    return;
  }
  SeeEpoch(m.epoch, true);
  if (role_ == Role::kPrimary || role_ == Role::kCandidate) return;
  if (m.epoch > promised_) {
    promised_ = m.epoch;
    Persist();
  }
  Snapshot& s = m.snapshot;
  if (s.lsn <= commit_lsn_ || EpochAt(s.lsn) == s.epoch) {
    // I already hold this prefix: the primary levels me from here.
    commit_lsn_ = std::max(commit_lsn_, std::min(s.lsn, LastLsn()));
    Nack(from, m.epoch);
    return;
  }
  TakeSnapshot(s);  // replaces the whole log: s.lsn conflicts with it or lies beyond it
  // The log is now a prefix of this primary's, but only its committed part: accepting the
  // epoch waits for a Level (which carries the rest). Ask for it.
  log_epoch_ = m.epoch;
  accept_at_ = kNever;
  leader_ = from;
  role_ = Role::kBackup;
  Nack(from, m.epoch);
}

void Replica::MaybeAcceptAndAck() {
  if (role_ != Role::kBackup && role_ != Role::kDeposed) return;
  if (log_epoch_ == 0 || !leader_ || *leader_ == opts_.self) return;
  if (accepted_ != log_epoch_) {
    // Zab's rule: follow a new primary's epoch only once its whole log is durable here.
    if (log_epoch_ < promised_ || durable_lsn_ < accept_at_) return;
    accepted_ = log_epoch_;
    amnesiac_ = false;  // levelled by a primary: its log holds every committed batch now
    Persist();
  }
  // After promising a later epoch, acknowledge nothing older: that is what stops a
  // deposed primary from reaching W.
  if (promised_ != accepted_ && !opts_.mutations.skip_epoch_check) return;
  SendAck(*leader_, accepted_, true);
}

void Replica::OnWalSynced(const WalSynced& e) {
  durable_lsn_ = std::max(durable_lsn_, std::min(e.lsn, LastLsn()));
  switch (role_) {
    case Role::kPrimary:
      AdvanceCommit();
      MaybeSwitch();
      break;
    case Role::kCandidate: CandidateProgress(); break;
    default: MaybeAcceptAndAck();
  }
}

void Replica::OnCompact(CompactLog& e) {
  if (e.lsn <= snapshot_.lsn || e.lsn > commit_lsn_ || e.lsn > durable_lsn_) return;
  Snapshot s{e.lsn, At(e.lsn).epoch, At(e.lsn).hlc, std::move(e.state)};
  TakeSnapshot(s);
}

// ---- Primary side --------------------------------------------------------------------------

void Replica::OnClientAppend(ClientAppend& e) {
  if (role_ != Role::kPrimary) {
    Emit(Refuse{{e.request_id}, Unavailable("not the primary of this shard", 100)});
    return;
  }
  if (switch_epoch_ != 0 || freeze_since_ms_ != kNotFrozen) {
    // A move is switching the replica set: the log must not grow until it has.
    Emit(Refuse{{e.request_id}, Unavailable("moving a replica of this shard", 100)});
    return;
  }
  if (LastLsn() - commit_lsn_ >= opts_.max_inflight) {
    Emit(Refuse{{e.request_id}, Overloaded("replication backlog full", 100)});
    return;
  }
  if (e.hlc <= HlcHighWater()) {
    Emit(Refuse{{e.request_id}, Internal("hlc not above the shard's high-water mark")});
    return;
  }
  if (LastLsn() == commit_lsn_) progress_ms_ = now_;  // the first batch of a backlog
  Batch b{accepted_, LastLsn() + 1, e.hlc, std::move(e.payload)};
  log_.push_back(b);
  waiting_[b.lsn].push_back(e.request_id);
  for (const auto& [peer, p] : peers_) SendTo(peer, ShipBatch{accepted_, b, commit_lsn_});
  Emit(WalAppend{{std::move(b)}});
}

void Replica::OnAwaitCommit(const AwaitCommit& e) {
  if (role_ != Role::kPrimary) {
    Emit(Refuse{{e.request_id}, Unavailable("not the primary of this shard", 100)});
  } else if (e.lsn > LastLsn() || e.lsn == 0) {
    Emit(Refuse{{e.request_id}, Internal("no such lsn")});
  } else if (e.lsn <= commit_lsn_) {
    Emit(Acknowledge{accepted_, {e.request_id}});
  } else {
    waiting_[e.lsn].push_back(e.request_id);
  }
}

void Replica::OnBatchAck(NodeId from, const BatchAck& m) {
  highest_seen_ = std::max(highest_seen_, m.promised);
  if (role_ != Role::kPrimary) return;
  // Fencing is the backups' refusal (an ok never comes from a replica that promised a
  // later epoch); a refusal tells this primary it is deposed.
  if (!m.ok && m.promised > accepted_) {
    Depose("a replica promised a later epoch");
    return;
  }
  auto it = peers_.find(from);
  if (m.epoch != accepted_ || it == peers_.end()) return;
  Peer& p = it->second;
  p.last_heard_ms = now_;
  if (m.ok) {
    p.match = std::max(p.match, std::min(m.durable_lsn, LastLsn()));
    p.common = std::max(p.common, p.match);
    p.in_sync = true;
    AdvanceCommit();
    MaybeSwitch();
  } else {
    p.in_sync = false;
    // Its commit point is common to every log; what it reports matching, to mine.
    p.common = std::min(std::max(m.commit_lsn, m.matched_lsn), LastLsn());
    if (now_ < p.last_level_ms || now_ - p.last_level_ms >= opts_.retransmit_ms / 4) {
      SendLevel(from);
    }
  }
}

void Replica::SendLevel(NodeId peer) {
  Peer& p = peers_[peer];
  p.last_level_ms = now_;
  if (p.common < snapshot_.lsn) {
    // Too far behind for my log: rebuild it from the committed state.
    if (Due(p.last_rebuild_ms, opts_.rebuild_retry_ms)) {
      Emit(Rebuild{peer, accepted_, commit_lsn_, *EpochAt(commit_lsn_),
                   commit_lsn_ == snapshot_.lsn ? snapshot_.hlc : At(commit_lsn_).hlc});
    }
    return;
  }
  // At most max_level_bytes of batches (at least one): the rest follows in later pieces.
  Lsn upto = p.common;
  size_t bytes = 0;
  while (upto < LastLsn() &&
         (upto == p.common || bytes + At(upto + 1).payload.size() <= opts_.max_level_bytes)) {
    bytes += At(upto + 1).payload.size();
    ++upto;
  }
  SendTo(peer, Level{accepted_, p.common, *EpochAt(p.common), Slice(p.common, upto), commit_lsn_,
                     LastLsn()});
}

void Replica::AdvanceCommit() {
  if (role_ != Role::kPrimary) return;
  std::vector<Lsn> copies{std::min(durable_lsn_, LastLsn())};
  for (const auto& [peer, p] : peers_) {
    if (!p.learner) copies.push_back(std::min(p.match, LastLsn()));  // learners do not count
  }
  if (copies.size() < opts_.write_quorum) return;
  std::sort(copies.begin(), copies.end(), std::greater<>());
  const size_t w = opts_.mutations.ack_at_w1 ? 1 : opts_.write_quorum;
  const Lsn c = copies[w - 1];
  if (c <= commit_lsn_) return;
  Emit(Commit{accepted_, commit_lsn_ + 1, c});
  commit_lsn_ = c;
  progress_ms_ = now_;
  Acknowledge ack{accepted_, {}};
  while (!waiting_.empty() && waiting_.begin()->first <= c) {
    auto& ids = waiting_.begin()->second;
    ack.request_ids.insert(ack.request_ids.end(), ids.begin(), ids.end());
    waiting_.erase(waiting_.begin());
  }
  if (!ack.request_ids.empty()) Emit(std::move(ack));
}

void Replica::Depose(const char* /*why*/) {
  const Epoch mine = accepted_;
  role_ = Role::kDeposed;
  // A switch in flight may still win in etcd: its answer (or the watch) then shows an epoch
  // won by a replica that no longer runs for it, whose lease is revoked (OnTxnResult,
  // OnRecord). Nothing was appended after it was sent.
  switch_epoch_ = 0;
  freeze_since_ms_ = kNotFrozen;
  leader_.reset();
  peers_.clear();
  lapse_seen_ms_.reset();
  Refuse refuse{{}, Unavailable("primary deposed", 100)};
  for (auto& [lsn, ids] : waiting_) {
    refuse.request_ids.insert(refuse.request_ids.end(), ids.begin(), ids.end());
  }
  waiting_.clear();
  if (!refuse.request_ids.empty()) Emit(std::move(refuse));
  Emit(EtcdRevoke{mine});  // let the failover start now rather than at lease expiry
}

void Replica::BecomePrimary() {
  role_ = Role::kPrimary;
  accepted_ = cand_epoch_;
  log_epoch_ = accepted_;
  leader_ = opts_.self;
  Persist();
  peers_.clear();
  switch_epoch_ = 0;
  freeze_since_ms_ = kNotFrozen;
  for (NodeId n : Members()) {
    if (n == opts_.self) continue;
    Peer p;
    auto it = promises_.find(n);
    // A committed point is common to every log; my snapshot is committed.
    p.common = it != promises_.end() ? std::min(it->second.commit, LastLsn()) : snapshot_.lsn;
    peers_[n] = p;
  }
  promises_.clear();
  lapse_seen_ms_.reset();
  last_keepalive_ms_ = now_;
  progress_ms_ = now_;
  for (auto& [n, p] : peers_) p.last_heard_ms = now_;
  for (auto& [n, p] : peers_) SendLevel(n);
  AdvanceCommit();
  FollowTarget();
}

// ---- Moving a replica (primary side) ------------------------------------------------------

void Replica::FollowTarget() {
  if (role_ != Role::kPrimary || !record_known_ || record_.epoch != accepted_) return;
  const std::vector<NodeId>& target = record_.target;
  for (auto it = peers_.begin(); it != peers_.end();) {
    it = it->second.learner && !Contains(target, it->first) ? peers_.erase(it) : std::next(it);
  }
  for (NodeId n : target) {
    if (n == opts_.self || peers_.count(n) != 0) continue;
    Peer p;
    p.learner = true;
    p.common = snapshot_.lsn;  // nothing known of its log: a Level from there, or a rebuild
    p.last_heard_ms = now_;
    peers_[n] = p;
    SendLevel(n);
  }
  MaybeSwitch();
}

void Replica::MaybeSwitch() {
  if (role_ != Role::kPrimary || switch_epoch_ != 0) return;
  if (record_.target.empty() || record_.epoch != accepted_ || !record_.lease_live ||
      record_.primary != opts_.self) {
    freeze_since_ms_ = kNotFrozen;
    return;
  }
  bool learners = false;
  bool synced = true;     // every learner follows my log (acked ok in my epoch), lately
  bool caught_up = true;  // ... and holds all of it durably
  for (const auto& [n, p] : peers_) {
    if (!p.learner) continue;
    learners = true;
    // (A learner gone silent would otherwise stay "in sync" and freeze appends again and
    // again: it is sent Heartbeats while a move waits, OnTick.)
    synced = synced && p.in_sync && now_ >= p.last_heard_ms &&
             now_ - p.last_heard_ms < opts_.candidate_timeout_ms;
    caught_up = caught_up && p.match >= LastLsn();
  }
  // (A target that adds no node is not a move this machine makes: the controller never
  // writes one, docs/replication.md.)
  if (!learners) return;
  if (!synced || now_ < freeze_backoff_until_ms_) return;
  // Stop the log from growing, so that the learners and the commit point reach its end.
  if (freeze_since_ms_ == kNotFrozen) freeze_since_ms_ = now_;
  // Everything committed, and durable here too: a commit may have counted two backups'
  // copies before this one, and after the switch this log (epoch e + 1) wins elections.
  const bool at_end = caught_up && commit_lsn_ >= LastLsn() && durable_lsn_ >= LastLsn();
  if (!at_end && !opts_.mutations.switch_unsynced) return;
  // Each attempt has an epoch of its own, so that the answer to an earlier one (refused, as
  // its record is gone) is never taken for this one's.
  switch_epoch_ = std::max({promised_, accepted_, highest_seen_, record_.epoch}) + 1;
  highest_seen_ = switch_epoch_;
  switch_replicas_ = record_.target;
  switch_revision_ = record_.revision;
  switch_sent_ms_ = now_;
  Emit(EtcdSwitch{switch_revision_, accepted_, switch_epoch_, switch_replicas_});
}

bool Replica::SwitchWon(const ShardRecord& r) const {
  if (r.epoch != switch_epoch_ || r.replicas != switch_replicas_) return false;
  return Contains(switch_replicas_, opts_.self) ? r.primary == opts_.self && r.lease_live
                                                : !r.lease_live;
}

void Replica::CompleteSwitch(const ShardRecord& r) {
  const Epoch e = switch_epoch_;
  switch_epoch_ = 0;
  freeze_since_ms_ = kNotFrozen;
  if (r.revision >= record_.revision) {
    record_ = r;
    record_known_ = true;
  }
  if (!Contains(switch_replicas_, opts_.self)) {
    // The move took this primary out (its lease went with the switch): the new replicas
    // elect one of them. Every append it took is committed and acknowledged.
    role_ = Role::kDeposed;
    leader_.reset();
    peers_.clear();
    lapse_seen_ms_.reset();
    return;
  }
  accepted_ = e;
  promised_ = std::max(promised_, e);
  log_epoch_ = e;
  highest_seen_ = std::max(highest_seen_, e);
  Persist();
  // The replicas of the new epoch: the learners become members, the node moved out is
  // dropped. Each is levelled into the new epoch from what it is known to hold (my log did
  // not change: the switch waited for its end to commit).
  std::map<NodeId, Peer> next;
  for (NodeId n : switch_replicas_) {
    if (n == opts_.self) continue;
    auto it = peers_.find(n);
    Peer p = it != peers_.end() ? it->second : Peer{};
    p.learner = false;
    p.in_sync = false;
    p.common = std::max(p.common, std::min(p.match, LastLsn()));
    p.last_heard_ms = now_;
    p.last_level_ms = INT64_MIN / 2;
    next[n] = p;
  }
  peers_ = std::move(next);
  progress_ms_ = now_;
  for (auto& [n, p] : peers_) SendLevel(n);
  FollowTarget();
}

// ---- Candidate side ------------------------------------------------------------------------

size_t Replica::PromiseQuorum() const {
  if (opts_.mutations.elect_without_majority) return 1;
  return Members().size() - opts_.write_quorum + 1;
}

size_t Replica::Rank() const {
  const std::vector<NodeId>& members = Members();
  const size_t n = members.size();
  auto idx = [&](NodeId id) -> size_t {
    auto it = std::find(members.begin(), members.end(), id);
    return it == members.end() ? n - 1 : static_cast<size_t>(it - members.begin());
  };
  return (idx(opts_.self) + n - idx(record_.primary) - 1) % n;
}

void Replica::MaybeStartCandidacy() {
  if (role_ != Role::kBackup && role_ != Role::kDeposed) return;
  if (amnesiac_) return;  // waits to be levelled
  // Only a replica of the record's epoch runs (a node a move took out, or the learner of
  // one, is not). One that the wanted replica set leaves out still does: it may hold the
  // only complete log, and as primary it carries the move out (taking itself out).
  if (!Contains(Members(), opts_.self)) {
    lapse_seen_ms_.reset();
    return;
  }
  if (!record_known_ || record_.lease_live || !have_time_) {
    lapse_seen_ms_.reset();
    return;
  }
  if (!lapse_seen_ms_ || now_ < *lapse_seen_ms_) lapse_seen_ms_ = now_;
  const int64_t wait =
      opts_.failover_delay_ms + static_cast<int64_t>(Rank()) * opts_.failover_stagger_ms;
  if (now_ - *lapse_seen_ms_ >= wait) StartCandidacy();
}

void Replica::StartCandidacy() {
  role_ = Role::kCandidate;
  cand_epoch_ = std::max({promised_, accepted_, record_.epoch, highest_seen_}) + 1;
  cand_expected_ = record_.epoch;
  promised_ = cand_epoch_;
  highest_seen_ = cand_epoch_;
  Persist();
  cand_started_ms_ = now_;
  cand_last_send_ms_ = now_;
  promises_.clear();
  best_.reset();
  fetched_ = false;
  fetch_target_ = 0;
  cas_sent_ = false;
  for (NodeId n : Members()) {
    if (n != opts_.self) SendTo(n, PromiseRequest{cand_epoch_});
  }
  CandidateProgress();
}

void Replica::AbandonCandidacy() {
  role_ = Role::kBackup;
  promises_.clear();
  best_.reset();
  fetched_ = false;
  cas_sent_ = false;
  lapse_seen_ms_ = now_;  // back off: wait the failover delay again before a new attempt
}

void Replica::OnPromiseRequest(NodeId from, const PromiseRequest& m) {
  if (m.epoch < promised_ || amnesiac_) {
    // (An amnesiac replica's log may lack what it acknowledged: it does not vote.)
    SendTo(from, Promise{m.epoch, false, promised_, accepted_, durable_lsn_, commit_lsn_});
    return;
  }
  SeeEpoch(m.epoch, false);
  if (m.epoch > promised_) {
    promised_ = m.epoch;
    Persist();  // durable before the answer leaves (effects run in order)
  }
  // The durable position: what this replica can have acknowledged in any older epoch.
  SendTo(from, Promise{m.epoch, true, promised_, accepted_, durable_lsn_, commit_lsn_});
}

void Replica::OnPromise(NodeId from, const Promise& m) {
  highest_seen_ = std::max(highest_seen_, m.promised);
  if (role_ != Role::kCandidate || m.epoch != cand_epoch_) return;
  if (!m.granted) {
    if (m.promised > cand_epoch_) AbandonCandidacy();
    return;
  }
  if (best_) return;  // decided already
  promises_[from] = Position{m.accepted, m.durable_lsn, m.commit_lsn};
  CandidateProgress();
}

void Replica::CandidateProgress() {
  if (role_ != Role::kCandidate) return;
  if (!best_) {
    promises_[opts_.self] = Position{accepted_, durable_lsn_, commit_lsn_};
    if (promises_.size() < PromiseQuorum()) return;
    // The highest (accepted epoch, durable lsn) among the promises holds every committed
    // batch; ties go to self (no fetch).
    NodeId best = opts_.self;
    for (const auto& [n, pos] : promises_) {
      const auto& b = promises_[best];
      if (std::tie(pos.accepted, pos.lsn) > std::tie(b.accepted, b.lsn)) best = n;
    }
    best_ = best;
    if (best == opts_.self) {
      fetched_ = true;
      fetch_target_ = durable_lsn_;
    } else {
      SendTo(best, FetchRequest{cand_epoch_, commit_lsn_, *EpochAt(commit_lsn_)});
    }
  }
  if (fetched_ && durable_lsn_ >= fetch_target_ && !cas_sent_) {
    cas_sent_ = true;
    Emit(EtcdCas{cand_expected_, cand_epoch_, opts_.self});
  }
}

void Replica::OnFetchRequest(NodeId from, const FetchRequest& m) {
  if (m.epoch != promised_ || role_ == Role::kPrimary) return;
  FetchReply rep;
  rep.epoch = m.epoch;
  if (m.from_lsn < snapshot_.lsn) {
    if (opts_.fetch_snapshots) {  // else !ok: the candidate gives up (Options::fetch_snapshots)
      rep.ok = true;
      rep.snapshot = snapshot_;
      rep.from_lsn = snapshot_.lsn;
      rep.from_epoch = snapshot_.epoch;
    }
  } else if (EpochAt(m.from_lsn) == m.from_epoch) {
    rep.ok = true;
    rep.from_lsn = m.from_lsn;
    rep.from_epoch = m.from_epoch;
  }
  if (rep.ok) rep.batches = Slice(rep.from_lsn, durable_lsn_);
  SendTo(from, std::move(rep));
}

void Replica::OnFetchReply(NodeId from, FetchReply& m) {
  if (role_ != Role::kCandidate || m.epoch != cand_epoch_ || !best_ || *best_ != from || fetched_) {
    return;
  }
  if (!m.ok) {
    AbandonCandidacy();
    return;
  }
  if (m.snapshot) TakeSnapshot(*m.snapshot);
  if (!Adopt(m.from_lsn, m.from_epoch, m.batches, /*exact=*/true)) {
    AbandonCandidacy();
    return;
  }
  fetched_ = true;
  fetch_target_ = LastLsn();
  CandidateProgress();
}

void Replica::OnTxnResult(const EtcdTxnResult& e) {
  if (role_ == Role::kPrimary && switch_epoch_ != 0 && e.new_epoch == switch_epoch_) {
    const ShardRecord& c = e.current;
    if (e.succeeded || SwitchWon(c)) {
      CompleteSwitch(c);  // (a resent copy fails once the first one won)
      return;
    }
    // Refused: the record is no longer the one the switch compared against, and revisions
    // only grow, so no copy of this attempt still in flight can win (a later attempt has an
    // epoch of its own). Appends resume, unless the record deposes this primary or a new
    // attempt freezes them again at once.
    switch_epoch_ = 0;
    freeze_since_ms_ = kNotFrozen;
    OnRecord(c);
    MaybeSwitch();
    return;
  }
  if (role_ == Role::kCandidate && cas_sent_ && e.new_epoch == cand_epoch_) {
    if (e.succeeded) {
      if (e.current.revision >= record_.revision) {
        record_ = e.current;
        record_known_ = true;
      }
      BecomePrimary();
      return;
    }
    AbandonCandidacy();
  } else if (e.succeeded && !(role_ == Role::kPrimary && accepted_ == e.new_epoch)) {
    Emit(EtcdRevoke{e.new_epoch});  // won an epoch this replica no longer runs for
  }
  OnRecord(e.current);
}

void Replica::OnRecord(const ShardRecord& r) {
  if (record_known_ && r.revision < record_.revision) return;
  record_ = r;
  record_known_ = true;
  highest_seen_ = std::max(highest_seen_, r.epoch);
  if (amnesiac_ && r.epoch > promised_) {
    // What this replica may have promised before it lost its log is at most the last epoch
    // won in etcd: promising that again fences every older primary.
    promised_ = r.epoch;
    Persist();
  }
  switch (role_) {
    case Role::kPrimary:
      if (switch_epoch_ != 0 && SwitchWon(r)) {
        CompleteSwitch(r);  // the watch overtook the switch's answer
      } else if (r.epoch > accepted_ || (r.epoch == accepted_ && !r.lease_live)) {
        Depose("the shard record moved on");
      } else {
        FollowTarget();
      }
      return;
    case Role::kCandidate:
      if (cas_sent_ && r.epoch == cand_epoch_ && r.primary == opts_.self) {
        BecomePrimary();  // the watch overtook the transaction's answer
      } else if (r.epoch != cand_expected_ || r.lease_live) {
        AbandonCandidacy();
      }
      return;
    default:
      // A lease in my name that no live primary of mine holds (a restart): end it.
      if (r.primary == opts_.self && r.lease_live && r.epoch != 0) Emit(EtcdRevoke{r.epoch});
      // The failover delay counts from when the lapse is first known (the last tick).
      if (r.lease_live)
        lapse_seen_ms_.reset();
      else if (!lapse_seen_ms_ && have_time_)
        lapse_seen_ms_ = now_;
      return;
  }
}

bool Replica::StallDepose() {
  if (opts_.stall_depose_ms <= 0 || Members().size() < 2) return false;
  if (now_ < progress_ms_) progress_ms_ = now_;  // the clock stepped back
  // "Nothing committed" counts only while W - 1 backups are in sync: a backup being
  // levelled or rebuilt cannot hold new batches yet, and stepping down would start its copy
  // over in a new epoch (with the other backup down, forever). Such a backup answers the
  // Heartbeats and Levels, so the rule below still covers it being cut off.
  // (A backup that went silent while in sync is not counted: with the other one being
  // levelled, the rule would otherwise fire and start that copy over.)
  size_t in_sync = 0;
  for (const auto& [n, p] : peers_) {
    if (p.learner) continue;
    in_sync += p.in_sync && now_ - p.last_heard_ms < opts_.stall_depose_ms ? 1 : 0;
  }
  if (in_sync + 1 < opts_.write_quorum) progress_ms_ = now_;
  if (LastLsn() > commit_lsn_ && now_ - progress_ms_ >= opts_.stall_depose_ms) {
    Depose("no commit within stall_depose_ms");
    return true;
  }
  size_t heard = 0;
  for (auto& [n, p] : peers_) {
    if (now_ < p.last_heard_ms) p.last_heard_ms = now_;
    if (!p.learner && now_ - p.last_heard_ms < opts_.stall_depose_ms) ++heard;
  }
  if (heard + 1 < opts_.write_quorum) {
    Depose("no backup heard within stall_depose_ms");
    return true;
  }
  return false;
}

void Replica::OnTick(const Tick& e) {
  now_ = e.now_ms;
  have_time_ = true;
  switch (role_) {
    case Role::kPrimary:
      if (StallDepose()) break;
      if (Due(last_keepalive_ms_, opts_.keepalive_ms)) Emit(EtcdKeepAlive{accepted_});
      if (Due(last_heartbeat_ms_, opts_.keepalive_ms)) {
        // Every peer when stall_depose_ms is on; else only the learners of a move, whose
        // answers show they are still there (MaybeSwitch).
        for (const auto& [n, p] : peers_) {
          if (opts_.stall_depose_ms > 0 || p.learner) {
            SendTo(n, Heartbeat{accepted_, commit_lsn_});
          }
        }
      }
      for (auto& [n, p] : peers_) {
        if ((!p.in_sync || p.match < LastLsn()) && Due(p.last_level_ms, opts_.retransmit_ms)) {
          SendLevel(n);
        }
      }
      if (switch_epoch_ != 0) {
        if (Due(switch_sent_ms_, opts_.candidate_timeout_ms)) {  // the answer may be lost
          Emit(EtcdSwitch{switch_revision_, accepted_, switch_epoch_, switch_replicas_});
        }
      } else if (freeze_since_ms_ != kNotFrozen &&
                 (now_ < freeze_since_ms_ ||
                  now_ - freeze_since_ms_ >= opts_.candidate_timeout_ms)) {
        // The learners did not reach the end of the log in time: take appends again for a
        // while before the next attempt.
        freeze_since_ms_ = kNotFrozen;
        freeze_backoff_until_ms_ = now_ + opts_.candidate_timeout_ms;
      } else {
        MaybeSwitch();
      }
      break;
    case Role::kCandidate:
      if (now_ < cand_started_ms_) cand_started_ms_ = now_;
      if (now_ - cand_started_ms_ >= opts_.candidate_timeout_ms) {
        AbandonCandidacy();
        break;
      }
      if (Due(cand_last_send_ms_, opts_.retransmit_ms)) {
        if (!best_) {
          for (NodeId n : Members()) {
            if (n != opts_.self && !promises_.count(n)) SendTo(n, PromiseRequest{cand_epoch_});
          }
        } else if (!fetched_) {
          SendTo(*best_, FetchRequest{cand_epoch_, commit_lsn_, *EpochAt(commit_lsn_)});
        }
      }
      break;
    default: MaybeStartCandidacy(); MaybeAskToBeLevelled();
  }
}

void Replica::MaybeAskToBeLevelled() {
  if (role_ != Role::kBackup && role_ != Role::kDeposed) return;
  if (removed()) return;
  if (!record_known_ || !record_.lease_live || record_.primary == 0 ||
      record_.primary == opts_.self) {
    return;
  }
  if (record_.epoch < promised_ || log_epoch_ == record_.epoch) return;
  if (!Due(last_level_ask_ms_, opts_.retransmit_ms)) return;
  SendAck(record_.primary, record_.epoch, false);  // "level me"
}

}  // namespace iris::cluster::repl
