#pragma once
// CoreApi: the edge <-> core message interface (DESIGN.md section 1). The edge talks to the
// core only through this interface, and the core talks back only through EdgeSink.
//
//  - core::Core implements it in-process (the embedded default: calls are function calls).
//  - edge::RemoteCore implements it in an edge process (--edge-processes) by sending the same
//    requests over a Unix socket to core::CoreServer in the core process.
//
// No call blocks its caller: every request that needs the disk or the other process
// completes through a callback (docs/architecture.md, "No loop thread waits"). Completion
// callbacks may run on any thread (a core worker, the store's sync thread, the store's
// commit thread for a write refused before it was written, a link's I/O thread) and must
// only hand work off (EventLoop::Post).
//
// The interface speaks core types only (SessionRef, AppendResult, Page, PressureReport):
// the store's types stay inside core::Core.
//
// Thread-safety: every method may be called from any thread.

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "iris/v1/client.pb.h"

namespace iris::core {

// Where a live session is: the node holding it, the edge loop on that node
// ((edge process << 8) | loop) and the session's id. node 0 means this node (or unknown:
// a ref made by a local edge before it crossed a peer link, which stamps the peer's id).
//
// `device` is the device the session is (docs/protocol.md appendix 20; 1 = the primary
// device): an attribute of the session, not part of its identity (== ignores it).
struct SessionRef {
  uint32_t node = 0;
  uint32_t edge = 0;
  uint64_t session = 0;
  uint32_t device = 1;
  friend bool operator==(const SessionRef& a, const SessionRef& b) {
    return a.node == b.node && a.edge == b.edge && a.session == b.session;
  }
};

// The answer to an accepted SEND or RECEIPT.
struct AppendResult {
  uint64_t message_id = 0;      // the first id assigned (0: a dropped READ receipt)
  uint64_t accepted_at_ms = 0;  // wall time of acceptance
  bool duplicate = false;       // a retry of an earlier request with the same key
};

// A catch-up or history page.
struct Page {
  std::vector<v1::Envelope> messages;
  bool has_more = false;  // more messages remain after this page
  bool gap = false;       // (catch-up) messages newer than the cursor exist only in the archive
};

// The privacy settings of a user (PROTOCOL.md "Settings"), as another node's core needs them
// (a READ receipt's author owned elsewhere).
struct UserSettings {
  bool read_receipts = true;
  bool share_presence = true;
  bool group_invites_contacts_only = false;  // GROUP_INVITES_CONTACTS
  std::vector<uint64_t> blocked;             // ascending
  std::string device_list;  // a serialized v1::SignedDeviceList; "" = never set (appendix 20)
};

// Whether users may be added to a group by an inviter (docs/protocol.md appendix 19), as far
// as one node knows: of the users asked about, those that block the inviter and those that
// accept invitations only from contacts; or (CheckConsent with wrote_only) those that have
// sent the inviter a 1:1 message.
struct Consent {
  std::vector<uint64_t> blocked;
  std::vector<uint64_t> contacts_only;
  std::vector<uint64_t> wrote;
};

// What a user's per-user rate limits still hold against the user, carried between the node
// that holds the user's session and the owner of the user's shard (docs/architecture.md,
// "Send rate across nodes"). Each slot is one token bucket of the edge's per-user limiters
// (edge::LimiterDebt says which): the nanoseconds until that bucket is full again (0 = full).
// Durations, not instants, so they mean the same on every node. The core only keeps, ages
// and hands them back; it never interprets a slot.
struct RateDebt {
  static constexpr size_t kSlots = 10;
  static constexpr int64_t kMaxNanos = int64_t{3600} * 1'000'000'000;  // per slot, 1 hour
  std::array<int64_t, kSlots> ns{};

  bool zero() const {
    for (int64_t v : ns) {
      if (v > 0) return false;
    }
    return true;
  }
  // The debt `elapsed_ns` later: every slot refilled by that much (never below 0).
  RateDebt AgedBy(int64_t elapsed_ns) const {
    RateDebt out;
    for (size_t i = 0; i < kSlots; ++i) {
      out.ns[i] = ns[i] > elapsed_ns ? ns[i] - elapsed_ns : 0;
    }
    return out;
  }
  // Adds `other` slot by slot (spending in two places adds up), each slot clamped to
  // [0, kMaxNanos].
  void Add(const RateDebt& other) {
    for (size_t i = 0; i < kSlots; ++i) {
      const int64_t a = ns[i] > 0 ? ns[i] : 0;
      const int64_t b = other.ns[i] > 0 ? other.ns[i] : 0;
      ns[i] = a > kMaxNanos - b ? kMaxNanos : a + b;
    }
  }
};

// The answer to a load report.
struct PressureReport {
  int level = 0;         // the degradation level in force, as far as the caller knows
  bool changed = false;  // it changed since the previous report
};

// The core's way back to the edge. Implementations must not block.
class EdgeSink {
 public:
  virtual ~EdgeSink() = default;
  // A durable envelope for the session's user (push mode; the session filters by cursor).
  virtual void Deliver(const SessionRef& to, const v1::Envelope& envelope) = 0;
  // A newer session of the same user and device took over: send SESSION_REPLACED and close.
  virtual void Replace(const SessionRef& old_session) = 0;
  // The session's device was removed from its user's device list: send DEVICE_REMOVED and
  // close (a sink that does not tell the two apart replaces it).
  virtual void RemoveDevice(const SessionRef& session) { Replace(session); }
  // The rate debt of `user` for the session `to`: added to the user's budget on `to`'s node.
  // The owner sends one after every registration (zero when it holds none): until the
  // first arrives, a new session holds back its requests (edge::Session). When `to` has
  // already gone, the edge hands the debt back with UnregisterSession.
  virtual void SettleRate(const SessionRef& to, uint64_t user, const RateDebt& debt) = 0;
  // A presence change of a user the session subscribed to.
  virtual void SendPresence(const SessionRef& to, const v1::Presence& presence) = 0;
  // A typing indicator for the session's user (user = the typist).
  virtual void SendTyping(const SessionRef& to, const v1::Typing& typing) = 0;
};

class CoreApi {
 public:
  virtual ~CoreApi() = default;
  using SendDone = std::function<void(Result<AppendResult>)>;
  using GroupDone = std::function<void(Result<v1::GroupInfo>)>;
  using StatusDone = std::function<void(Status)>;
  using PresenceDone = std::function<void(Result<std::vector<v1::Presence>>)>;
  using KeysDone = std::function<void(Result<v1::KeysBundle>)>;
  using PageDone = std::function<void(Result<Page>)>;
  using SettingsDone = std::function<void(Result<UserSettings>)>;
  using ConsentDone = std::function<void(Result<Consent>)>;

  // Fire-and-forget calls: they return at once and never wait for the disk or the network
  // (the in-process core queues any durable work on its own threads; the remote core sends
  // one message and does not wait for an answer).

  // Registers `ref` as the live session of `user` on device ref.device (an older one of the
  // same device is told to go away; sessions of other devices stay) and answers with
  // EdgeSink::SettleRate: the rate debt the owner held for the user. A device the user's
  // device list removed is told to go away at once (EdgeSink::Replace).
  virtual void RegisterSession(uint64_t user, SessionRef ref) = 0;
  // A session whose registration was not answered in time asks again (the first may have
  // been dropped by a node that did not own the user yet, or lost with a link). Unlike
  // RegisterSession it never displaces another session: it registers `ref` when the user
  // has none, answers SettleRate when `ref` is already the live one, and tells `ref` to go
  // away (EdgeSink::Replace) when a different session took over in between.
  virtual void ReRegisterSession(uint64_t user, SessionRef ref) = 0;
  // Forgets `ref` if it is still the live session of `user`. `debt` is what the session's
  // node still held against the user (taken out of its limiters): the owner keeps it for
  // the next session, or hands it at once to a newer live session (SettleRate).
  virtual void UnregisterSession(uint64_t user, SessionRef ref, const RateDebt& debt) = 0;
  // Best effort; false when shed or the recipient is known to be offline (remote, or a
  // group typing indicator: always true, the fan-out happens later).
  virtual bool Typing(uint64_t from, const v1::Typing& typing) = 0;
  virtual void Unsubscribe(const SessionRef& ref, const std::vector<uint64_t>& users) = 0;
  // Load report from an edge (pressure 1.0 = at capacity); returns the degradation level
  // in force as far as this caller knows and whether it changed since the previous report
  // (remote: the answer to a report arrives later and shows in the next).
  virtual PressureReport ReportPressure(double pressure, int64_t now_ms) = 0;

  // Asynchronous calls: every one returns at once and completes exactly once through its
  // callback, which may run on any core thread (a worker, the store's sync thread, a link's
  // I/O thread) or, for a request refused before any work, inline on the caller. The
  // callback must only hand work off (EventLoop::Post).

  // A validated SEND (1:1 or group). `parent_span_id`: the caller's span for tracing.
  virtual void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id,
                    SendDone done, uint64_t parent_span_id = 0) = 0;
  // RECEIPT (a dropped READ completes with message_id 0).
  virtual void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) = 0;
  // SETTINGS: durable before `done` runs with OK.
  virtual void UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) = 0;
  // Subscribes and answers the current states of `users`.
  virtual void Subscribe(const SessionRef& ref, const std::vector<uint64_t>& users,
                         PresenceDone done) = 0;
  virtual void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) = 0;
  virtual void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) = 0;
  virtual void FetchKeys(uint64_t user, KeysDone done) = 0;
  virtual void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) = 0;
  virtual void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) = 0;
  virtual void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) = 0;
  // Catch-up page: messages with id > after_id, ascending, at most `limit` messages and
  // `max_bytes` (at least one message when any qualifies). History: archived messages with
  // id < before_id (0 = from the newest), descending, same limits.
  virtual void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
                    PageDone done) = 0;
  virtual void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
                       PageDone done) = 0;

  // Calls between the nodes of a cluster (cluster::Router; docs/architecture.md, "Routing
  // between nodes"). Not used by an edge. An implementation that is not a cluster node
  // answers INTERNAL (or, for RelayTyping, drops the indicator).

  // Appends envelopes already built by another node (a group's home: one envelope per
  // member owned here) durably, deduplicated by (sender, idempotency_key) like a SEND.
  virtual void AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                               std::vector<v1::Envelope> envelopes, SendDone done) {
    (void)sender, (void)idempotency_key, (void)envelopes;
    done(Status(StatusCode::kInternal, "AppendEnvelopes: not a cluster node"));
  }
  // The settings of a user owned here (a READ receipt's author, asked by the recipient's
  // owner).
  virtual void GetSettings(uint64_t user, SettingsDone done) {
    (void)user;
    done(Status(StatusCode::kInternal, "GetSettings: not a cluster node"));
  }
  // SETTINGS_GET: the user's own settings, read in the order of the user's writes (after
  // every SETTINGS of the user made before it).
  virtual void GetOwnSettings(uint64_t user, SettingsDone done) {
    GetSettings(user, std::move(done));
  }
  // Consent of `users` (owned here) to being added to a group by `inviter`: Consent::blocked
  // and Consent::contacts_only; with `wrote_only` (the inviter owned here), Consent::wrote.
  virtual void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                            ConsentDone done) {
    (void)inviter, (void)users, (void)wrote_only;
    done(Status(StatusCode::kInternal, "CheckConsent: not a cluster node"));
  }
  // Hands an already-built typing indicator to `to`'s live session, if any (a group's home
  // relaying to a member owned here). Best effort.
  virtual void RelayTyping(uint64_t to, const v1::Typing& typing) { (void)to, (void)typing; }
};

}  // namespace iris::core
