#pragma once
// Router: a cluster node's CoreApi (CLUSTER.md §7; docs/architecture.md, "Routing between
// nodes"). Every node runs the same edge; the edge's CoreApi is this Router, which sends
// each request to the core of the node that owns the user or group concerned (the shard
// primary, per RouteTable), and whose EdgeSink face takes the pushes of the local core and
// of the other nodes' cores to the session, wherever its edge is.
//
// Routing key of each call:
//   SEND 1:1 -> recipient; SEND to a group, GROUP_UPDATE/GET, group TYPING -> the group id
//   (the group's home, which fans out to the members' owners); GROUP_CREATE -> the group id
//   derived from (owner, idempotency key); RECEIPT -> to_user; 1:1 TYPING -> the recipient;
//   SETTINGS, KEYS_UPLOAD, KEYS_FETCH (own or other), SCAN, HISTORY, Register/
//   UnregisterSession -> the user concerned; Subscribe/Unsubscribe/QueryPresence -> split by
//   the owners of the users, answers merged in the order asked.
//
// Retries: an answer UNAVAILABLE or NOT_OWNER (the shard moved) re-resolves the owner and
// retries the same request (same idempotency key) with exponential backoff until the
// deadline (RouterOptions), then answers UNAVAILABLE (retryable). Retries run on the
// router's own timer thread, never on the caller's thread. Fire-and-forget calls (session
// registration, typing, unsubscribe) are sent once.
//
// Serving: Served() is what the other nodes' peer links call: the local core behind an
// ownership check (NOT_OWNER for an id this node does not own according to its RouteTable).
// Incoming() is the EdgeSink the peer links deliver pushes to (the local edge's sessions).
//
// Thread-safety: every method may be called from any thread. Completion callbacks run on
// a core thread, a peer link's thread or the router's timer thread, and must only hand off.
// Lifetime: destroy the Router after the edge and the peer links stopped calling it; its
// destructor answers pending retries UNAVAILABLE.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/jump_hash.h"
#include "common/status.h"
#include "core/core.h"
#include "core/core_api.h"

namespace iris::cluster {

// Which node owns a user's inbox or a group's record: the primary of the shard holding the
// id's vnode (JumpConsistentHash(UserPartitionKey(id), V)). nullopt while unknown (no
// placement yet, or the shard is between primaries).
class RouteTable {
 public:
  virtual ~RouteTable() = default;
  virtual std::optional<NodeId> OwnerOf(uint64_t id) const = 0;
  // The owner the shard map names, also when that is this node and it does not serve the
  // shard (not yet, or no more; OwnerOf then says nullopt): for requests that only tidy up
  // (a session's end, unsubscribing), which must still reach a core that may hold state
  // from before, and which the named node drops harmlessly when it holds none.
  virtual std::optional<NodeId> NamedOwnerOf(uint64_t id) const { return OwnerOf(id); }
};

// The other nodes, as seen from this one (in production: rpc::RemoteCore over a mutually
// authenticated TLS link per node). Both may return nullptr for a node that is unknown or
// not connected (a request is then retried, a push dropped).
//
// Contract of a link, relied on for lossless catch-up (docs/architecture.md): requests to
// one node are executed there in the order sent (FIFO), pushes from one node arrive in the
// order its core sent them, and a link that loses a push closes the sessions it served.
class Peers {
 public:
  virtual ~Peers() = default;
  // The core of `node` (its Router::Served()).
  virtual core::CoreApi* PeerCore(NodeId node) = 0;
  // Pushes to sessions held by `node`'s edge (its Router::Incoming()).
  virtual core::EdgeSink* PeerSink(NodeId node) = 0;
};

struct RouterOptions {
  // A routed request is retried until this long after it was made, then answered
  // UNAVAILABLE.
  std::chrono::milliseconds deadline{5000};
  // Backoff between attempts: initial, doubled per attempt, capped.
  std::chrono::milliseconds initial_backoff{10};
  std::chrono::milliseconds max_backoff{500};
};

struct RouterStats {
  uint64_t retries = 0;             // attempts after the first
  uint64_t gave_up = 0;             // requests answered UNAVAILABLE at the deadline
  uint64_t not_owner_answered = 0;  // requests this node refused as not its own
};

class Router final : public core::CoreApi, public core::EdgeSink, public core::ClusterDirectory {
 public:
  // `routes` and `peers` must outlive the Router.
  Router(NodeId self, const RouteTable& routes, Peers& peers, RouterOptions options = {});
  ~Router() override;
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // This node's core, built with this Router as its EdgeSink (none for `--role edge`):
  // the Router makes it a cluster node (Core::SetClusterDirectory). `local` must outlive
  // the Router. Set once, before the first request.
  void SetLocalCore(core::Core* local);
  // The EdgeSink of this node's edge (its sessions). Set once, before the first request.
  void SetLocalEdge(core::EdgeSink* edge) { local_edge_ = edge; }

  NodeId self() const { return self_; }
  core::CoreApi& Served();
  core::EdgeSink& Incoming();
  RouterStats Stats() const;
  // Sessions of this node's edge that the Router keeps for re-registration (tests).
  size_t local_sessions();
  // This node's sessions that are registered with `node`'s core: when the link to `node`
  // ends they may have missed pushes, and their clients must resume from their cursors.
  std::vector<core::SessionRef> SessionsRegisteredAt(NodeId node);

  // ---- CoreApi (the edge's requests) ----
  void RegisterSession(uint64_t user, core::SessionRef ref) override;
  void ReRegisterSession(uint64_t user, core::SessionRef ref) override;
  void UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& debt) override;
  bool Typing(uint64_t from, const v1::Typing& typing) override;
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override;
  core::PressureReport ReportPressure(double pressure, int64_t now_ms) override;
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id = 0) override;
  void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) override;
  void UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) override;
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override;
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override;
  void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) override;
  void FetchKeys(uint64_t user, KeysDone done) override;
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override;
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override;
  void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) override;
  void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
            PageDone done) override;
  void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
               PageDone done) override;
  void AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                       std::vector<v1::Envelope> envelopes, SendDone done) override;
  void GetSettings(uint64_t user, SettingsDone done) override;
  void GetOwnSettings(uint64_t user, SettingsDone done) override;
  // Without wrote_only, each user's share on its owner, joined; with it, on the inviter's.
  void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                    ConsentDone done) override;
  void RelayTyping(uint64_t to, const v1::Typing& typing) override;

  // ---- EdgeSink (the pushes of the local core) ----
  void Deliver(const core::SessionRef& to, const v1::Envelope& envelope) override;
  void Replace(const core::SessionRef& old_session) override;
  void RemoveDevice(const core::SessionRef& session) override;
  void SettleRate(const core::SessionRef& to, uint64_t user, const core::RateDebt& debt) override;
  void SendPresence(const core::SessionRef& to, const v1::Presence& presence) override;
  void SendTyping(const core::SessionRef& to, const v1::Typing& typing) override;

  // ---- ClusterDirectory (the local core's way to the other shards) ----
  bool Owns(uint64_t id) const override;
  void AppendRemote(uint64_t sender, const std::string& key, std::vector<v1::Envelope> envelopes,
                    SendDone done) override;
  void GetRemoteSettings(uint64_t user, SettingsDone done) override;
  void CheckRemoteConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                          ConsentDone done) override;
  // RelayTyping (above) serves both faces: routed to `to`'s owner.

 private:
  class ServedCore;
  class IncomingSink;

  // A routed request: `op` runs against the core that owns `id`, again on each retry.
  // `sender` (0: none) puts it in that sender's line (SenderLine), `seq` is its place there.
  template <typename R>
  struct Pending {
    uint64_t id;
    std::function<void(NodeId, core::CoreApi&, std::function<void(R)>)> op;
    std::function<void(R)> done;
    std::chrono::steady_clock::time_point deadline;
    std::chrono::milliseconds backoff;
    uint64_t sender = 0;
    uint64_t seq = 0;
  };
  template <typename R>
  void Route(uint64_t id, std::function<void(NodeId, core::CoreApi&, std::function<void(R)>)> op,
             std::function<void(R)> done, uint64_t sender = 0);

  // One sender's writes (SEND, RECEIPT) in the order the sender made them: each goes out
  // only once every earlier one is answered (succeeded, refused, or given up at the
  // deadline). A later write that went out while an earlier one was still unanswered could
  // succeed first when the earlier one then fails retryably: on a link that broke and was
  // replaced, at an owner whose view of the placement lagged ("not the owner", then yes),
  // at a replica that was deposed. Its order cannot be undone once it is stored. A write
  // whose deadline passed while it waited is answered UNAVAILABLE without going out
  // (docs/architecture.md, "Routing between nodes").
  struct SenderLine {
    uint64_t next_seq = 0;
    std::set<uint64_t> open;                           // routed, not answered yet
    std::map<uint64_t, std::function<void()>> parked;  // seq -> its attempt
  };
  // Whether `seq` of `sender` must wait for an earlier write to be answered; if so it is
  // parked with `attempt`.
  bool ParkInLine(uint64_t sender, uint64_t seq, std::function<void()> attempt);
  // `seq` of `sender` is answered: the next write of the line goes out.
  void LeaveLine(uint64_t sender, uint64_t seq);
  std::mutex lines_mu_;
  std::unordered_map<uint64_t, SenderLine> lines_;
  // AppendRemote: every owner's share, each retried on its own (re-split on a retry).
  void AppendShares(uint64_t sender, const std::string& key, std::vector<v1::Envelope> envelopes,
                    SendDone done, std::chrono::steady_clock::time_point deadline,
                    std::chrono::milliseconds backoff);
  void Count(uint64_t RouterStats::*counter);
  template <typename R>
  void Attempt(std::shared_ptr<Pending<R>> p);
  template <typename R>
  void RetryLater(std::shared_ptr<Pending<R>> p, const Status& why);
  // The core to call for `node`: the local core (through the ownership check) or a peer.
  core::CoreApi* CoreOf(NodeId node);
  core::EdgeSink* SinkOf(NodeId node);
  // `users` grouped by owner (nullopt: no owner known), order kept within each group.
  // named: by RouteTable::NamedOwnerOf rather than OwnerOf.
  std::map<std::optional<NodeId>, std::vector<size_t>> SplitByOwner(
      const std::vector<uint64_t>& users, bool named = false) const;
  // A presence call (Subscribe, QueryPresence) made with one owner's part of the users.
  using PresenceCall =
      std::function<void(core::CoreApi&, const std::vector<uint64_t>& part, PresenceDone)>;
  // `users` split by owner, `call` routed with each owner's part (each retried like any
  // routed call), the answers merged back in the order of `users`. The first failure fails
  // the whole request; `done` runs once, when every part has answered.
  void FanOutPresence(const std::vector<uint64_t>& users, const PresenceCall& call,
                      PresenceDone done);

  // The timer thread: runs jobs at their time (retries). Stop runs the rest at once.
  void After(std::chrono::milliseconds delay, std::function<void()> job);
  void TimerLoop();

  const NodeId self_;
  const RouteTable& routes_;
  Peers& peers_;
  core::Core* local_ = nullptr;
  const RouterOptions options_;
  core::EdgeSink* local_edge_ = nullptr;
  std::unique_ptr<ServedCore> served_owner_;
  std::unique_ptr<IncomingSink> incoming_owner_;
  ServedCore& served_;
  IncomingSink& incoming_;

  // The local edge's registered sessions and the node each was last registered with: a
  // catch-up scan that reaches another owner (the shard moved) re-registers there first,
  // on the same link, so the registration takes effect before the scan reads.
  struct LocalSession {
    core::SessionRef ref;
    NodeId registered_at;
  };
  // A session replaced by a newer one elsewhere never unregisters (its edge knows the
  // registry moved on): its entry is dropped when the Replace passes through (user_of_).
  // One session per (user, device) (docs/protocol.md appendix 20), ordered so that a user's
  // sessions are one range.
  using SessionKey = std::pair<uint64_t, uint32_t>;
  std::mutex sessions_mu_;
  std::map<SessionKey, LocalSession> sessions_;
  std::unordered_map<core::SessionRef, uint64_t, core::SessionRefHash> user_of_;
  void ForgetReplaced(const core::SessionRef& ref);

  mutable std::mutex stats_mu_;
  RouterStats stats_;

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;
  bool stopping_ = false;
  std::thread timer_;
};

}  // namespace iris::cluster
