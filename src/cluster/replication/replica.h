#pragma once
// Replica: the replication protocol of one shard on one node, as a pure state machine
// (CLUSTER.md section 5; docs/replication.md). Primary-backup log shipping with
// (epoch, lsn) fencing, in the Vertical Paxos II / PacificA / Zab family; the only
// consensus decision is the etcd compare-and-swap of the shard's epoch.
//
// Pure: no I/O, no threads, no clock reads, no randomness. Every input is an Event passed
// to Step(); every output is an Effect returned by it, which the caller carries out IN
// ORDER before the next Step() of this replica. Time arrives only inside Tick events and
// is only used for timers (retransmission, failover delay), never for safety.
//
//                 lease lapsed (watch) + delay        2 of 3 promises, highest log held,
//   kBackup ------------------------------------> kCandidate ---- etcd CAS epoch e -> e' -->
//   kPrimary
//      ^  ^                                         |  timeout / CAS lost / higher epoch seen   |
//      |  +-----------------------------------------+                                           |
//      |        Level / ShipBatch of a higher epoch       higher epoch seen, lease lapsed,      |
//      +------------------------------------------- kDeposed <------ promise to a successor ---+
//
// Durable state (survives a crash; a restart is a new Replica built from it):
//   promised  the highest epoch this replica promised; it refuses anything older.
//   accepted  the epoch whose primary's log this replica's durable log follows. Set only
//             once the log a primary levelled it to is durable (Zab's currentEpoch).
//   the WAL   snapshot (a compacted committed prefix) + batches, of which the synced prefix
//             survives a crash (the caller reports it with WalSynced).
// Elections compare (accepted, durable lsn): see docs/replication.md for why every
// committed batch is in the log of every later primary.
//
// Moving a replica (CLUSTER.md section 6; docs/replication.md "Moving a replica"): the
// shard record names the replicas of its epoch and, while a move is wanted, a target
// replica set that differs from them in one node. The primary ships its log to the target's
// new node as a learner (not counted for W) until it holds the whole log, then stops taking
// appends, lets what it has commit, and switches in one etcd transaction: epoch e -> e + 1,
// replicas = target, compared against the record it saw the target in; it stays primary
// (same lease) unless the move takes it out, in which case the new replicas elect one. Every
// batch committed before the switch is then on the learner and on one of the other
// replicas, so every two of the new replicas hold it; the node left out no longer runs for
// election (only members of the record's replica set do) and is torn down by its host
// (removed()).
//
// Thread-safety: none; one owner calls Step() and carries out the effects.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/status.h"

namespace iris::cluster::repl {

using NodeId = uint32_t;
using ShardNo = uint32_t;  // a shard (placement.h's ShardId)
using Epoch = uint64_t;
using Lsn = uint64_t;

// One shard batch (a group commit's worth of records). `epoch` is the epoch of the primary
// that created it: (epoch, lsn) names a batch uniquely, in every log that holds it.
// `payload` (records + dedup entries) and `hlc` (the batch's HLC high-water mark) are
// opaque: they travel unchanged from the primary to every replica.
struct Batch {
  Epoch epoch = 0;
  Lsn lsn = 0;
  uint64_t hlc = 0;
  std::string payload;
  friend bool operator==(const Batch&, const Batch&) = default;
};

// A committed prefix of the log compacted into the store's state: `state` holds batches
// 1..lsn applied (opaque), `epoch`/`hlc` are those of batch `lsn`. lsn 0 = empty.
struct Snapshot {
  Lsn lsn = 0;
  Epoch epoch = 0;
  uint64_t hlc = 0;
  std::string state;
};

// What etcd says about the shard (`shards/<s>` + `leaders/<s>`). `revision` orders records
// (etcd's mod revision); a replica ignores a record older than one it has seen.
struct ShardRecord {
  uint64_t revision = 0;
  Epoch epoch = 0;
  NodeId primary = 0;
  bool lease_live = false;  // leaders/<s> exists (the primary's lease has not lapsed)
  // The replicas of `epoch` (empty: Options::replicas, which never change), and the replica
  // set a move wants (empty: none; else it differs from `replicas` in one node).
  std::vector<NodeId> replicas;
  std::vector<NodeId> target;
};

// ---- Messages between replicas of one shard -------------------------------------------
// Any message may be lost, duplicated, delayed or reordered; every handler tolerates that.

// Primary -> backup: one new batch. `commit_lsn`: the primary's commit point.
struct ShipBatch {
  Epoch epoch = 0;
  Batch batch;
  Lsn commit_lsn = 0;
};
// Backup -> primary. ok: the backup durably holds the primary's log of `epoch` up to
// durable_lsn. !ok: it cannot take the primary's batches as they come; the primary levels
// it from commit_lsn (a point every log shares) or, if promised > epoch, it is fenced.
struct BatchAck {
  Epoch epoch = 0;
  bool ok = false;
  Lsn durable_lsn = 0;
  Epoch promised = 0;
  Lsn commit_lsn = 0;
  // !ok ("level me"): the backup's log is known to equal the primary's up to here (0:
  // nothing known beyond commit_lsn), e.g. after a piece of a Level (see Level::last_lsn);
  // the next Level or piece starts there.
  Lsn matched_lsn = 0;
};
// Primary -> backup: make your log exactly mine (as of sending): keep the common prefix up
// to from_lsn (whose batch has epoch from_epoch), replace whatever conflicts, add what is
// missing, drop what I do not have. A backup that cannot match from_lsn answers !ok.
struct Level {
  Epoch epoch = 0;
  Lsn from_lsn = 0;
  Epoch from_epoch = 0;
  std::vector<Batch> batches;  // from_lsn + 1 ... (up to last_lsn, or a first piece of it)
  Lsn commit_lsn = 0;
  // The primary's last lsn as of sending. When the batches stop short of it, this is one
  // piece of a Level larger than Options::max_level_bytes: the backup takes the batches
  // without following the epoch and answers BatchAck{!ok, matched_lsn = the piece's end};
  // only the last piece, which reaches last_lsn, is a Level as described above.
  Lsn last_lsn = 0;
};
// Candidate -> replicas: promise to refuse everything older than `epoch`.
struct PromiseRequest {
  Epoch epoch = 0;
};
// Replica -> candidate. granted: promised, and reports its durable position.
struct Promise {
  Epoch epoch = 0;
  bool granted = false;
  Epoch promised = 0;
  Epoch accepted = 0;
  Lsn durable_lsn = 0;
  Lsn commit_lsn = 0;
};
// Candidate -> the replica with the highest position: send me your log after from_lsn.
struct FetchRequest {
  Epoch epoch = 0;
  Lsn from_lsn = 0;
  Epoch from_epoch = 0;
};
struct FetchReply {
  Epoch epoch = 0;
  bool ok = false;  // false: from_lsn did not match (the candidate gives up this attempt)
  std::optional<Snapshot> snapshot;  // when from_lsn is older than the sender's snapshot
  Lsn from_lsn = 0;
  Epoch from_epoch = 0;
  std::vector<Batch> batches;
};
// The result of a rebuild (state transfer of the primary's committed state, started by a
// Rebuild effect): the receiver replaces what it holds up to snapshot.lsn.
struct InstallSnapshot {
  Epoch epoch = 0;
  Snapshot snapshot;
};
// Primary -> backup, every keepalive period: "I am your primary in `epoch`". Answered like a
// ShipBatch with nothing new (BatchAck ok with the backup's durable lsn, or !ok: level me,
// or fenced). A primary hears from its backups this way even when no batch flows
// (Options::stall_depose_ms).
struct Heartbeat {
  Epoch epoch = 0;
  Lsn commit_lsn = 0;
};
using Message = std::variant<ShipBatch, BatchAck, Level, PromiseRequest, Promise, FetchRequest,
                             FetchReply, InstallSnapshot, Heartbeat>;

// ---- Events (inputs) -------------------------------------------------------------------

// A client append at the primary. `hlc` must exceed HlcHighWater(). Answered by an
// Acknowledge or a Refuse effect carrying request_id.
struct ClientAppend {
  uint64_t request_id = 0;
  std::string payload;
  uint64_t hlc = 0;
};
// A retried append whose idempotency key the caller found in the log at `lsn`: acknowledge
// request_id once lsn is committed (at once if it is).
struct AwaitCommit {
  uint64_t request_id = 0;
  Lsn lsn = 0;
};
struct Receive {
  NodeId from = 0;
  Message message;
};
// Every batch up to lsn is durable in the local WAL (after the WalAppend effects so far).
struct WalSynced {
  Lsn lsn = 0;
};
// The node's clock (ms); may jump either way.
struct Tick {
  int64_t now_ms = 0;
};
// The answer to an EtcdCas effect for new_epoch.
struct EtcdTxnResult {
  Epoch new_epoch = 0;
  bool succeeded = false;
  ShardRecord current;
};
// A watch event (or the initial read) of the shard record.
struct EtcdWatch {
  ShardRecord record;
};
// The primary's lease of `epoch` is gone (a keep-alive found it expired).
struct LeaseLapsed {
  Epoch epoch = 0;
};
// The store compacted batches up to lsn into `state` (lsn <= CommitLsn(), <= DurableLsn()).
struct CompactLog {
  Lsn lsn = 0;
  std::string state;
};
using Event = std::variant<ClientAppend, AwaitCommit, Receive, WalSynced, Tick, EtcdTxnResult,
                           EtcdWatch, LeaseLapsed, CompactLog>;

// ---- Effects (outputs), carried out in order ------------------------------------------

struct Send {
  NodeId to = 0;
  Message message;
};
// Append to the local WAL and sync; report completion with WalSynced.
struct WalAppend {
  std::vector<Batch> batches;
};
// Durably drop every batch after after_lsn, before any later effect.
struct WalTruncate {
  Lsn after_lsn = 0;
};
// Durably replace batches up to snapshot.lsn by the snapshot (later batches stay).
struct WalCompact {
  Snapshot snapshot;
};
// Durably replace the whole log by the snapshot.
struct WalInstallSnapshot {
  Snapshot snapshot;
};
// Durably store promised/accepted (and the amnesiac mark) before any later effect.
struct PersistMeta {
  Epoch promised = 0;
  Epoch accepted = 0;
  bool amnesiac = false;
};
// etcd transaction: if shards/<s>.epoch == expected and leaders/<s> is absent, then set
// epoch = new_epoch, primary = self and create leaders/<s> under a new lease (TTL).
// Answered by EtcdTxnResult.
struct EtcdCas {
  Epoch expected_epoch = 0;
  Epoch new_epoch = 0;
  NodeId primary = 0;
};
// A move's switch: if the shard record is still the one of `revision` (its epoch is
// expected_epoch, its lease live and this node's), then set epoch = new_epoch, replicas =
// `replicas` and no target; if this node is among `replicas` it stays primary with its
// lease (leaders/<s> says new_epoch), else leaders/<s> is deleted and its lease revoked (the
// new replicas elect a primary). Answered by EtcdTxnResult{new_epoch}. The caller may
// receive it more than once (resent until answered): the revision makes every copy after
// the first fail.
struct EtcdSwitch {
  uint64_t revision = 0;
  Epoch expected_epoch = 0;
  Epoch new_epoch = 0;
  std::vector<NodeId> replicas;
};
// Keep the lease of `epoch` alive; if it is gone the caller reports LeaseLapsed.
struct EtcdKeepAlive {
  Epoch epoch = 0;
};
// Revoke the lease of `epoch` (no-op if another epoch's lease is current).
struct EtcdRevoke {
  Epoch epoch = 0;
};
// Batches first_lsn..last_lsn committed (W durable copies), in lsn order: push and deliver
// them. Emitted by the primary only, each lsn at most once per Replica instance.
struct Commit {
  Epoch epoch = 0;
  Lsn first_lsn = 0;
  Lsn last_lsn = 0;
};
// Acknowledge these appends to their clients (SEND_ACK): their batches are committed.
// Emitted only by the primary of `epoch`, right after the Commit that covers them (or at
// once for an AwaitCommit of a committed lsn).
struct Acknowledge {
  Epoch epoch = 0;
  std::vector<uint64_t> request_ids;
};
// These requests were not (or may not have been) acknowledged: answer `status` (retryable
// kUnavailable / kOverloaded, or kInternal for a caller bug such as a stale hlc).
struct Refuse {
  std::vector<uint64_t> request_ids;
  Status status;
};
// `peer` is too far behind (its common point is older than this log's snapshot): copy it
// the committed state up to `lsn` (batch epoch `epoch`, hlc `hlc`) and deliver it as an
// InstallSnapshot of `primary_epoch` from this node.
struct Rebuild {
  NodeId peer = 0;
  Epoch primary_epoch = 0;
  Lsn lsn = 0;
  Epoch epoch = 0;
  uint64_t hlc = 0;
};
using Effect =
    std::variant<Send, WalAppend, WalTruncate, WalCompact, WalInstallSnapshot, PersistMeta, EtcdCas,
                 EtcdSwitch, EtcdKeepAlive, EtcdRevoke, Commit, Acknowledge, Refuse, Rebuild>;

// What survives a crash: the caller rebuilds a Replica from exactly this.
struct DurableState {
  Epoch promised = 0;
  Epoch accepted = 0;
  Snapshot snapshot;
  std::vector<Batch> batches;  // snapshot.lsn + 1, ... (contiguous), all synced
  // An amnesiac replica lost (or never had) the log of a shard that already had a primary:
  // a data directory wiped and restarted, or a replica new to a running shard. It may hold
  // less than what it acknowledged before, so it grants no promise and stands for no
  // election until a primary has levelled it (it then follows that primary's epoch, whose
  // log holds every committed batch); it takes batches, Levels and rebuilds as any backup.
  // Otherwise an election with its empty log and one backup that lacks the last
  // acknowledged batch (whose other copy is on the dead primary) would lose that batch. It
  // also lost the promise it made: until the first shard record it sees after its start
  // (etcd, read afterwards) it takes nothing from a primary, and then promises that
  // record's epoch, which fences every older primary. The caller sets it when it starts a
  // replica with no durable state for a shard that has had a primary (etcd's record says
  // so, or the node's store holds data of the shard, or the node set lost data aside); the
  // replica persists it (PersistMeta, with its first promise) until it is cleared.
  bool amnesiac = false;
  // An lsn known to be committed beyond the snapshot (0: none): irisd's store applied it,
  // and a store applies only committed batches. The replica starts with its commit point
  // there (at most its last lsn) instead of at its snapshot, so that after a restart it
  // asks to be levelled from there rather than from its snapshot: a primary whose log
  // starts later would otherwise order a rebuild, whose chunks this replica refuses when
  // its store is ahead of the primary's (a primary elected from a backup that had not
  // learnt the last commits: two nodes lost power at once).
  Lsn committed = 0;
};

// Deliberate bugs, for the simulation's mutation check only (all off in production).
struct Mutations {
  bool ack_at_w1 = false;               // commit with the primary's copy alone
  bool skip_epoch_check = false;        // backups take and ack batches of a lower epoch
  bool elect_without_majority = false;  // a candidate proceeds on its own promise
  bool amnesiac_votes = false;          // a replica that lost its log votes (as before)
  bool switch_unsynced = false;         // a move switches once the learner follows the log,
                                        // not waiting for it (and the commit) to reach its end
};

struct Options {
  NodeId self = 0;
  // N nodes, the same list on every replica: the replica set until a shard record names one
  // (ShardRecord::replicas). A node new to the shard (the learner of a move) is not in it.
  std::vector<NodeId> replicas;
  size_t write_quorum = 2;            // W; a promise quorum is N - W + 1 so that the two meet
  int64_t retransmit_ms = 100;        // resend Level / PromiseRequest / FetchRequest
  int64_t keepalive_ms = 500;         // primary's lease keep-alive period
  int64_t failover_delay_ms = 50;     // after a lease lapse is seen, before a candidacy
  int64_t failover_stagger_ms = 300;  // per rank (next in line after the old primary first)
  int64_t candidate_timeout_ms = 1000;
  int64_t rebuild_retry_ms = 500;
  // Whether a FetchReply may carry the sender's snapshot to a candidate that is further
  // behind. A node whose snapshot state lives in its store (irisd: `state` is empty, the
  // data are copied only by a Rebuild) turns this off: such a fetch is refused and the
  // candidate gives up, leaving the election to a replica that holds the log.
  bool fetch_snapshots = true;
  // A Level carries at most this many payload bytes (at least one batch); a longer one goes
  // in pieces (a message must fit the transport; irisd's peer links take 16 MiB).
  size_t max_level_bytes = 8u << 20;
  size_t max_inflight = 1024;  // uncommitted batches at the primary before kOverloaded
  // A primary steps down (Depose: refuses what waits, revokes its lease) when it has not
  // heard from W - 1 backups (any BatchAck of its epoch; it sends Heartbeats every
  // keepalive_ms) for this long, or when its oldest uncommitted batch has waited this long
  // with no commit while W - 1 backups were in sync (a backup being levelled or rebuilt
  // answers, but cannot hold new batches before it is done: a long copy must not make the
  // primary step down, which would start it over), so that replicas able to reach each other
  // elect a primary that can commit. Without it a primary cut off from every backup but
  // not from etcd keeps its lease, and the shard unwritable, for as long as the cut lasts.
  // Always safe (stepping down is); a slow backup costs a needless failover. 0 = never
  // (and no Heartbeats).
  int64_t stall_depose_ms = 0;
  Mutations mutations;
};

enum class Role { kBackup, kCandidate, kPrimary, kDeposed };
const char* RoleName(Role role);

class Replica {
 public:
  // Starts as kBackup from `durable` (empty for a new replica). Options must have
  // 1 <= write_quorum <= replicas.size() (checked: IRIS_RELEASE_ASSERT).
  Replica(Options options, DurableState durable);

  // Handles one event; the caller carries out the returned effects in order.
  std::vector<Effect> Step(Event event);

  Role role() const { return role_; }
  NodeId self() const { return opts_.self; }
  Epoch promised() const { return promised_; }
  Epoch accepted() const { return accepted_; }
  // The epoch this node serves as primary (0 unless kPrimary).
  Epoch primary_epoch() const { return role_ == Role::kPrimary ? accepted_ : 0; }
  Lsn LastLsn() const { return snapshot_.lsn + log_.size(); }
  Lsn DurableLsn() const { return durable_lsn_; }
  Lsn CommitLsn() const { return commit_lsn_; }
  bool amnesiac() const { return amnesiac_; }
  const Snapshot& snapshot() const { return snapshot_; }
  const std::vector<Batch>& batches() const { return log_; }  // snapshot().lsn + 1, ...
  // The greatest HLC in the log (ids of a new primary start above it).
  uint64_t HlcHighWater() const;
  const ShardRecord& record() const { return record_; }
  // The replica set as this node knows it (the last record's, else Options::replicas).
  const std::vector<NodeId>& Members() const;
  // The record says this node is neither a replica of the shard nor the learner of a move:
  // a move took it out (its host deletes its copy) or it never was in.
  bool removed() const;
  // Primary: a move's switch has been sent and not answered; appends wait (refused).
  bool switching() const { return switch_epoch_ != 0; }

 private:
  struct Peer {
    Lsn match = 0;         // durably acked in my epoch
    Lsn common = 0;        // known to equal my log up to here
    bool in_sync = false;  // acked ok in my epoch since the last !ok
    int64_t last_level_ms = INT64_MIN / 2;
    int64_t last_rebuild_ms = INT64_MIN / 2;
    int64_t last_heard_ms = 0;  // its last BatchAck of my epoch (from BecomePrimary on)
    bool learner = false;       // the new node of a move: ships, but not counted for W
  };
  struct Position {
    Epoch accepted = 0;
    Lsn lsn = 0;
    Lsn commit = 0;
  };

  void OnClientAppend(ClientAppend& e);
  void OnHeartbeat(NodeId from, const Heartbeat& m);
  // A ShipBatch or Heartbeat of `epoch` from `from`: true when this backup follows that
  // primary's log (then leader_ = from); else it answered (fenced, or "level me") or ignores.
  bool FollowsPrimary(NodeId from, Epoch epoch);
  // Primary: Depose when stall_depose_ms says so (Options). True when it did.
  bool StallDepose();
  void OnAwaitCommit(const AwaitCommit& e);
  void OnReceive(NodeId from, Message& m);
  void OnShipBatch(NodeId from, ShipBatch& m);
  void OnBatchAck(NodeId from, const BatchAck& m);
  void OnLevel(NodeId from, Level& m);
  void OnPromiseRequest(NodeId from, const PromiseRequest& m);
  void OnPromise(NodeId from, const Promise& m);
  void OnFetchRequest(NodeId from, const FetchRequest& m);
  void OnFetchReply(NodeId from, FetchReply& m);
  void OnInstallSnapshot(NodeId from, InstallSnapshot& m);
  void OnWalSynced(const WalSynced& e);
  void OnTick(const Tick& e);
  void OnTxnResult(const EtcdTxnResult& e);
  void OnRecord(const ShardRecord& r);
  void OnCompact(CompactLog& e);

  // Log helpers.
  std::optional<Epoch> EpochAt(Lsn lsn) const;  // nullopt: beyond the log or compacted away
  const Batch& At(Lsn lsn) const { return log_[lsn - snapshot_.lsn - 1]; }
  void TruncateAfter(Lsn lsn);
  // Makes the in-memory log follow `batches` after from_lsn (see Level). exact: also drop
  // whatever lies beyond the last given batch. Returns false if from_lsn does not match.
  bool Adopt(Lsn from_lsn, Epoch from_epoch, std::vector<Batch>& batches, bool exact);
  // Takes a snapshot, keeping later batches when they continue it. Durable at once.
  void TakeSnapshot(Snapshot& s);
  std::vector<Batch> Slice(Lsn after, Lsn upto) const;

  // Backup side.
  void MaybeAcceptAndAck();
  // report_match: a "level me" says how far the log is known to match (see SendAck).
  void SendAck(NodeId to, Epoch epoch, bool ok, bool report_match = true);
  void Nack(NodeId to, Epoch epoch) { SendAck(to, epoch, false); }
  // "Level me from my commit point": what the primary sent does not fit this log, so
  // whatever it believes we share may be wrong (it falls back to the commit point).
  void NackMismatch(NodeId to, Epoch epoch) { SendAck(to, epoch, false, false); }
  // Higher epoch seen: a primary is deposed, a candidate gives up.
  // primary_exists: e is the epoch of a primary that won its CAS (a candidate of e yields).
  void SeeEpoch(Epoch e, bool primary_exists);
  bool Due(int64_t& last_ms, int64_t period_ms);
  void Persist();

  // Primary side.
  void BecomePrimary();
  // Primary: learners follow the record's target (added, dropped); a target without this
  // node deposes it. Then MaybeSwitch.
  void FollowTarget();
  void MaybeSwitch();
  void CompleteSwitch(const ShardRecord& r);
  bool SwitchWon(const ShardRecord& r) const;  // r shows the switch in flight applied
  bool Known(NodeId n) const;
  void SendLevel(NodeId peer);
  void AdvanceCommit();
  void Depose(const char* why);

  // Candidate side.
  void MaybeStartCandidacy();
  // A backup that knows the current primary (etcd: its lease is live) but follows no
  // primary of that epoch (it restarted without its log, or lost touch) asks it for a Level
  // now and then ("level me"), instead of waiting for the primary's next batch or Heartbeat:
  // an idle primary sends none, and it believes the backup in sync.
  void MaybeAskToBeLevelled();
  void StartCandidacy();
  void CandidateProgress();
  void AbandonCandidacy();
  size_t PromiseQuorum() const;
  size_t Rank() const;

  void Emit(Effect e) { out_.push_back(std::move(e)); }
  void SendTo(NodeId to, Message m) { Emit(Send{to, std::move(m)}); }

  Options opts_;
  std::vector<Effect> out_;

  // Durable (mirrored by the caller through the effects).
  Epoch promised_ = 0;
  Epoch accepted_ = 0;
  bool amnesiac_ = false;  // DurableState::amnesiac
  Snapshot snapshot_;
  std::vector<Batch> log_;

  // Volatile.
  Role role_ = Role::kBackup;
  Lsn durable_lsn_ = 0;
  Lsn commit_lsn_ = 0;
  Epoch log_epoch_ = 0;  // in memory: my log is a prefix of this epoch's primary's log
  static constexpr Lsn kNever = ~Lsn{0};
  Lsn accept_at_ = kNever;        // accepted_ := log_epoch_ once durable up to here (set by Level)
  // My log equals the log of level_epoch_'s primary up to level_matched_ (the last Level
  // or piece of a Level taken; lowered by truncation). Reported in a "level me".
  Epoch level_epoch_ = 0;
  Lsn level_matched_ = 0;
  std::optional<NodeId> leader_;  // the primary of log_epoch_
  ShardRecord record_;
  bool record_known_ = false;
  int64_t now_ = 0;
  bool have_time_ = false;

  // Backup: failover timer.
  std::optional<int64_t> lapse_seen_ms_;

  // Candidate.
  Epoch cand_epoch_ = 0;
  Epoch cand_expected_ = 0;
  int64_t cand_started_ms_ = 0;
  int64_t cand_last_send_ms_ = 0;
  std::map<NodeId, Position> promises_;
  Epoch highest_seen_ = 0;  // the highest epoch heard of (next candidacy goes above)
  std::optional<NodeId> best_;
  bool fetched_ = false;
  Lsn fetch_target_ = 0;
  bool cas_sent_ = false;

  // Primary.
  std::map<NodeId, Peer> peers_;
  std::map<Lsn, std::vector<uint64_t>> waiting_;  // lsn -> request ids
  int64_t last_keepalive_ms_ = INT64_MIN / 2;
  // When the commit point last advanced, or a batch arrived with nothing uncommitted before
  // it (Options::stall_depose_ms).
  int64_t progress_ms_ = 0;
  int64_t last_heartbeat_ms_ = INT64_MIN / 2;
  int64_t last_level_ask_ms_ = INT64_MIN / 2;  // MaybeAskToBeLevelled
  // A move's switch in flight (0: none): its new epoch, replicas and when it was last sent.
  Epoch switch_epoch_ = 0;
  std::vector<NodeId> switch_replicas_;
  uint64_t switch_revision_ = 0;
  int64_t switch_sent_ms_ = 0;
  // Appends refused since (kNotFrozen: taken) so that the learners reach the end of the log;
  // after a freeze that timed out, none before freeze_backoff_until_ms_.
  static constexpr int64_t kNotFrozen = INT64_MIN;
  int64_t freeze_since_ms_ = kNotFrozen;
  int64_t freeze_backoff_until_ms_ = INT64_MIN;
};

}  // namespace iris::cluster::repl
