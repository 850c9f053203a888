#pragma once
// Client::Impl: the state behind iris::client::Client (client.h).
//
// Concurrency model: one I/O thread (Run) owns the connection and everything in
// SessionState below; application threads only (a) write to the LocalStore under db_mu_
// (Send, Cancel, MarkRead) and (b) post Commands under cmd_mu_; both wake the I/O thread
// through an eventfd. The I/O thread takes db_mu_ for every local transaction and never
// holds it while calling on_event or waiting for the network.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include "client/backoff.h"
#include "client/e2ee/message_cipher.h"
#include "client/local_store.h"
#include "common/clock.h"
#include "common/uuid.h"
#include "iris/client/client.h"
#include "iris/v1/client.pb.h"
#include "wire/opcode.h"

namespace iris::client {

// kv: 1 when this user turned read receipts off (UpdateSettings): no READ receipt is sent
// end-to-end and none is shown (the server applies the setting to RECEIPT frames).
inline constexpr const char* kReadReceiptsOff = "read_receipts_off";
// kv: 1 when this user turned presence sharing off; kSettingsSet: 1 once UpdateSettings ran
// (Client::LocalSettings); kSettingsPending: 1 from UpdateSettings until the server's OK for
// exactly these values (a SETTINGS lost with its connection, or refused, is sent again at
// the next connection).
inline constexpr const char* kSharePresenceOff = "share_presence_off";
inline constexpr const char* kSettingsSet = "settings_set";
inline constexpr const char* kSettingsPending = "settings_pending";
// kv: what SetGroupInvites last set (a v1::GroupInvites value; absent = never), and 1 from
// then until the server's OK for exactly that value.
inline constexpr const char* kGroupInvites = "group_invites";
inline constexpr const char* kGroupInvitesPending = "group_invites_pending";
// kv: the block and unblock changes not confirmed by the server yet, as a serialised
// v1::Settings holding only `block` and `unblock` (a user is in at most one of them; absent
// or empty = none). An entry leaves when the server's OK for a SETTINGS carrying it comes,
// or when the server refuses that SETTINGS for good.
inline constexpr const char* kConsentPending = "consent_pending";
// At most this many block changes wait locally (the server keeps at most 1,024 blocks).
inline constexpr size_t kMaxPendingBlocks = 1024;
// Per SETTINGS frame, at most this many ids in `block` and in `unblock` (the protocol's limit).
inline constexpr int kMaxConsentIdsPerFrame = 256;

// kv: the device id this state directory is (from the first WELCOME; absent = 1). A later
// token for another device of the account is refused: one state directory per device.
inline constexpr const char* kOwnerDeviceId = "device_id";
// A queued transcript (payload: e2ee::EncodeTranscript) to this account's other devices.
constexpr uint8_t kQueuedTranscript = 6;
// The same for a group message this account sent (payload: the group id in the recipient's
// place, content type e2ee::kContentGroupTranscript).
constexpr uint8_t kQueuedGroupTranscript = 7;
// A 1:1 transcript naming the message's copy ids (payload: e2ee::EncodeTranscript with ids;
// content type e2ee::kContentTranscriptIds).
constexpr uint8_t kQueuedTranscriptIds = 9;
// A re-send of a sent message to the one device of its recipient that asked for it (a
// session reset, Client conventions 13); payload: EncodeResend. That device gets the
// message's sealed plaintext again (its original counter); every other device of the
// recipient gets a filler control message, as a SEND must carry a copy for each.
constexpr uint8_t kQueuedResend = 8;
struct Resend {
  uint32_t device = 1;  // the recipient's device to re-send to
  std::string idem;     // the sent message's idempotency key (its sent-history entry)
  std::string sealed;   // its sealed plaintext
};
// device (4 bytes, big-endian) || idem length (1 byte) || idem || sealed
inline std::string EncodeResend(const Resend& r) {
  std::string out;
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(r.device >> shift));
  out.push_back(static_cast<char>(r.idem.size()));
  return out + r.idem + r.sealed;
}
inline std::optional<Resend> DecodeResend(std::string_view p) {
  if (p.size() < 5) return std::nullopt;
  Resend r;
  for (int i = 0; i < 4; ++i) r.device = (r.device << 8) | static_cast<uint8_t>(p[i]);
  const size_t n = static_cast<uint8_t>(p[4]);
  if (p.size() < 5 + n) return std::nullopt;
  r.idem = std::string(p.substr(5, n));
  r.sealed = std::string(p.substr(5 + n));
  if (r.sealed.empty()) return std::nullopt;
  return r;
}
// The stored form of a 1:1 SEND's ciphertexts: this prefix, then a serialised v1::Send whose
// `copies` hold one ciphertext per device and whose `body` holds the sealed plaintext they
// encrypt (kept locally, never sent; a body queued by older versions of this client is a
// bare ciphertext, which starts with e2ee::kBodyVersion, never 0). A single copy for
// device 1 of another user goes as the plain `body` of PROTOCOL.md.
inline constexpr std::string_view kCopiesMarker{"\0copies\0", 8};
// A queued body to encrypt again for a changed device set: this prefix, then the sealed
// plaintext (after MISMATCHED_DEVICES).
inline constexpr std::string_view kSealedMarker{"\0sealed\0", 8};
// At most this many bytes of copies in one SEND (the frame's 65,535 with the other fields).
inline constexpr size_t kMaxCopiesBytes = 65'000;
inline constexpr const char* kLinkCodePrefix = "iris-link:1:";
// Device list requests (Command::kDevices `limit`, InFlight::devices_op).
inline constexpr uint8_t kDevicesList = 1;
inline constexpr uint8_t kDevicesAdd = 2;
inline constexpr uint8_t kDevicesRemove = 3;

class Client::Impl {
 public:
  explicit Impl(ClientOptions options);
  ~Impl();

  Status OpenState();
  void Start();
  void Stop();

  Result<std::string> Send(uint64_t recipient, std::string_view text);
  Status Cancel(const std::string& local_id);
  Status MarkRead(uint64_t sender, const std::vector<uint64_t>& ids);
  void SetTyping(uint64_t user, bool typing);
  void SubscribePresence(const std::vector<uint64_t>& users);
  void QueryPresence(const std::vector<uint64_t>& users);
  void UpdateSettings(bool read_receipts, bool share_presence);
  Status Block(uint64_t user, bool block);
  Status SetGroupInvites(GroupInvites who);
  Client::SettingsRecord LocalSettings() const;
  uint64_t RequestSettings();
  uint64_t RequestHistory(uint64_t before, uint32_t limit);
  void GetGroup(uint64_t group_id);
  uint64_t CreateGroup(const std::vector<uint64_t>& members, std::string name);
  uint64_t UpdateGroup(uint64_t group_id, const std::vector<uint64_t>& add,
                       const std::vector<uint64_t>& remove, bool leave);
  Result<std::string> SendGroup(uint64_t group_id, std::string_view text);
  std::vector<GroupRecord> Groups() const;
  Status NameGroup(uint64_t group_id, std::string name);
  void SetToken(std::string token);

  SessionState state() const { return state_.load(); }
  bool Settled() const;
  // An event is being handed to on_event on another thread than the caller's.
  bool EmittingElsewhere() const;
  uint64_t user_id() const { return user_id_.load(); }
  uint64_t cursor() const;
  std::vector<PendingSend> PendingSends() const;
  std::vector<StoredMessage> Messages(uint64_t after_id, size_t limit) const;
  std::string IdentityFingerprint() const;
  bool KeysPublished() const;
  Result<ContactVerification> Verification(uint64_t user) const;
  Status MarkVerified(uint64_t user);
  Result<std::vector<StoredMessage>> TrustIdentity(uint64_t user, std::string_view fingerprint);
  uint32_t device_id() const { return device_id_.load(); }
  Result<std::string> LinkCode() const;
  Result<uint64_t> LinkDevice(std::string_view code);
  Result<uint64_t> RemoveDevice(uint32_t device);
  uint64_t RequestDevices();

 private:
  struct Command {
    enum Kind {
      kTyping,
      kSubscribe,
      kQuery,
      kSettings,
      kHistory,
      kGroupGet,
      kGroupCreate,
      kGroupUpdate,
      kSettingsGet,
      kDevices  // limit: kDevicesList/Add/Remove; before: the device; key: its identity key
    } kind;
    std::vector<uint64_t> users;  // kGroupCreate: members; kGroupUpdate: added
    bool flag_a = false;          // kGroupUpdate: leave (remove this user)
    bool flag_b = false;
    uint64_t before = 0;           // kHistory; kGroupUpdate: the group
    uint32_t limit = 0;            // kHistory
    uint64_t request = 0;          // kHistory, kGroupCreate, kGroupUpdate, kSettingsGet: the
                                   // number returned
    std::vector<uint64_t> remove;  // kGroupUpdate
    std::string key;               // kDevices
  };
  // A request on the current connection waiting for its reply.
  struct InFlight {
    enum Kind {
      kSend,
      kKeysFetch,
      kKeysUpload,
      kPresence,
      kSettings,
      kKeysCheck,
      kHistory,
      kGroupGet,
      kSettingsGet
    } kind;
    int64_t seq = 0;
    uint64_t recipient = 0;
    std::string idem;
    bool receipt = false;
    uint32_t prekeys = 0;  // kKeysUpload
    bool identity = false;
    bool signed_prekey = false;  // kKeysUpload: carries a rotated signed prekey
    uint64_t history = 0;        // kHistory, kSettingsGet: the number the call returned
    // kGroupGet: the group (in `recipient`) and the pages received so far (with the
    // request number of a create/update whose answer is being paged).
    std::shared_ptr<GroupInfoEvent> group;
    const char* what = "group_get";  // kGroupGet: what a failure reports
    uint64_t group_id = 0;           // kSend of a group message: its group
    uint8_t queued_kind = 0;         // kSend: QueuedSend::kind
    bool adds_contact = false;       // kSend: the SEND carries Send.adds_contact
    uint64_t sender_key_group = 0;   // kSend of a sender-key distribution, or the KEYS_FETCH
                                     // for one that named it: its group
    // kSettings: the frame sent (what its OK confirms).
    std::shared_ptr<const v1::Settings> settings;
    // kSettingsGet: not written yet; it goes once no SETTINGS is in flight (the server reads
    // settings apart from the order in which it applies SETTINGS).
    bool unsent = false;
    // kSettingsGet of a kDevices command (its op, device and key); kSettings carrying a
    // device list (`device_list`, what its OK makes current), with the request in `history`.
    uint8_t devices_op = 0;
    uint32_t device = 0;
    std::string device_key;
    std::shared_ptr<const v1::DeviceList> device_list;
  };
  // Per-connection state, owned by the I/O thread.
  struct Session {
    std::unique_ptr<Connection> conn;
    bool live = false;
    uint64_t next_request_id = 1;
    std::map<uint64_t, InFlight> in_flight;
    std::set<uint64_t> busy;         // recipients with a send or key fetch in flight
    std::set<uint64_t> busy_groups;  // groups with a group send in flight
    uint32_t max_body_bytes = 64000;
    int64_t last_write_ms = 0;
    int64_t last_read_ms = 0;  // any frame from the server
    int64_t last_ping_ms = 0;
    int ping_interval_ms = 12'500;
    uint32_t received = 0;
    bool upload_in_flight = false;
    // A KEYS_UPLOAD refused for now (RATE_LIMITED, ...) goes again at this time (0: none).
    int64_t upload_retry_at = 0;
    uint32_t upload_attempts = 0;
    bool check_in_flight = false;  // a KEYS_FETCH of this account's own bundle
  };

  void Run();
  struct LinkCodeParts {
    uint64_t user = 0;
    uint32_t device = 0;
    std::string identity_key;
  };
  static Result<LinkCodeParts> ParseLinkCode(std::string_view code);
  // Posts a kDevices command (op kDevicesList/Add/Remove); returns its request number.
  Result<uint64_t> ChangeDevices(uint8_t op, uint32_t device, std::string key);
  // The answer to the SETTINGS_GET of a kDevices command: verifies this account's list,
  // reports it (list) or writes the SETTINGS with the changed, signed list (add, remove).
  Status OnDevicesInfo(Session& s, const InFlight& r, const v1::SettingsInfo& info);
  // The devices of `user` a SEND to it is encrypted for (db_mu_ held): its device list (or
  // device 1); for this account itself, its other devices.
  std::vector<uint32_t> TargetDevices(uint64_t user) const;
  // A KEYS_BUNDLE for `user`: sessions with each device missing one, after checking the
  // device list's signature (db_mu_ held). Sets *changed for a changed device-1 identity,
  // and *list_refused when the device list is not signed by device 1 (FORBIDDEN).
  Status ProcessFetchedKeys(uint64_t user, v1::KeysBundle& b,
                            std::optional<IdentityChangedEvent>* changed, bool* list_refused);
  // Decrypts again the kept ciphertexts from `user` (only those of its linked devices when
  // `linked_only`); those that now decrypt are updated in the store and appended to *out
  // (db_mu_ held, inside the caller's transaction).
  // Queues the transcript of the 1:1 message queued under `idem` (acknowledged now) for
  // this account's other devices, if it has any (db_mu_ held, inside the caller's
  // transaction).
  // `group`: a group message's (recipient 0).
  // `copy_ids`: the ids of a 1:1 message's copies (SEND_ACK), named in the transcript.
  Status QueueTranscript(const std::string& idem, uint64_t recipient, uint64_t group = 0,
                         const std::vector<uint64_t>& copy_ids = {});
  // `group` != 0: only the kept messages of that group (after its sender key arrived).
  Status RetryKept(uint64_t user, bool linked_only, std::vector<StoredMessage>* out,
                   std::vector<Event>* events, uint64_t group = 0);
  // Asks `device` of `sender` for its sender key of `group` (a control message), once per
  // (sender, group, device) while this client runs (db_mu_ held).
  Status RequestSenderKey(uint64_t sender, uint64_t group, uint32_t device);
  // The info of `group` when this device is a member of it and so is `user` (a group known
  // here: the server cannot make this client write to anyone it likes by making up group
  // envelopes); nullopt otherwise.
  Result<std::optional<v1::GroupInfo>> GroupWithFellowMember(uint64_t group, uint64_t user);
  // Answers a member's request for this device's sender key of `group` (db_mu_ held).
  Status AnswerSenderKeyRequest(uint64_t member, uint64_t group);
  // Queues this device's sender-key distribution `payload` of `group` to `member` and
  // records it as a holder (db_mu_ held, inside the caller's transaction).
  Status QueueDistribution(uint64_t group, uint64_t member, const std::string& payload);
  Status RunSession(Session& s);
  Status Write(Session& s, wire::Opcode op, const google::protobuf::MessageLite& m);
  Status HandleFrame(Session& s, const ReceivedFrame& f);
  // Decrypt, store, advance the cursor (one local transaction), then emit the events.
  Status Ingest(Session& s, const v1::Envelope& e, bool catch_up);
  Status IngestPage(Session& s, const v1::SyncPage& page);
  // The same inside the caller's transaction, with db_mu_ held; events go to *out.
  Status IngestLocked(Session& s, const v1::Envelope& e, bool catch_up, std::vector<Event>* out);
  // Decrypts one direct message into *rec (and events), with db_mu_ held inside the
  // caller's transaction. Keeps what cannot be decrypted yet (refused identity key), asks
  // the sender for a session reset when the session was lost, handles control messages.
  // Returns an error only for a local (storage) failure: the caller must roll back.
  // `s` is null when retrying outside the I/O thread (TrustIdentity).
  Status DecryptIncoming(Session* s, const v1::Envelope& e, bool catch_up, bool retry,
                         StoredIncoming* rec, std::vector<Event>* out);
  // Queues (or extends) a session-reset control message to `peer` naming `message_id`.
  Status QueueSessionReset(uint64_t peer, uint64_t message_id);
  // Re-queues the messages a peer reported undecryptable that are still in the sent history.
  // The copies of a re-send (kQueuedResend) for `devices`, in that order.
  Result<std::vector<std::string>> ResendBodies(uint64_t peer, const std::vector<uint32_t>& devices,
                                                const Resend& resend);
  // After a SEND_ACK of a 1:1 message or a re-send (q: its queue entry): the copies' ids and
  // the sealed plaintext go into the sent history.
  Status RecordCopies(const InFlight& r, const v1::SendAck& a, const QueuedSend& q);
  Status ResendForPeer(uint64_t peer, const std::vector<uint64_t>& ids,
                       std::vector<uint64_t>* resent);
  static bool InFlightSend(const Session& s, int64_t seq);
  Status PumpSends(Session& s);
  Status RunCommands(Session& s);
  Status MaybeUploadKeys(Session& s);
  // Issue 18: rotates the signed prekey when due (then uploads it), and asks the server how
  // many one-time prekeys are left when the last check is prekey_check_interval_ms old.
  Status MaybeRotateAndCheckKeys(Session& s);
  Status OnKeysCheck(Session& s, const v1::KeysBundle& b);
  // A HISTORY_PAGE: looks each message up in the local store, else decrypts and stores it
  // (no session reset, nothing kept on failure), queues DELIVERED receipts, reports a
  // HistoryEvent (or a RequestFailedEvent after a local error, rolled back).
  Status OnHistoryPage(Session& s, const v1::HistoryPage& page);
  // Queues a receipt for message `id` to its author: the RECEIPT frame for the server and,
  // when `sealed`, the encrypted copy; each coalesces into a queued receipt of the same
  // type not yet on the wire (db_mu_ held, inside the caller's transaction).
  Status QueueReceipt(Session* s, uint64_t to, v1::ReceiptType type,
                      const std::vector<uint64_t>& ids, bool sealed);
  // A decrypted receipt from `e.sender()`: fills *rec, reports it (db_mu_ held).
  Status IngestSealedReceipt(const v1::Envelope& e, const e2ee::MessageCipher::Decrypted& d,
                             StoredIncoming* rec, std::vector<Event>* out);
  Status OnSendError(Session& s, const InFlight& r, const Status& error);
  // Settings (db_mu_ held). Whether any change waits for the server's OK; the SETTINGS frame
  // carrying what is pending (read receipts and presence, group invites, up to 256 block
  // and 256 unblock changes); the pending block changes.
  bool SettingsPendingLocked() const;
  v1::Settings PendingSettingsLocked() const;
  v1::Settings PendingConsentLocked() const;
  // Removes from the pending changes what `sent` carried (an OK for it, or a refusal for
  // good: `refused`, which drops its block changes only); the flags and group invites only
  // when unchanged since. db_mu_ held.
  Status SettleSettingsLocked(const v1::Settings& sent, bool refused);
  // Writes a SETTINGS for what is pending (nothing when nothing is).
  Status WritePendingSettings(Session& s);
  // The answer (OK or ERROR) to a SETTINGS came: writes the SETTINGS_GETs that waited for
  // it when none is in flight any more.
  Status FlushSettingsGets(Session& s);
  // A GROUP_GET (page after `members_after`) for the group of `paging`.
  Status RequestGroupPage(Session& s, std::shared_ptr<GroupInfoEvent> paging,
                          uint64_t members_after, const char* what);
  Status OnGroupInfo(Session& s, const v1::GroupInfo& g);
  // Records `g` (a GROUP_INFO answer's whole list) in the local store unless a newer
  // version is known; `name` (when not empty) becomes its local name. db_mu_ held.
  Status RecordGroup(const GroupInfoEvent& g, const std::string& name);
  // A GROUP_EVENT envelope: records the new membership and reports it (db_mu_ held).
  Status IngestGroupEvent(const v1::Envelope& e, std::vector<Event>* out);
  // A group message: decrypts it with the sender's sender key into *rec (db_mu_ held).
  // Returns an error only for a local (storage) failure.
  // A message of a linked device that sent before this device could trust it (its sender
  // key waits in a kept pairwise message) is kept too, and retried with it (`retry`).
  Status DecryptGroupIncoming(const v1::Envelope& e, bool catch_up, StoredIncoming* rec,
                              std::vector<Event>* out, bool retry = false);
  // The group message `q` at the head of its group's queue: rotates this user's sender key
  // when a holder is no longer a member, queues distributions to the members that do not
  // hold it, encrypts `q` (db_mu_ held, inside the caller's transaction). Returns the body.
  Result<std::string> PrepareGroupMessage(const QueuedSend& q);
  void RetryLater(int64_t seq, uint32_t attempts, uint32_t retry_after_ms);
  void Emit(const Event& e);
  void SetState(SessionState st, Status why = Status::Ok());
  void Wake();
  // Waits up to timeout_ms for Wake(); false when stopping.
  bool Idle(int64_t timeout_ms);

  ClientOptions options_;
  const Clock& clock_ = SystemClock::Instance();
  UuidV7Generator uuids_;
  Backoff backoff_;

  mutable std::mutex db_mu_;
  std::unique_ptr<LocalStore> store_;
  std::unique_ptr<e2ee::MessageCipher> cipher_;
  // seq -> earliest next attempt (monotonic ms); cleared on every new session.
  std::map<int64_t, int64_t> retry_at_;
  std::map<int64_t, uint32_t> attempts_;
  std::map<uint64_t, int64_t> fetch_retry_at_;  // recipient -> earliest next KEYS_FETCH
  // Recipients whose group-scoped KEYS_FETCH the server refused: fetched without the group.
  // I/O thread only.
  std::set<uint64_t> plain_fetch_;
  std::map<uint64_t, uint32_t> fetch_attempts_;
  // Recipients whose last key fetch found no usable keys (none published, refused identity).
  std::set<uint64_t> unreachable_;
  // Users whose keys and device list are fetched again before the next send to them (a
  // MISMATCHED_DEVICES answer, or a message from a linked device not in their list as known
  // here). Guarded by db_mu_.
  std::set<uint64_t> refetch_;
  // (sender, group, device) whose sender key this device asked for (guarded by db_mu_).
  std::set<std::tuple<uint64_t, uint64_t, uint32_t>> sender_keys_asked_;
  std::map<uint64_t, std::string> group_names_;  // create request -> local name (cmd_mu_)

  mutable std::mutex cmd_mu_;
  bool commands_running_ = false;  // RunCommands is writing commands taken from commands_
  std::deque<Command> commands_;
  std::set<uint64_t> subscriptions_;
  std::string token_;
  bool token_changed_ = false;

  std::atomic<bool> stop_{false};
  std::atomic<bool> queue_dirty_{true};
  std::atomic<SessionState> state_{SessionState::kStopped};
  std::atomic<uint64_t> user_id_{0};
  std::atomic<uint32_t> device_id_{1};
  std::atomic<uint64_t> next_history_{1};
  std::atomic<size_t> in_flight_count_{0};  // the live session's unanswered requests
  // Events being handed to on_event: another thread's Settled() waits for them, so that a
  // program that stops once settled has received every event of what settled it.
  std::atomic<int> emitting_{0};
  Session* session_ = nullptr;  // the current session (I/O thread only)
  int wake_fd_ = -1;
  int lock_fd_ = -1;
  std::thread io_;
  bool started_ = false;
  std::mutex start_mu_;
};

}  // namespace iris::client
