#pragma once
// Core: the inbox service behind the edge (DESIGN.md sections 1-2). It owns the session
// registry (which edge session holds each user) and turns client requests into durable
// appends on the store; every durable append is pushed to the recipient's live session.
//
// The edge<->core boundary is this message interface: requests go in as calls with
// completion callbacks, pushes come out through EdgeSink. In the embedded default both run
// in one process and the calls are function calls; the same messages can cross a process
// boundary (--edge-processes) or the network (cluster) without changing either side.
//
// Serialisation point: every write goes through the store's commit pipeline, which assigns
// HLC ids in commit order, so ids are strictly increasing per inbox and pushes for one inbox
// leave in id order (see store/inbox_store.h).
//
// Threads: no method blocks its caller. Work that reads RocksDB or waits for a durable write
// (settings, keys, group records, presence reads, catch-up and history pages, group
// fan-out) runs on the core's worker pools (core/worker_pool.h: readers and writers);
// appends go straight to the store's commit queue. An event-loop thread calling in
// therefore never waits for the disk (docs/architecture.md, "No loop thread waits").
//
// Thread-safety: all methods may be called from any thread. Completion callbacks run on a
// core worker or the store's sync thread (the commit thread for a write the store refused
// before writing it; inline, for a request refused before any work) and must only hand
// work off (e.g. EventLoop::Post). The commit listener (pushes) runs on the sync thread.

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "common/status.h"
#include "core/core_api.h"
#include "core/degradation.h"
#include "core/fanout.h"
#include "core/groups.h"
#include "core/presence.h"
#include "core/settings_cache.h"
#include "core/worker_pool.h"
#include "iris/v1/client.pb.h"
#include "obs/trace.h"
#include "store/inbox_store.h"

namespace iris::core {

struct CoreOptions {
  uint32_t max_page_messages = 1000;
  DegradationController::Options degradation;
  GroupLimits groups;
  // Worker threads for the blocking store work. Reads (catch-up and history pages, group,
  // settings and last-seen reads) and durable writes (settings, prekeys, group records)
  // have separate pools, so a burst of writes waiting for syncs never delays catch-up.
  // Writer threads mostly wait for a group-commit sync, which they share: more of them
  // means more writes per sync, not more syncs.
  size_t read_workers = 4;
  size_t write_workers = 16;
  // Group fan-out (docs/architecture.md, "Group fan-out"): a group SEND to more than
  // direct_fanout_max_members recipients is acknowledged once the message is durable as a
  // fan-out job, which FanOutWorker then appends to the members' inboxes at most
  // fanout_inboxes_per_sec a second (--fanout-inboxes-per-sec); smaller groups (every E2EE
  // group) keep the one durable batch before SEND_ACK.
  uint32_t direct_fanout_max_members = 256;
  uint32_t fanout_inboxes_per_sec = 1000;
  // Replicated cluster: fan-out jobs of shards another node leads are left to it
  // (FanOutWorker::Options::drop_refused).
  bool fanout_drop_refused = false;
};

// Cluster mode (cluster::Router; docs/architecture.md, "Routing between nodes"): which
// inboxes this core holds, and the way to the inboxes and sessions of the others.
// Implementations must not block and may complete on any thread.
class ClusterDirectory {
 public:
  virtual ~ClusterDirectory() = default;
  // Whether this node owns the inbox of `user` (or the group record of a group id).
  virtual bool Owns(uint64_t id) const = 0;
  // Appends envelopes whose recipients are owned by other nodes on their owners, each
  // owner's share durably and deduplicated by (sender, key); `done` once every owner
  // answered (the first error, else the outcome of the first share).
  virtual void AppendRemote(uint64_t sender, const std::string& key,
                            std::vector<v1::Envelope> envelopes, CoreApi::SendDone done) = 0;
  // The settings of a user owned by another node.
  virtual void GetRemoteSettings(uint64_t user, CoreApi::SettingsDone done) = 0;
  // A typing indicator for a user owned by another node.
  virtual void RelayTyping(uint64_t to, const v1::Typing& typing) = 0;
  // CoreApi::CheckConsent on the owners: without wrote_only, each user's share on its
  // owner (answers joined); with it, on the inviter's owner.
  virtual void CheckRemoteConsent(uint64_t inviter, const std::vector<uint64_t>& users,
                                  bool wrote_only, CoreApi::ConsentDone done) = 0;
};

class Core final : public CoreApi {
 public:
  // `store`, `sink` and `clock` must outlive the Core.
  Core(store::InboxStore& store, EdgeSink& sink, const Clock& clock, CoreOptions options = {});

  // Registers `ref` as the live session of `user`; a previous session is told to go away
  // (EdgeSink::Replace). Answers with SettleRate: the rate debt kept for the user (aged).
  void RegisterSession(uint64_t user, SessionRef ref) override;
  void ReRegisterSession(uint64_t user, SessionRef ref) override;
  // Forgets `ref` if it is still the live session of `user`. `debt` is kept for the user's
  // next session, or handed at once to a newer live one (SettleRate).
  void UnregisterSession(uint64_t user, SessionRef ref, const RateDebt& debt) override;
  // Users whose rate debt is kept here (no live session; not yet repaid).
  size_t parked_debt_count() const;
  // A live session of `user` (any device), or nullopt: whether the user is online.
  std::optional<SessionRef> FindSession(uint64_t user) const;
  // Every live session of `user`, one per device (docs/protocol.md appendix 20).
  std::vector<SessionRef> FindSessions(uint64_t user) const;
  // Forgets every session registered from cluster node `node` (its link to this node ended:
  // they are gone with it), each going offline as if it had unregistered, and their
  // presence subscriptions. Asynchronous.
  void ForgetNode(uint32_t node);
  size_t session_count() const;

  // A validated SEND from `sender`: 1:1, or to a group (one durable batch for the whole
  // fan-out). `trace_id` is the request's trace id (generated by the edge when absent).
  // `parent_span_id`: the caller's span (edge.send), parent of the core.send span.
  void Send(uint64_t sender, const v1::Send& send, const std::string& trace_id, SendDone done,
            uint64_t parent_span_id = 0) override;

  // RECEIPT from `author` (PROTOCOL.md "Receipts"): appended to to_user's inbox as a RECEIPT
  // envelope; a READ receipt is dropped (done gets duplicate=false, message_id=0) when either
  // side turned read receipts off or read receipts are shed under overload.
  void Receipt(uint64_t author, const v1::Receipt& receipt, SendDone done) override;
  // SETTINGS: stored durably and applied at once (presence re-announced). One user's
  // settings changes are applied in the order received.
  void UpdateSettings(uint64_t user, const v1::Settings& settings, StatusDone done) override;
  // TYPING from `from`: relayed to the named user's live session, best effort, never stored.
  // Returns false when shed or when the (1:1) recipient is offline.
  bool Typing(uint64_t from, const v1::Typing& typing) override;
  // Presence subscriptions of one session; answers carry the current states.
  void Subscribe(const SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override;
  void Unsubscribe(const SessionRef& ref, const std::vector<uint64_t>& users) override;
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override;
  // Keys (stored as opaque bytes; one-time prekeys handed out at most once; the pool is
  // capped, see store::StoreOptions::max_one_time_prekeys).
  void UploadKeys(uint64_t user, const v1::KeysUpload& upload, StatusDone done) override;
  void FetchKeys(uint64_t user, KeysDone done) override;
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override;
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override;
  void GetGroup(uint64_t user, uint64_t group_id, GroupDone done) override;
  PressureReport ReportPressure(double pressure, int64_t now_ms) override;
  void AppendEnvelopes(uint64_t sender, const std::string& idempotency_key,
                       std::vector<v1::Envelope> envelopes, SendDone done) override;
  void GetSettings(uint64_t user, SettingsDone done) override;
  void GetOwnSettings(uint64_t user, SettingsDone done) override;
  void CheckConsent(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                    ConsentDone done) override;
  void RelayTyping(uint64_t to, const v1::Typing& typing) override;

  // Makes this core a cluster node: envelopes for inboxes `directory` says are not owned
  // here (group fan-out, group events) go to their owners, a READ receipt's remote author's
  // settings are fetched from its owner, group typing reaches members owned elsewhere.
  // Call once, before the first request; `directory` must outlive the Core.
  void SetClusterDirectory(ClusterDirectory* directory);

  // Runs every queued worker job (their completions post to the edge), then joins the
  // workers; later requests run their store work on the caller's thread. Call after the
  // edge loops have stopped and before the edge is destroyed.
  void StopWorkers() {
    writers_.Stop();
    readers_.Stop();
    fanout_.Stop();
  }
  // Starts the group fan-out worker, resuming the fan-outs a previous run left (in the
  // store). Call once, after SetClusterDirectory (when any) and before serving; large-group
  // sends accepted before it wait for it. Errors: the store's read errors.
  Status StartFanOut();
  FanOutWorker& fanout() { return fanout_; }

  GroupService& groups() { return groups_; }
  DegradationController& degradation() { return degradation_; }
  PresenceService& presence() { return presence_; }

  // Catch-up and history reads (on a worker; RocksDB reads are thread-safe).
  void Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes,
            PageDone done) override;
  void History(uint64_t user, uint64_t before_id, uint32_t limit, size_t max_bytes,
               PageDone done) override;

  store::InboxStore& store() { return store_; }

 private:
  void OnCommitted(const std::vector<v1::Envelope>& envelopes);
  // The receipt itself, once both users' settings are cached (or, for an author owned by
  // another node, `author_settings` fetched from there).
  void AppendReceipt(uint64_t author, const v1::Receipt& receipt, SendDone done,
                     std::optional<store::UserSettings> author_settings = std::nullopt);
  // A durable append of envelopes for several inboxes: on a single node one store batch;
  // in a cluster the share owned here in one local batch and the rest on their owners.
  void AppendSplit(uint64_t sender, std::string key, std::vector<v1::Envelope> envelopes,
                   SendDone done, const obs::SpanContext& trace);
  // The share owned here: one store append per shard, each durable and deduplicated on its
  // own (its dedup entry in its own shard), so that a retry after some shards failed fills
  // exactly those (an append over several shards could commit in some and not others, and
  // its retry would then be answered as a duplicate). One answer: the first error, else the
  // first shard's outcome, a duplicate only when every shard's was one.
  void AppendByShard(uint64_t sender, std::string key, std::vector<v1::Envelope> envelopes,
                     SendDone done, const obs::SpanContext& trace);
  // One author's writes keep the order they were made in (PROTOCOL: messages of one sender
  // reach a recipient in send order; a group change applies to the sends after it). Work
  // that needs a worker (a group send, group change, settings change, READ receipt with
  // uncached settings) runs on the author's writer stripe through InAuthorOrder; a 1:1 send
  // or receipt appends at once, unless AuthorQueued: then it goes behind that work too.
  // One author's calls come from one thread (its one session's loop, or the I/O thread of
  // its edge process's link), so nothing is queued for it between AuthorQueued and the append.
  void InAuthorOrder(uint64_t author, std::function<void()> job);
  // The same for work that waits for something outside this node (a READ receipt whose
  // author is owned elsewhere: its settings come over a peer link): `job` runs on the
  // author's stripe and calls `release` (once, from any thread) when its own write has been
  // handed to the store; the author's next work starts only then. No thread waits
  // meanwhile, and neither does anybody else on the stripe: the author's later work is
  // parked in its line and put back on the stripe by `release`.
  using Release = std::function<void()>;
  void InAuthorOrderAsync(uint64_t author, std::function<void(Release)> job);
  bool AuthorQueued(uint64_t author);
  // Whether `user` blocks `other`, as far as the settings cache knows (no store read: for
  // best-effort relays such as typing).
  bool Blocks(uint64_t user, uint64_t other);
  // A new device list for `user` (docs/protocol.md appendix 20; its shape validated by the
  // edge) applied to `cur`: BAD_REQUEST when it names another user, its version is not
  // above the stored one (the same list again is OK and changes nothing), or it lists a
  // device removed before. Devices it leaves out join the removed ones.
  static Status ApplyDeviceList(uint64_t user, const v1::SignedDeviceList& signed_list,
                                store::UserSettings& cur);
  // The key a SEND is deduplicated by: (sender device, idempotency key).
  static std::string DedupKeyOf(const v1::Send& send);
  void AppendMessage(uint64_t sender, const v1::Send& send, const std::string& trace_id,
                     const obs::SpanContext& trace, SendDone done);
  // Group consent (docs/protocol.md appendix 19): the users of `invited` who do not accept
  // being added to a group by `inviter` (they block the inviter, or accept invitations only
  // from users they have written to and have not written to the inviter), ascending. Asks
  // the owners (a cluster) or this store. `done` may run on any thread.
  using RefusedDone = std::function<void(Result<std::vector<uint64_t>>)>;
  void RefusedInvitations(uint64_t inviter, std::vector<uint64_t> invited, RefusedDone done);
  void ConsentOn(uint64_t inviter, const std::vector<uint64_t>& users, bool wrote_only,
                 ConsentDone done);
  // A group create or update by `author` (on its line, holding `release`): `change` runs on
  // the author's writer stripe once every user of `invited` consented; else `done` gets
  // FORBIDDEN naming those who did not (or the error asking them), and nothing changes.
  void ChangeGroupWithConsent(uint64_t author, std::vector<uint64_t> invited, Release release,
                              GroupDone done, std::function<void(GroupDone)> change);

  static constexpr size_t kRegistryShards = 64;
  // Rate debts kept for users without a live session: at most this many per registry shard
  // (a debt lives at most as long as the slowest bucket takes to refill, ~90 s). When a
  // shard is full of debts not yet repaid, a new one is dropped (counted in
  // iris_rate_debt_dropped_total): that user gets a refilled budget early, nothing else.
  static constexpr size_t kMaxParkedPerShard = 8192;
  struct ParkedDebt {
    int64_t at_ns = 0;  // monotonic time it was kept
    RateDebt debt;
  };
  struct RegistryShard {
    mutable std::mutex mu;
    std::unordered_map<uint64_t, std::vector<SessionRef>> sessions;  // one per device
    std::unordered_map<uint64_t, ParkedDebt> parked;
    int64_t parked_swept_ns = 0;
  };
  // Keeps `debt` for `user` (added to what is kept). Caller holds shard.mu.
  void ParkDebt(RegistryShard& shard, uint64_t user, const RateDebt& debt, int64_t now_ns);
  // RegisterSession (displace: a different live session is replaced) and ReRegisterSession
  // (it is kept, and `ref` told to go away).
  void Register(uint64_t user, SessionRef ref, bool displace);
  // A user's sessions at once: one per device, and no account has more devices than this
  // (device 1, 4 linked ones, and a device being linked).
  static constexpr size_t kMaxSessionsPerUser = 8;
  // Ends `ref` (EdgeSink::Replace) when its device was removed from the user's device list,
  // once the user's settings are read from the store (on a worker; Register checks the
  // cached settings itself, before and after it registers `ref`).
  void RefuseRemovedDevice(uint64_t user, SessionRef ref);
  // Forgets `ref` and tells it to go away, if it is still registered.
  void DropSession(uint64_t user, SessionRef ref);
  RegistryShard& ShardFor(uint64_t user) { return registry_[user % kRegistryShards]; }
  const RegistryShard& ShardFor(uint64_t user) const { return registry_[user % kRegistryShards]; }

  store::InboxStore& store_;
  EdgeSink& sink_;
  const Clock& clock_;
  CoreOptions options_;
  std::array<RegistryShard, kRegistryShards> registry_;
  SettingsCache settings_;
  DegradationController degradation_;
  PresenceService presence_;
  GroupService groups_;
  ClusterDirectory* directory_ = nullptr;  // set once before the first request
  // One author's line: its jobs not finished (queued, parked or running), whether one is
  // running or awaiting its release, and those that reached the stripe meanwhile.
  struct AuthorLine {
    uint32_t jobs = 0;
    bool held = false;
    std::deque<std::function<void(Release)>> parked;
  };
  // Runs `job` now if the author's line is free, else parks it behind the line (stripe job).
  void EnterLine(uint64_t author, std::function<void(Release)> job);
  // The author's running job is done: the next parked one goes back on the stripe.
  void ReleaseLine(uint64_t author);
  std::mutex author_mu_;
  std::unordered_map<uint64_t, AuthorLine> author_queued_;
  FanOutWorker fanout_;
  // Declared last: destroyed (drained and joined) first, while everything their jobs use
  // is still alive.
  WorkerPool readers_;
  WorkerPool writers_;
};

}  // namespace iris::core
