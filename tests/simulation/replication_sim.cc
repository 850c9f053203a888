#include "simulation/replication_sim.h"

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

namespace iris::cluster::repl::sim {
namespace {

constexpr int64_t kStartMs = 1'000'000;  // sim time starts here: skewed clocks stay positive
constexpr int64_t kTickMs = 10;
constexpr int64_t kLeaseTtlMs = 1000;
constexpr int64_t kClientTimeoutMs = 300;

// Payload of one append: "k<client>.<seq>@<hlc>;". A snapshot's state is the concatenation
// of the payloads it covers, so the idempotency key "k<client>.<seq>@" can be found in it.
std::string KeyOf(int client, int seq) {
  return "k" + std::to_string(client) + "." + std::to_string(seq) + "@";
}

std::vector<std::string> SplitPayloads(const std::string& state) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < state.size()) {
    size_t end = state.find(';', pos);
    if (end == std::string::npos) end = state.size() - 1;
    out.push_back(state.substr(pos, end - pos + 1));
    pos = end + 1;
  }
  return out;
}

uint64_t HlcOfPayload(const std::string& p) {
  size_t at = p.find('@');
  return at == std::string::npos ? 0 : std::stoull(p.substr(at + 1));
}

struct ClientRef {
  int client;
  int seq;
};

struct Node {
  NodeId id = 0;
  // Holds a replica of the shard (a member or a move's learner); a spare node does not
  // (it is the next move's new node).
  bool assigned = true;
  bool up = true;
  uint64_t instance = 0;
  uint64_t down_gen = 0;
  int64_t paused_until = 0;
  int64_t clock_offset = 0;
  bool etcd_cut = false;
  int64_t last_watch_ms = 0;
  DurableState durable;
  // The last lsn irisd's store would have applied (ReplicaHost: what is committed and durable
  // here after every step, and a primary's commits at once), which survives a crash: a
  // restarted replica starts its commit point there (DurableState::committed). A wipe or a
  // deletion clears it with the store.
  Lsn applied = 0;
  // What earlier wipes destroyed: a copy acknowledged before a wipe counted towards W when
  // the primary committed (the ack may arrive after the wipe); G3 counts it.
  std::vector<DurableState> wiped;
  std::vector<Batch> unsynced;
  bool sync_scheduled = false;
  std::unique_ptr<Replica> replica;
  std::map<uint64_t, ClientRef> requests;  // volatile: lost in a crash
};

struct Client {
  int id = 0;
  int seq = 0;
  bool inflight = false;
  bool done = false;
  uint64_t attempt = 0;
  NodeId target = 1;
};

class Simulation {
 public:
  explicit Simulation(const SimConfig& c) : cfg_(c), rng_(c.seed) {}

  SimResult Run();

 private:
  using Fn = std::function<void()>;
  struct QItem {
    int64_t t;
    uint64_t seq;
    Fn fn;
  };
  struct ByTime {
    bool operator()(const QItem& a, const QItem& b) const {
      return a.t != b.t ? a.t > b.t : a.seq > b.seq;
    }
  };

  // Randomness: the one seeded generator, with portable helpers.
  int64_t U(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng_() % static_cast<uint64_t>(hi - lo + 1));
  }
  bool Chance(double p) { return static_cast<double>(rng_() >> 11) * 0x1.0p-53 < p; }

  void At(int64_t t, Fn fn) { q_.push({t, qseq_++, std::move(fn)}); }
  Node& N(NodeId id) { return nodes_[id - 1]; }
  // Links are cut one by one, so partitions need not be transitive (A-B and B-C up, A-C
  // down): the case where an old primary still reaches a backup that promised its successor.
  bool Connected(NodeId a, NodeId b) const {
    return a == b || !cut_[(a - 1) * nodes_.size() + (b - 1)];
  }
  bool Member(NodeId id) const {
    return std::find(rec_.replicas.begin(), rec_.replicas.end(), id) != rec_.replicas.end();
  }
  bool Faulty() const { return now_ < heal_at_; }

  void Trace(const std::string& line) {
    if (cfg_.trace) trace_ << now_ - kStartMs << "ms " << line << "\n";
  }
  void Violation(const std::string& what) {
    if (!result_.ok) return;
    result_.ok = false;
    std::ostringstream os;
    os << "t=" << now_ - kStartMs << "ms: " << what;
    result_.violation = os.str();
    Trace("VIOLATION " + what);
    stop_ = true;
  }

  Options OptionsFor(NodeId id) const {
    Options o;
    o.self = id;
    // As irisd's: the shard's first replica set, never changed (a node moved in is not in
    // it); the record's replicas (ShardRecord::replicas) say who the members are.
    for (size_t i = 1; i <= cfg_.replicas; ++i) o.replicas.push_back(static_cast<NodeId>(i));
    o.write_quorum = cfg_.write_quorum;
    o.keepalive_ms = 250;
    o.mutations = cfg_.mutations;
    // Odd seeds run as irisd does: a snapshot's state is never carried by a fetch.
    o.fetch_snapshots = (cfg_.seed & 1) == 0;
    // Every fourth seed levels in pieces of a few batches.
    if (cfg_.seed % 4 == 3) o.max_level_bytes = 64;
    // Half the seeds: a primary that cannot commit for a while steps down (as irisd's do).
    if ((cfg_.seed / 2) % 2 == 0) o.stall_depose_ms = 1'000;
    return o;
  }

  // Runs fn on node id when the event fires, if the node is up (and, if inst is set,
  // still the same instance); a paused node gets it when it resumes.
  void RunOn(NodeId id, std::optional<uint64_t> inst, std::function<void(Node&)> fn) {
    Node& n = N(id);
    if (!n.up || (inst && *inst != n.instance)) return;
    if (now_ < n.paused_until) {
      At(n.paused_until + U(0, 5), [this, id, inst, fn]() { RunOn(id, inst, fn); });
      return;
    }
    fn(n);
  }
  void Later(NodeId id, int64_t delay, std::optional<uint64_t> inst,
             std::function<void(Node&)> fn) {
    At(now_ + delay, [this, id, inst, fn = std::move(fn)]() { RunOn(id, inst, fn); });
  }

  void Step(Node& n, Event e);
  void Apply(Node& n, std::vector<Effect>& effects);
  void NetSend(NodeId from, NodeId to, Message m);

  // etcd.
  void EtcdOp(Node& n, Fn op);
  void EtcdReply(NodeId id, uint64_t inst, Event e);
  void EtcdChanged();
  void WatchTo(Node& n);
  void ScheduleLeaseCheck();

  // Nodes.
  void Crash(Node& n);
  void Restart(Node& n);
  void StartNode(Node& n);
  // A move (the placement controller's part): the record's target replaces a seeded member
  // by the spare node, which starts empty (amnesiac: new to a running shard).
  void StartMove();
  // After a switch: the node moved out is deleted (its copy dropped), becoming the spare.
  void DeleteRemoved(NodeId id);

  // Clients.
  void ClientSend(Client& c);
  void ClientRequest(Node& n, int client, int seq);
  void ClientReply(int client, int seq, bool acked, NodeId hint);

  // Checker.
  // G3: W durable copies among the replicas of `commit_epoch` (the committing primary's).
  void CheckDurableCopies(Epoch commit_epoch, Epoch epoch, Lsn lsn, const std::string& payload);
  bool OwnsEpoch(const Node& n, Epoch epoch);
  std::vector<std::string> FullLog(const Node& n) const;
  bool Converged();
  std::string DiagnoseDivergence();
  void FinalCheck();

  // Faults.
  void Fault();
  void Heal();
  void TickAll();
  void Compact();

  SimConfig cfg_;
  std::mt19937_64 rng_;
  std::priority_queue<QItem, std::vector<QItem>, ByTime> q_;
  uint64_t qseq_ = 0;
  int64_t now_ = kStartMs;
  int64_t heal_at_ = 0;
  int64_t end_at_ = 0;
  bool stop_ = false;
  bool healed_ = false;
  double base_loss_ = 0;
  double loss_ = 0;
  double dup_ = 0;
  uint64_t partition_gen_ = 0;
  uint64_t loss_gen_ = 0;
  std::vector<Node> nodes_;
  std::vector<bool> cut_;  // [a * n + b]: the link a-b is down
  std::vector<Client> clients_;
  uint64_t next_request_ = 1;

  // etcd: shards/<s> + leaders/<s>.
  ShardRecord rec_{1, 0, 0, false};
  int64_t lease_expiry_ = 0;

  // The model of what was acknowledged.
  std::map<std::string, Epoch> acked_;                  // key -> epoch that acked it
  std::map<Epoch, std::pair<NodeId, uint64_t>> owner_;  // epoch -> (node, instance)
  std::map<Lsn, std::string> committed_;                // lsn -> payload
  std::map<Epoch, std::vector<NodeId>> config_of_;      // epoch -> its replicas (G3)

  SimResult result_;
  std::ostringstream trace_;
};

// ---- Nodes and effects ---------------------------------------------------------------------

void Simulation::StartNode(Node& n) {
  if (!n.assigned) return;
  n.up = true;
  DurableState d = n.durable;
  d.committed = n.applied;
  n.replica = std::make_unique<Replica>(OptionsFor(n.id), std::move(d));
  if (!n.etcd_cut) Later(n.id, 1, n.instance, [this](Node& m) { Step(m, EtcdWatch{rec_}); });
}

void Simulation::Crash(Node& n) {
  Trace("node " + std::to_string(n.id) + " CRASH (unsynced tail of " +
        std::to_string(n.unsynced.size()) + " lost)");
  ++result_.crashes;
  n.up = false;
  n.replica.reset();
  n.unsynced.clear();
  n.sync_scheduled = false;
  n.requests.clear();
  n.paused_until = 0;
  ++n.instance;
}

void Simulation::Restart(Node& n) {
  if (!n.assigned) return;
  Trace("node " + std::to_string(n.id) + " restart");
  StartNode(n);
}

void Simulation::StartMove() {
  if (rec_.epoch == 0) return;
  if (!rec_.target.empty()) {
    // The controller changes its mind while the move runs: it cancels it (the learner's
    // copy is deleted) or moves another member out instead (same learner). A switch in
    // flight is then refused (its record is gone).
    NodeId learner = 0;
    for (NodeId t : rec_.target) {
      if (!Member(t)) learner = t;
    }
    if (Chance(0.5)) {
      Trace("MOVE CANCELLED (learner " + std::to_string(learner) + ")");
      rec_.target.clear();
      At(now_ + U(100, 1000), [this, learner]() { DeleteRemoved(learner); });
    } else {
      std::vector<NodeId> target = rec_.replicas;
      const size_t out = static_cast<size_t>(U(0, static_cast<int64_t>(target.size()) - 1));
      target[out] = learner;
      Trace("MOVE CHANGED: node " + std::to_string(rec_.replicas[out]) + " out instead");
      rec_.target = target;
    }
    ++rec_.revision;
    EtcdChanged();
    return;
  }
  Node* spare = nullptr;
  for (Node& n : nodes_) {
    if (!n.assigned) spare = &n;
  }
  if (spare == nullptr || spare->up) return;
  std::vector<NodeId> target = rec_.replicas;
  const size_t out = static_cast<size_t>(U(0, static_cast<int64_t>(target.size()) - 1));
  Trace("MOVE: node " + std::to_string(target[out]) + " -> node " + std::to_string(spare->id));
  target[out] = spare->id;
  rec_.target = target;
  ++rec_.revision;
  ++result_.moves_started;
  spare->assigned = true;
  spare->durable = DurableState{};
  spare->applied = 0;
  spare->durable.amnesiac = true;
  ++spare->down_gen;
  StartNode(*spare);
  EtcdChanged();
}

void Simulation::DeleteRemoved(NodeId id) {
  Node& n = N(id);
  if (!n.assigned || Member(id) ||
      std::find(rec_.target.begin(), rec_.target.end(), id) != rec_.target.end()) {
    return;
  }
  Trace("node " + std::to_string(id) + " DELETED (moved out)");
  if (n.up) Crash(n);
  ++n.down_gen;  // no restart pending
  n.wiped.push_back(std::move(n.durable));
  n.durable = DurableState{};
  n.applied = 0;
  n.assigned = false;
  n.etcd_cut = false;
}

void Simulation::Step(Node& n, Event e) {
  ++result_.events;
  const Role before = n.replica->role();
  std::vector<Effect> effects = n.replica->Step(std::move(e));
  if (n.replica->role() != before) {
    Trace("node " + std::to_string(n.id) + " " + RoleName(before) + " -> " +
          RoleName(n.replica->role()) + " promised=" + std::to_string(n.replica->promised()) +
          " accepted=" + std::to_string(n.replica->accepted()) +
          " last=" + std::to_string(n.replica->LastLsn()) +
          " commit=" + std::to_string(n.replica->CommitLsn()));
  }
  Apply(n, effects);
  if (n.up && n.replica) {
    const Replica& r = *n.replica;
    n.applied = std::max({n.applied, std::min(r.CommitLsn(), r.DurableLsn()), r.snapshot().lsn});
  }
  // The WAL must mirror the replica's log (the effects' contract).
  if (n.up && n.replica) {
    const Lsn wal_last = n.durable.snapshot.lsn + n.durable.batches.size() + n.unsynced.size();
    if (wal_last != n.replica->LastLsn() || n.durable.snapshot.lsn != n.replica->snapshot().lsn) {
      Violation("harness: node " + std::to_string(n.id) + " WAL (last " + std::to_string(wal_last) +
                ") does not mirror its log (last " + std::to_string(n.replica->LastLsn()) + ")");
    }
  }
}

void Simulation::Apply(Node& n, std::vector<Effect>& effects) {
  const NodeId id = n.id;
  for (Effect& eff : effects) {
    if (!n.up) return;  // (effects never crash a node; defensive)
    std::visit(
        [&](auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, Send>) {
            NetSend(id, x.to, std::move(x.message));
          } else if constexpr (std::is_same_v<T, WalAppend>) {
            for (Batch& b : x.batches) n.unsynced.push_back(std::move(b));
            if (!n.sync_scheduled) {
              n.sync_scheduled = true;
              Later(id, U(1, 5), n.instance, [this](Node& m) {
                m.sync_scheduled = false;
                for (Batch& b : m.unsynced) m.durable.batches.push_back(std::move(b));
                m.unsynced.clear();
                Step(m, WalSynced{m.durable.snapshot.lsn + m.durable.batches.size()});
              });
            }
          } else if constexpr (std::is_same_v<T, WalTruncate>) {
            auto beyond = [&](const Batch& b) { return b.lsn > x.after_lsn; };
            std::erase_if(n.durable.batches, beyond);
            std::erase_if(n.unsynced, beyond);
          } else if constexpr (std::is_same_v<T, WalCompact>) {
            auto covered = [&](const Batch& b) { return b.lsn <= x.snapshot.lsn; };
            std::erase_if(n.durable.batches, covered);
            std::erase_if(n.unsynced, covered);
            n.durable.snapshot = x.snapshot;
          } else if constexpr (std::is_same_v<T, WalInstallSnapshot>) {
            n.durable.batches.clear();
            n.unsynced.clear();
            n.durable.snapshot = x.snapshot;
          } else if constexpr (std::is_same_v<T, PersistMeta>) {
            n.durable.promised = x.promised;
            n.durable.accepted = x.accepted;
            n.durable.amnesiac = x.amnesiac;
          } else if constexpr (std::is_same_v<T, EtcdCas>) {
            const uint64_t inst = n.instance;
            const EtcdCas cas = x;
            EtcdOp(n, [this, id, inst, cas]() {
              const bool ok = rec_.epoch == cas.expected_epoch && !rec_.lease_live &&
                              cas.new_epoch > rec_.epoch;
              if (ok) {
                rec_.epoch = cas.new_epoch;
                config_of_[cas.new_epoch] = rec_.replicas;
                rec_.primary = cas.primary;
                rec_.lease_live = true;
                ++rec_.revision;
                lease_expiry_ = now_ + kLeaseTtlMs;
                ++result_.failovers;
                Trace("etcd: epoch " + std::to_string(cas.new_epoch) + " -> node " +
                      std::to_string(cas.primary));
                ScheduleLeaseCheck();
                EtcdChanged();
              }
              EtcdReply(id, inst, EtcdTxnResult{cas.new_epoch, ok, rec_});
            });
          } else if constexpr (std::is_same_v<T, EtcdSwitch>) {
            const uint64_t inst = n.instance;
            const EtcdSwitch sw = x;
            EtcdOp(n, [this, id, inst, sw]() {
              const bool ok = rec_.revision == sw.revision && rec_.epoch == sw.expected_epoch &&
                              rec_.lease_live && rec_.primary == id && sw.new_epoch > rec_.epoch;
              if (ok) {
                std::vector<NodeId> out;
                for (NodeId r : rec_.replicas) {
                  if (std::find(sw.replicas.begin(), sw.replicas.end(), r) == sw.replicas.end()) {
                    out.push_back(r);
                  }
                }
                rec_.epoch = sw.new_epoch;
                rec_.replicas = sw.replicas;
                config_of_[sw.new_epoch] = sw.replicas;
                rec_.target.clear();
                if (std::find(sw.replicas.begin(), sw.replicas.end(), id) == sw.replicas.end()) {
                  rec_.primary = 0;  // the primary moved itself out: its lease goes
                  rec_.lease_live = false;
                }
                ++rec_.revision;
                ++result_.moves;
                Trace("etcd: SWITCH to epoch " + std::to_string(sw.new_epoch) + " replicas " + [&] {
                  std::string r;
                  for (NodeId m : sw.replicas) r += std::to_string(m) + " ";
                  return r;
                }());
                EtcdChanged();
                for (NodeId r : out) At(now_ + U(100, 1000), [this, r]() { DeleteRemoved(r); });
              }
              EtcdReply(id, inst, EtcdTxnResult{sw.new_epoch, ok, rec_});
            });
          } else if constexpr (std::is_same_v<T, EtcdKeepAlive>) {
            const uint64_t inst = n.instance;
            const Epoch epoch = x.epoch;
            EtcdOp(n, [this, id, inst, epoch]() {
              // One lease per primary: a switch that keeps the primary keeps its lease (a
              // keep-alive of the epoch before it still finds it).
              if (rec_.lease_live && rec_.primary == id && rec_.epoch >= epoch) {
                lease_expiry_ = now_ + kLeaseTtlMs;
                ScheduleLeaseCheck();
              } else {
                EtcdReply(id, inst, LeaseLapsed{epoch});
              }
            });
          } else if constexpr (std::is_same_v<T, EtcdRevoke>) {
            const Epoch epoch = x.epoch;
            EtcdOp(n, [this, epoch]() {
              if (rec_.lease_live && rec_.epoch == epoch) {
                rec_.lease_live = false;
                ++rec_.revision;
                Trace("etcd: lease of epoch " + std::to_string(epoch) + " revoked");
                EtcdChanged();
              }
            });
          } else if constexpr (std::is_same_v<T, Commit>) {
            n.applied = std::max(n.applied, std::min(x.last_lsn, n.replica->LastLsn()));
            if (!OwnsEpoch(n, x.epoch)) return;
            for (Lsn l = x.first_lsn; l <= x.last_lsn; ++l) {
              const Batch& b = n.replica->batches()[l - n.replica->snapshot().lsn - 1];
              auto [it, fresh] = committed_.emplace(l, b.payload);
              if (!fresh && it->second != b.payload) {
                Violation("G1: committed lsn " + std::to_string(l) + " changed from " + it->second +
                          " to " + b.payload + " (epoch " + std::to_string(x.epoch) + ", node " +
                          std::to_string(id) + ")");
                return;
              }
              CheckDurableCopies(x.epoch, b.epoch, l, b.payload);
            }
            Trace("node " + std::to_string(id) + " commit " + std::to_string(x.first_lsn) + ".." +
                  std::to_string(x.last_lsn) + " epoch " + std::to_string(x.epoch));
          } else if constexpr (std::is_same_v<T, Acknowledge>) {
            if (!OwnsEpoch(n, x.epoch)) return;
            for (uint64_t rid : x.request_ids) {
              auto it = n.requests.find(rid);
              if (it == n.requests.end()) continue;
              const ClientRef ref = it->second;
              n.requests.erase(it);
              const std::string key = KeyOf(ref.client, ref.seq);
              if (rec_.epoch > x.epoch) {
                ++result_.late_acks;
                Trace("late ack of " + key + " by epoch " + std::to_string(x.epoch) + " (etcd at " +
                      std::to_string(rec_.epoch) + ")");
              }
              acked_.emplace(key, x.epoch);
              ++result_.acked;
              Trace("node " + std::to_string(id) + " ACK " + key + " epoch " +
                    std::to_string(x.epoch));
              const int c = ref.client;
              const int s = ref.seq;
              if (!Chance(loss_)) {
                At(now_ + U(1, 10), [this, c, s]() { ClientReply(c, s, true, 0); });
              }
            }
          } else if constexpr (std::is_same_v<T, Refuse>) {
            const NodeId hint = n.replica->record().primary;
            for (uint64_t rid : x.request_ids) {
              auto it = n.requests.find(rid);
              if (it == n.requests.end()) continue;
              const ClientRef ref = it->second;
              n.requests.erase(it);
              if (!Chance(loss_)) {
                At(now_ + U(1, 10),
                   [this, ref, hint]() { ClientReply(ref.client, ref.seq, false, hint); });
              }
            }
          } else if constexpr (std::is_same_v<T, Rebuild>) {
            // State transfer of the primary's committed state up to x.lsn.
            ++result_.rebuilds;
            const Replica& r = *n.replica;
            Snapshot s{x.lsn, x.epoch, x.hlc, r.snapshot().state};
            for (Lsn l = r.snapshot().lsn + 1; l <= x.lsn; ++l) {
              s.state += r.batches()[l - r.snapshot().lsn - 1].payload;
            }
            Trace("node " + std::to_string(id) + " rebuilds node " + std::to_string(x.peer) +
                  " up to " + std::to_string(x.lsn));
            const NodeId peer = x.peer;
            if (Connected(id, peer) && !Chance(loss_)) {
              InstallSnapshot msg{x.primary_epoch, std::move(s)};
              Later(peer, U(20, 100), std::nullopt, [this, id, msg](Node& m) {
                if (Connected(id, m.id)) Step(m, Receive{id, msg});
              });
            }
          }
        },
        eff);
  }
}

void Simulation::NetSend(NodeId from, NodeId to, Message m) {
  if (!Connected(from, to) || Chance(loss_)) return;
  const int copies = Chance(dup_) ? 2 : 1;
  for (int i = 0; i < copies; ++i) {
    Later(to, U(1, 20), std::nullopt, [this, from, m](Node& n) {
      if (Connected(from, n.id)) Step(n, Receive{from, m});
    });
  }
}

// ---- etcd ---------------------------------------------------------------------------------

void Simulation::EtcdOp(Node& n, Fn op) {
  if (n.etcd_cut || Chance(loss_)) return;
  // Now and then a slow request (a loaded etcd): it overtakes a resend, or its answer comes
  // after the caller gave up waiting.
  const int64_t delay = Faulty() && Chance(0.02) ? U(500, 2500) : U(1, 8);
  At(now_ + delay, std::move(op));
}

void Simulation::EtcdReply(NodeId id, uint64_t inst, Event e) {
  if (N(id).etcd_cut || Chance(loss_)) return;
  Later(id, U(1, 8), inst, [this, e](Node& n) { Step(n, e); });
}

void Simulation::WatchTo(Node& n) {
  if (!n.up || n.etcd_cut) return;
  // A watch delivers in revision order: never before the previous event to this node.
  const int64_t t = std::max(now_ + U(1, 10), n.last_watch_ms + 1);
  n.last_watch_ms = t;
  const ShardRecord r = rec_;
  At(t, [this, id = n.id, inst = n.instance, r]() {
    RunOn(id, inst, [this, r](Node& m) { Step(m, EtcdWatch{r}); });
  });
}

void Simulation::EtcdChanged() {
  for (Node& n : nodes_) WatchTo(n);
}

void Simulation::ScheduleLeaseCheck() {
  At(lease_expiry_, [this]() {
    if (rec_.lease_live && now_ >= lease_expiry_) {
      rec_.lease_live = false;
      ++rec_.revision;
      Trace("etcd: lease of epoch " + std::to_string(rec_.epoch) + " expired");
      EtcdChanged();
    }
  });
}

// ---- Clients ---------------------------------------------------------------------------------

void Simulation::ClientSend(Client& c) {
  const uint64_t attempt = ++c.attempt;
  const int cid = c.id;
  const int seq = c.seq;
  const NodeId to = c.target;
  if (!Chance(loss_)) {
    Later(to, U(1, 10), std::nullopt, [this, cid, seq](Node& n) { ClientRequest(n, cid, seq); });
  }
  At(now_ + kClientTimeoutMs, [this, cid, attempt]() {
    Client& cl = clients_[static_cast<size_t>(cid)];
    if (cl.attempt != attempt || !cl.inflight) return;
    cl.target = static_cast<NodeId>(cl.target % nodes_.size() + 1);  // try the next node
    ClientSend(cl);
  });
}

void Simulation::ClientRequest(Node& n, int client, int seq) {
  Replica& r = *n.replica;
  if (r.role() != Role::kPrimary) {
    const NodeId hint = r.record().primary;
    if (!Chance(loss_)) {
      At(now_ + U(1, 10), [this, client, seq, hint]() { ClientReply(client, seq, false, hint); });
    }
    return;
  }
  const std::string key = KeyOf(client, seq);
  const uint64_t rid = next_request_++;
  n.requests[rid] = ClientRef{client, seq};
  // The caller's dedup index: the idempotency key anywhere in the log.
  std::optional<Lsn> found;
  if (r.snapshot().state.find(key) != std::string::npos) found = r.snapshot().lsn;
  for (const Batch& b : r.batches()) {
    if (b.payload.compare(0, key.size(), key) == 0) found = b.lsn;
  }
  if (found) {
    Step(n, AwaitCommit{rid, *found});
    return;
  }
  const int64_t local_ms = now_ + n.clock_offset;
  const uint64_t hlc =
      std::max(static_cast<uint64_t>(std::max<int64_t>(local_ms, 0)) * 1000, r.HlcHighWater() + 1);
  Step(n, ClientAppend{rid, key + std::to_string(hlc) + ";", hlc});
}

void Simulation::ClientReply(int client, int seq, bool acked, NodeId hint) {
  Client& c = clients_[static_cast<size_t>(client)];
  if (!c.inflight || c.seq != seq) return;  // stale
  ++c.attempt;                              // the pending timeout is void
  if (acked) {
    c.inflight = false;
    ++c.seq;
    const int total = cfg_.appends_per_client;
    if (c.seq >= total) {
      c.done = true;
      return;
    }
    At(now_ + U(10, 400), [this, client]() {
      Client& cl = clients_[static_cast<size_t>(client)];
      cl.inflight = true;
      ClientSend(cl);
    });
    return;
  }
  c.target =
      (hint != 0 && hint != c.target) ? hint : static_cast<NodeId>(c.target % nodes_.size() + 1);
  At(now_ + U(20, 80), [this, client, seq]() {
    Client& cl = clients_[static_cast<size_t>(client)];
    if (cl.inflight && cl.seq == seq) ClientSend(cl);
  });
}

// ---- Checker ---------------------------------------------------------------------------------

bool Simulation::OwnsEpoch(const Node& n, Epoch epoch) {
  auto [it, fresh] = owner_.emplace(epoch, std::make_pair(n.id, n.instance));
  if (!fresh && it->second != std::make_pair(n.id, n.instance)) {
    Violation("G4: two primaries acknowledge in epoch " + std::to_string(epoch) + ": node " +
              std::to_string(it->second.first) + " and node " + std::to_string(n.id));
    return false;
  }
  return true;
}

void Simulation::CheckDurableCopies(Epoch commit_epoch, Epoch epoch, Lsn lsn,
                                    const std::string& payload) {
  const std::vector<NodeId>& config = config_of_[commit_epoch];
  const auto holds = [&](const DurableState& d) {
    if (lsn <= d.snapshot.lsn) return d.snapshot.state.find(payload) != std::string::npos;
    if (lsn - d.snapshot.lsn <= d.batches.size()) {
      const Batch& b = d.batches[lsn - d.snapshot.lsn - 1];
      return b.epoch == epoch && b.payload == payload;
    }
    return false;
  };
  size_t copies = 0;
  for (const Node& n : nodes_) {
    // A learner's copy (or any other node's) does not count.
    if (std::find(config.begin(), config.end(), n.id) == config.end()) continue;
    bool held = holds(n.durable);
    for (const DurableState& w : n.wiped) held = held || holds(w);
    if (held) ++copies;
  }
  if (copies < cfg_.write_quorum) {
    Violation("G3: lsn " + std::to_string(lsn) + " (" + payload + ") committed with " +
              std::to_string(copies) + " durable copies, W = " + std::to_string(cfg_.write_quorum));
  }
}

std::vector<std::string> Simulation::FullLog(const Node& n) const {
  std::vector<std::string> out = SplitPayloads(n.replica->snapshot().state);
  for (const Batch& b : n.replica->batches()) out.push_back(b.payload);
  return out;
}

bool Simulation::Converged() {
  if (!rec_.lease_live || !rec_.target.empty()) return false;  // a move must finish too
  const Node& p = N(rec_.primary);
  if (!p.up || !p.replica || p.replica->primary_epoch() != rec_.epoch) return false;
  for (const Node& n : nodes_) {
    if (!Member(n.id)) continue;
    if (!n.up || !n.replica) return false;
    const Replica& r = *n.replica;
    if (r.accepted() != rec_.epoch || r.LastLsn() != p.replica->LastLsn() ||
        r.DurableLsn() != r.LastLsn()) {
      return false;
    }
  }
  return p.replica->CommitLsn() == p.replica->LastLsn();
}

std::string Simulation::DiagnoseDivergence() {
  // Committed prefixes must agree pairwise, and the primary must hold every acked append.
  for (const Node& a : nodes_) {
    for (const Node& b : nodes_) {
      if (a.id >= b.id || !a.replica || !b.replica) continue;
      const std::vector<std::string> la = FullLog(a);
      const std::vector<std::string> lb = FullLog(b);
      const size_t n = std::min<size_t>(
          {static_cast<size_t>(std::min(a.replica->CommitLsn(), b.replica->CommitLsn())), la.size(),
           lb.size()});
      for (size_t i = 0; i < n; ++i) {
        if (la[i] != lb[i]) {
          return "G1: nodes " + std::to_string(a.id) + " and " + std::to_string(b.id) +
                 " hold different committed batches at lsn " + std::to_string(i + 1);
        }
      }
    }
  }
  if (rec_.epoch == 0 || rec_.primary == 0 || !N(rec_.primary).replica) return "";
  const std::vector<std::string> log = FullLog(N(rec_.primary));
  for (const auto& acked : acked_) {
    const std::string& key = acked.first;
    const bool present = std::any_of(log.begin(), log.end(), [&key](const std::string& p) {
      return p.compare(0, key.size(), key) == 0;
    });
    if (!present) {
      return "G1: acknowledged " + key + " (epoch " + std::to_string(acked.second) +
             ") is missing from the primary's log";
    }
  }
  return "";
}

void Simulation::FinalCheck() {
  const Node& p = N(rec_.primary);
  const std::vector<std::string> log = FullLog(p);
  // Every serving replica holds the same log.
  for (const Node& n : nodes_) {
    if (!Member(n.id)) continue;
    if (FullLog(n) != log) {
      Violation("G1: node " + std::to_string(n.id) + "'s log differs from the primary's");
      return;
    }
    for (const Batch& b : n.replica->batches()) {
      if (HlcOfPayload(b.payload) != b.hlc) {
        Violation("G2: node " + std::to_string(n.id) + " lsn " + std::to_string(b.lsn) + " hlc " +
                  std::to_string(b.hlc) + " does not match its payload");
        return;
      }
    }
  }
  // Exactly once, in order, HLCs increasing.
  std::map<std::string, size_t> pos;
  std::map<int, int> last_seq;
  uint64_t last_hlc = 0;
  for (size_t i = 0; i < log.size(); ++i) {
    const std::string& pl = log[i];
    const std::string key = pl.substr(0, pl.find('@') + 1);
    if (!pos.emplace(key, i).second) {
      Violation("G1: " + key + " appears twice in the final log");
      return;
    }
    const uint64_t hlc = HlcOfPayload(pl);
    if (hlc <= last_hlc) {
      Violation("G2: hlc not increasing at position " + std::to_string(i));
      return;
    }
    last_hlc = hlc;
    const int client = std::stoi(key.substr(1));
    const int seq = std::stoi(key.substr(key.find('.') + 1));
    auto [it, fresh] = last_seq.emplace(client, seq);
    if (!fresh) {
      if (seq <= it->second) {
        Violation("G2: client " + std::to_string(client) + "'s appends out of order");
        return;
      }
      it->second = seq;
    }
  }
  for (const auto& [key, epoch] : acked_) {
    if (!pos.count(key)) {
      Violation("G1: acknowledged " + key + " (epoch " + std::to_string(epoch) +
                ") is missing from the final log");
      return;
    }
  }
}

// ---- Faults ------------------------------------------------------------------------------------

void Simulation::Fault() {
  if (!Faulty() || stop_) return;
  Node& n = nodes_[static_cast<size_t>(U(0, static_cast<int64_t>(nodes_.size()) - 1))];
  const std::string who = "node " + std::to_string(n.id);
  switch (U(0, nodes_.size() > cfg_.replicas ? 9 : 7)) {
    case 8:
    case 9:
      StartMove();  // (or changes the move under way)
      break;
    case 0:
    case 1:
      if (n.up) {
        Crash(n);
        const uint64_t gen = ++n.down_gen;
        At(now_ + U(50, 2500), [this, id = n.id, gen]() {
          Node& m = N(id);
          if (!m.up && m.down_gen == gen) Restart(m);
        });
      }
      break;
    case 2:
      if (n.up && now_ >= n.paused_until) {
        n.paused_until = now_ + U(800, 2500);
        Trace(who + " PAUSED until " + std::to_string(n.paused_until - kStartMs));
      }
      break;
    case 3: {
      const uint64_t gen = ++partition_gen_;
      std::string links;
      const size_t total = nodes_.size();
      for (size_t a = 0; a < total; ++a) {
        for (size_t b = a + 1; b < total; ++b) {
          const bool down = Chance(0.5);
          cut_[a * total + b] = cut_[b * total + a] = down;
          if (down) links += " " + std::to_string(a + 1) + "-" + std::to_string(b + 1);
        }
      }
      Trace("PARTITION, links down:" + links);
      At(now_ + U(200, 2000), [this, gen]() {
        if (partition_gen_ != gen) return;
        std::fill(cut_.begin(), cut_.end(), false);
        Trace("partition healed");
      });
      break;
    }
    case 4:
      if (!n.etcd_cut) {
        n.etcd_cut = true;
        Trace(who + " cut from etcd");
        At(now_ + U(200, 2000), [this, id = n.id]() {
          Node& m = N(id);
          if (!m.etcd_cut) return;
          m.etcd_cut = false;
          WatchTo(m);  // the watch resumes with the current record
        });
      }
      break;
    case 5:
      n.clock_offset += U(-3000, 3000);
      Trace(who + " clock jumps to offset " + std::to_string(n.clock_offset));
      break;
    case 7: {
      // A wipe: the node loses its whole durable state (a replaced disk) and comes back
      // without a log; the shard has had a primary, so it starts amnesiac (replica.h). Only
      // while no other node has lost its log: two such losses at once are more failures
      // than W = 2 of 3 tolerates.
      bool another_lost = false;
      for (const Node& m : nodes_) {
        if (m.id != n.id && m.durable.amnesiac) another_lost = true;
      }
      if (!n.up || another_lost) break;
      Crash(n);
      ++result_.wipes;
      n.wiped.push_back(std::move(n.durable));
      n.durable = DurableState{};
      n.applied = 0;
      n.durable.amnesiac = rec_.epoch > 0;
      Trace(who + " WIPED" + (n.durable.amnesiac ? " (amnesiac)" : ""));
      const uint64_t gen = ++n.down_gen;
      At(now_ + U(50, 2500), [this, id = n.id, gen]() {
        Node& m = N(id);
        if (!m.up && m.down_gen == gen) Restart(m);
      });
      break;
    }
    case 6: {
      const uint64_t gen = ++loss_gen_;
      loss_ = 0.3;
      Trace("LOSS burst");
      At(now_ + U(100, 1000), [this, gen]() {
        if (loss_gen_ == gen && Faulty()) loss_ = base_loss_;
      });
      break;
    }
  }
  At(now_ + U(100, 500), [this]() { Fault(); });
}

void Simulation::Heal() {
  healed_ = true;
  Trace("HEAL");
  loss_ = 0;
  ++partition_gen_;
  ++loss_gen_;
  std::fill(cut_.begin(), cut_.end(), false);
  for (Node& n : nodes_) {
    n.paused_until = 0;
    if (n.etcd_cut) {
      n.etcd_cut = false;
      WatchTo(n);
    }
    if (!n.up && n.assigned) Restart(n);
  }
}

void Simulation::Compact() {
  if (stop_) return;
  for (Node& n : nodes_) {
    if (!n.up || now_ < n.paused_until || !Chance(0.5)) continue;
    const Replica& r = *n.replica;
    const Lsn upto = std::min(r.CommitLsn(), r.DurableLsn());
    const Lsn keep = static_cast<Lsn>(U(2, 8));
    if (upto <= r.snapshot().lsn + keep) continue;
    const Lsn lsn = upto - keep;
    std::string state = r.snapshot().state;
    for (Lsn l = r.snapshot().lsn + 1; l <= lsn; ++l) {
      state += r.batches()[l - r.snapshot().lsn - 1].payload;
    }
    Step(n, CompactLog{lsn, std::move(state)});
  }
  At(now_ + 300, [this]() { Compact(); });
}

void Simulation::TickAll() {
  if (stop_) return;
  for (Node& n : nodes_) {
    if (n.up && now_ >= n.paused_until) Step(n, Tick{now_ + n.clock_offset});
  }
  if (healed_ && (now_ / kTickMs) % 5 == 0) {
    bool done =
        std::all_of(clients_.begin(), clients_.end(), [](const Client& c) { return c.done; });
    if (done && Converged()) {
      FinalCheck();
      stop_ = true;
      return;
    }
  }
  At(now_ + kTickMs, [this]() { TickAll(); });
}

SimResult Simulation::Run() {
  base_loss_ = static_cast<double>(U(0, 10)) / 100.0;
  loss_ = base_loss_;
  dup_ = static_cast<double>(U(0, 5)) / 100.0;
  heal_at_ = kStartMs + cfg_.fault_ms;
  end_at_ = heal_at_ + cfg_.heal_ms;
  Trace("seed " + std::to_string(cfg_.seed) + " loss " + std::to_string(base_loss_) + " dup " +
        std::to_string(dup_));
  // Seeds with moves (one in three) have a spare node: each move replaces a member by it,
  // and the member moved out becomes the spare once deleted.
  const size_t spares = cfg_.moves && cfg_.seed % 3 == 0 ? 1 : 0;
  nodes_.resize(cfg_.replicas + spares);
  cut_.assign(nodes_.size() * nodes_.size(), false);
  for (size_t i = 1; i <= cfg_.replicas; ++i) rec_.replicas.push_back(static_cast<NodeId>(i));
  for (size_t i = 0; i < nodes_.size(); ++i) {
    nodes_[i].id = static_cast<NodeId>(i + 1);
    nodes_[i].clock_offset = U(-500, 500);
    nodes_[i].assigned = i < cfg_.replicas;
    nodes_[i].up = nodes_[i].assigned;
    StartNode(nodes_[i]);
  }
  clients_.resize(static_cast<size_t>(cfg_.clients));
  for (size_t i = 0; i < clients_.size(); ++i) {
    clients_[i].id = static_cast<int>(i);
    clients_[i].target = static_cast<NodeId>(U(1, static_cast<int64_t>(cfg_.replicas)));
    const int cid = static_cast<int>(i);
    At(now_ + U(0, 300), [this, cid]() {
      Client& c = clients_[static_cast<size_t>(cid)];
      c.inflight = true;
      ClientSend(c);
    });
  }
  At(now_ + U(50, 300), [this]() { Fault(); });
  At(now_ + 300, [this]() { Compact(); });
  At(heal_at_, [this]() { Heal(); });
  At(now_ + kTickMs, [this]() { TickAll(); });

  while (!q_.empty() && !stop_) {
    QItem item = std::move(const_cast<QItem&>(q_.top()));
    q_.pop();
    if (item.t > end_at_) break;
    now_ = item.t;
    item.fn();
  }
  result_.end_ms = now_ - kStartMs;
  if (result_.ok && !stop_) {
    std::string why;
    for (const Client& c : clients_) {
      if (!c.done) {
        why +=
            " client " + std::to_string(c.id) + " stuck at append " + std::to_string(c.seq) + ";";
      }
    }
    if (why.empty()) why = " the replicas did not converge;";
    // A run that cannot converge may hide a safety violation: name it if so.
    const std::string unsafe = DiagnoseDivergence();
    if (!unsafe.empty()) {
      Violation(unsafe + " (and no progress after healing)");
      why.clear();
    }
    if (!why.empty())
      Violation("progress: " + std::to_string(cfg_.heal_ms) + "ms after healing," + why +
                " etcd epoch " + std::to_string(rec_.epoch) + " primary " +
                std::to_string(rec_.primary) + (rec_.lease_live ? " (lease live)" : " (no lease)"));
  }
  if (cfg_.trace) {
    for (const Node& n : nodes_) {
      if (!n.replica) continue;
      const Replica& r = *n.replica;
      trace_ << "final node " << n.id << " " << RoleName(r.role()) << " promised " << r.promised()
             << " accepted " << r.accepted() << " last " << r.LastLsn() << " durable "
             << r.DurableLsn() << " commit " << r.CommitLsn() << " snapshot " << r.snapshot().lsn
             << "\n";
    }
    result_.trace = trace_.str();
  }
  return result_;
}

}  // namespace

SimResult RunSimulation(const SimConfig& config) { return Simulation(config).Run(); }

}  // namespace iris::cluster::repl::sim
