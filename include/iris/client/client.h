#pragma once
// iris::client::Client: a reconnecting, end-to-end encrypted Iris session for one user on
// one device (RFC-001 sections 1.2, 1.3, 3.4; PROTOCOL.md section 6; docs/protocol.md).
//
// What it guarantees:
//  - Receiving: every message is decrypted, stored in the local SQLite database and only
//    then is the persisted sync cursor moved past it (one transaction), so a crash at any
//    point loses nothing and a message is reported at most once per local database.
//  - Sending: Send() stores the message in the local queue (durably) before it returns; the
//    I/O thread encrypts it once (the ciphertext is stored with it, in the same transaction
//    as the Signal session update) and sends it with its UUIDv7 idempotency key, again after
//    every reconnect and after retryable errors with jittered exponential backoff, until the
//    server's SEND_ACK; the queue survives restarts of the process. Messages to one
//    recipient leave in queue order, one at a time (the next is sent once the previous one
//    is acknowledged), so they reach the recipient in that order.
//  - End-to-end encryption with the Signal Protocol (X3DH + Double Ratchet) via
//    libsignal-protocol-c: the first Open() of a state directory generates the identity key
//    and a signed prekey; the first connection uploads them with a pool of one-time prekeys
//    (KEYS_UPLOAD); the client replenishes the pool when it runs low; the first message to a user
//    builds a session from that user's fetched bundle (KEYS_FETCH). Message bodies on the wire are
//    ciphertext only (the body format is in docs/protocol.md, "Client conventions").
//  - The server is always verified (CA file or pinned fingerprint, see ConnectOptions).
//
// Thread-safety: every public method may be called from any thread, concurrently. Events
// are delivered on the client's I/O thread, one at a time, through ClientOptions::on_event;
// a handler may call Client methods (they never wait for the network) but must not call
// Stop() or destroy the Client.
//
// Typical use:
//   ClientOptions o;
//   o.state_dir = "/home/me/.iris";
//   o.server.host = "127.0.0.1"; o.server.port = 7443; o.server.fingerprint = "SHA256:...";
//   o.token = token;
//   o.on_event = [](const Event& e) { ... };
//   auto c = Client::Open(std::move(o));   // local state only, no network yet
//   (*c)->Start();                          // connects in the background
//   auto id = (*c)->Send(42, "hello");      // queued durably; SendAckedEvent follows
//   ...
//   (*c)->Stop();

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "iris/client/connection.h"
#include "iris/client/events.h"
#include "iris/status.h"

namespace iris::client {

// Reconnect and retry delays: attempt n (0-based) waits a uniformly random time in
// [delay/2, delay] with delay = min(max_ms, initial_ms * 2^n) ("equal jitter"); a server's
// retry_after_ms is honoured as a lower bound.
struct BackoffPolicy {
  uint32_t initial_ms = 250;
  uint32_t max_ms = 30'000;
};

struct ClientOptions {
  // Directory holding the local state (state.db, created when missing). One Client per
  // directory at a time (enforced with a lock file).
  std::string state_dir;
  ConnectOptions server;
  std::string token;  // JWT (PROTOCOL.md section 5)
  std::string client_name = "iris-client/0.1";
  uint32_t page_size = 0;  // catch-up page size; 0 = the server's default

  // One-time prekeys: the pool uploaded at first, and the level below which the client
  // uploads more (counted as keys uploaded minus keys consumed by incoming first messages).
  uint32_t prekey_pool_size = 100;
  uint32_t prekey_low_water = 25;
  // How often the client asks the server how many of its one-time prekeys are really left
  // (a KEYS_FETCH of its own bundle: one_time_prekeys_left; it uses up one key, whose
  // private half is then deleted) and refills below prekey_low_water: the local count
  // misses keys that others fetched and never used. 0 = at every connection.
  int64_t prekey_check_interval_ms = 6 * 3600 * 1000LL;
  // Signed prekey rotation: once the current signed prekey is this old (checked at every
  // connection) a new one is made and uploaded; the previous one's private key is kept
  // signed_prekey_grace_ms longer for sessions started from the old bundle, then deleted.
  int64_t signed_prekey_rotation_ms = 7 * 24 * 3600 * 1000LL;
  int64_t signed_prekey_grace_ms = 30 * 24 * 3600 * 1000LL;
  // Send a DELIVERED receipt for every message stored (queued and retried like a send):
  // end-to-end encrypted to the author (only it is believed by the author's client), plus
  // the protocol's RECEIPT frame, which the server counts and may shed (docs/protocol.md,
  // "Client conventions: receipts").
  bool delivery_receipts = true;

  BackoffPolicy backoff;
  uint64_t seed = 0;  // randomness of the backoff jitter; 0 = from the system
  // Receives every event, on the I/O thread. May be empty.
  std::function<void(const Event&)> on_event;
};

// A stored incoming message (Client::Messages).
struct StoredMessage {
  uint64_t id = 0;
  uint64_t peer = 0;
  uint64_t sent_at_ms = 0;
  std::string text;
  bool decrypted = true;
  std::string error;
  uint64_t group_id = 0;  // a group message: its group
  // Sent by this account from another of its devices to `peer` (a transcript).
  bool outgoing = false;
};

// What a user compares out of band to verify a contact (Client::Verification): Signal's
// safety number over both users' identity keys and ids (docs/security.md).
struct ContactVerification {
  uint64_t user = 0;
  bool known = false;         // an identity key of `user` is saved (after a first message)
  bool verified = false;      // the user marked exactly this key verified
  std::string fingerprint;    // the saved key's fingerprint (hex SHA-256 of the public key)
  std::string safety_number;  // 60 digits, as 12 groups of 5 separated by spaces
  std::string scannable;      // QR-friendly form: "iris-sn:v0:<hex>"
  // A newer key refused because the contact was verified (IdentityChangedEvent::blocked),
  // and the safety number computed with it; empty when none.
  std::string refused_fingerprint;
  std::string refused_safety_number;
};

// A group this account knows of (Client::Groups): the newest state seen in a GROUP_INFO
// answer or a GROUP_EVENT.
struct GroupRecord {
  uint64_t id = 0;
  std::string name;  // local only (never sent to the server or the members); may be empty
  GroupKind kind = GroupKind::kUnspecified;
  uint64_t owner = 0;
  uint64_t version = 0;
  std::vector<uint64_t> members;
  bool member = true;  // false once this user left or was removed
};

// A send waiting in the local queue (Client::PendingSends).
struct PendingSend {
  std::string local_id;
  uint64_t recipient = 0;  // 0 for a group message
  uint64_t group_id = 0;   // a group message (SendGroup)
  std::string text;        // empty for receipts
  bool receipt = false;    // a receipt or an E2EE control message (not a user's message)
  uint32_t attempts = 0;
  bool encrypted = false;  // the ciphertext is fixed (will be resent byte for byte)
};

class Client {
 public:
  // Opens (creating when needed) the local state in options.state_dir. No network traffic.
  // BAD_REQUEST for missing options, UNAVAILABLE when another process holds the state
  // directory, INTERNAL when the database cannot be opened.
  static Result<std::unique_ptr<Client>> Open(ClientOptions options);
  // Stops the I/O thread (as Stop()).
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts the I/O thread: connect, HELLO with the persisted cursor, catch-up, push mode,
  // reconnecting with backoff after every failure. Idempotent.
  void Start();
  // Closes the connection and joins the I/O thread; a frame being processed is finished
  // first (its local transaction commits or rolls back). Queued sends stay queued.
  void Stop();

  // Queues `text` for `recipient` and returns its local id (the UUIDv7 idempotency key as
  // text). Durable when it returns. BAD_REQUEST for recipient 0, this user itself or an empty text,
  // TOO_LARGE when the encrypted body could not fit the protocol's limit. The first such
  // message to each recipient (until the server acknowledged one) is sent with
  // Send.adds_contact: the recipient may then add this user to groups (SetGroupInvites).
  Result<std::string> Send(uint64_t recipient, std::string_view text);
  // Removes a queued send that has not been acknowledged. NOT_FOUND when it is not queued
  // (already acknowledged, or unknown). A send already written to the server may still
  // arrive: cancelling stops retries, it cannot recall.
  Status Cancel(const std::string& local_id);
  // Queues a READ receipt to `sender` for the given message ids (1..256).
  Status MarkRead(uint64_t sender, const std::vector<uint64_t>& message_ids);

  // Best effort, never queued: dropped when not connected.
  void SetTyping(uint64_t user, bool typing);
  // Presence: subscriptions are remembered and renewed after every reconnect; the
  // current state comes as PresenceEvents. Queries are answered once (when connected).
  void SubscribePresence(const std::vector<uint64_t>& users);
  void QueryPresence(const std::vector<uint64_t>& users);
  // Asks for a group's record (GROUP_GET) once connected. Answered once, on the I/O thread,
  // with a GroupInfoEvent holding the whole member list: the pages of a large group
  // (docs/protocol.md, "Groups: paged member lists") are fetched one after the other and
  // joined; or with RequestFailedEvent{"group_get"} (NOT_FOUND, FORBIDDEN for a
  // non-member, ...). A request whose connection is lost before the answer is dropped.
  void GetGroup(uint64_t group_id);

  // Groups (docs/protocol.md "Groups" and "Client-side group encryption"). Membership calls
  // are sent once connected and answered once, on the I/O thread, with a GroupInfoEvent
  // carrying the returned request number (> 0), or a RequestFailedEvent ("group_create" /
  // "group_update") with it: refused by the server (FORBIDDEN: only the owner changes
  // membership; RATE_LIMITED; TOO_LARGE above 256 members), or the connection ended first
  // (not retried: the caller may ask again; a retried create with the same call makes a
  // second group). The answer's state is recorded locally (Groups()).
  //
  // Creates an end-to-end encrypted group owned by this user with `members` (this user is
  // added by the server); `name` is kept locally only.
  uint64_t CreateGroup(const std::vector<uint64_t>& members, std::string name = "");
  // Adds and removes members (owner only).
  uint64_t UpdateGroup(uint64_t group_id, const std::vector<uint64_t>& add,
                       const std::vector<uint64_t>& remove);
  // Removes this user from the group (any member but the owner).
  uint64_t LeaveGroup(uint64_t group_id);
  // Queues `text` for the group and returns its local id, as Send does. It is encrypted
  // once, when due, with this user's sender key for the group and goes out as one group
  // SEND; before that, the sender key is distributed (over the pairwise sessions) to every
  // member that does not hold it yet, and a new sender key is made first when someone who
  // held the current one is no longer a member (rotation). SendAckedEvent/SendFailedEvent
  // carry group_id. BAD_REQUEST for an empty text or group 0; NOT_FOUND when this client
  // knows no such group (it learns groups from GROUP_INFO answers and GROUP_EVENTs),
  // BAD_REQUEST when this user is no longer a member; TOO_LARGE as Send. Sending fails later
  // (SendFailedEvent, permanent) for a group that is not E2EE (broadcast) or has no other
  // member.
  Result<std::string> SendGroup(uint64_t group_id, std::string_view text);
  // The groups this client knows of (the protocol has no "list my groups"): those created
  // here and those whose GROUP_EVENT reached this user, including ones it has left.
  std::vector<GroupRecord> Groups() const;
  // Sets the local name of a known group (NOT_FOUND otherwise).
  Status NameGroup(uint64_t group_id, std::string name);
  // Settings (SETTINGS; docs/protocol.md, Client conventions 10 and appendix 19). Every
  // change below is recorded in the local store at once (LocalSettings), marked pending,
  // and sent in a SETTINGS once connected; it stays pending until the server's OK for it.
  // Pending changes (the connection ended first, the server refused with a retryable error,
  // or the Client was closed) are sent again at every connection until the server confirms
  // them. The OK is not reported as an event: Settled() turns true once it came (and
  // `pending` false); a refusal is a RequestFailedEvent "settings". A block or unblock the
  // server refuses for good (BAD_REQUEST, or TOO_LARGE: an account blocks at most 1,024
  // users) is dropped from the pending changes; the rest of them is sent again at once.
  //
  // Read receipts and presence sharing: both values are sent.
  void UpdateSettings(bool read_receipts, bool share_presence);
  // Blocks `user`: the server refuses their 1:1 messages and receipts to this user
  // (FORBIDDEN for them), drops their typing indicators, and refuses to let them add this
  // user to a group. Unblock undoes it. The later of Block/Unblock for one user wins while
  // both are pending. Durable when it returns. BAD_REQUEST for user 0 or this user itself
  // (before this state directory's first connection the account is not known yet: a change
  // naming it is dropped when the connection names it),
  // TOO_LARGE when 1,024 block changes are pending already, INTERNAL when the local store
  // cannot be written.
  Status Block(uint64_t user);
  Status Unblock(uint64_t user);
  // Who may add this user to groups: everyone (the default) or only the users this user
  // has sent a 1:1 message to with Send (receipts and other automatic sends do not count).
  // BAD_REQUEST for kUnspecified; INTERNAL as Block.
  Status SetGroupInvites(GroupInvites who);
  // What this state directory last set, and what the server has not confirmed yet. `set` is
  // false, and both flags true (the server's defaults), when UpdateSettings never ran;
  // `group_invites` is kUnspecified when SetGroupInvites never ran. `pending` is true
  // while any change (of the flags, group_invites, or a block/unblock) is unconfirmed.
  // The block list itself lives on the server: RequestSettings reads it.
  struct SettingsRecord {
    bool set = false;
    bool read_receipts = true;
    bool share_presence = true;
    bool pending = false;
    GroupInvites group_invites = GroupInvites::kUnspecified;
    std::vector<uint64_t> pending_block;  // ascending
    std::vector<uint64_t> pending_unblock;
  };
  SettingsRecord LocalSettings() const;
  // Reads the server's copy of this user's settings (SETTINGS_GET) once connected, after
  // any SETTINGS this client has in flight is answered (so the answer includes them).
  // Returns a request number (> 0); the answer is a SettingsEvent with it, or a
  // RequestFailedEvent "settings_get" with it (refused, or the connection ended first: not
  // retried).
  uint64_t RequestSettings();
  // Asks the server's archive (messages older than the newest of the inbox, PROTOCOL.md
  // HISTORY) for up to `limit` (1..1000; 0 = the server's default, 256) entries with id below
  // `before` (0 = the newest archived), newest first. Returns a request number (> 0); the
  // answer is a HistoryEvent with it, or a RequestFailedEvent "history" with it (refused,
  // or the connection ended first: not retried). Sent once connected (after WELCOME).
  // Messages decrypted here are stored and get DELIVERED receipts (as in catch-up); the
  // sync cursor does not move.
  uint64_t RequestHistory(uint64_t before, uint32_t limit);

  // Verified identities (docs/security.md). A contact's first key is trusted on first use
  // and shown as unverified; a changed key of an unverified contact replaces the old one
  // (IdentityChangedEvent); a changed key of a verified contact is refused until approved.
  //
  // The safety number with `user` (NOT_FOUND before this account's first login).
  Result<ContactVerification> Verification(uint64_t user) const;
  // Marks the saved key of `user` verified (after comparing the safety number). NOT_FOUND
  // when no key of `user` is known yet.
  Status MarkVerified(uint64_t user);
  // Approves (and marks verified) the refused new key of `user` named by `fingerprint` (its
  // key fingerprint or the safety number computed with it; spaces ignored); there is no
  // way to accept "whatever key comes next". Retries the messages kept because of the
  // refusal and returns those that now decrypt (stored before it returns; DELIVERED
  // receipts queued). BAD_REQUEST when the fingerprint is missing or is not the refused
  // key's, NOT_FOUND when no key was refused.
  Result<std::vector<StoredMessage>> TrustIdentity(uint64_t user, std::string_view fingerprint);
  // ---- Devices (docs/protocol.md appendix 20 and "Devices in the client") ----
  //
  // An account has a primary device (1) and up to 4 linked devices, each with its own
  // state directory, identity key and token (the token's `dev` claim names the device).
  // Every 1:1 message is encrypted once per device of the recipient, and copied (as a
  // transcript) to this account's other devices; the device lists of other users are
  // checked against the signature of their primary device before anything is encrypted
  // for a linked device, and a device the primary did not sign for is refused.
  //
  // This device's id (from WELCOME; 1 before the first connection).
  uint32_t device_id() const;
  // The code a new device shows for the primary device to approve (LinkDevice):
  // "iris-link:1:<user>:<device>:<identity key hex>". NOT_FOUND before this state
  // directory's first connection, BAD_REQUEST on the primary device itself.
  Result<std::string> LinkCode() const;
  // On the primary device: adds the device a LinkCode names to the signed device list (or
  // gives a listed device id its new key). The new device must have connected once (its
  // keys are on the server). Returns a request number; the answer is a DevicesEvent or a
  // RequestFailedEvent "devices" with it. BAD_REQUEST for a malformed code, a code of
  // another account, or when this is not the primary device.
  Result<uint64_t> LinkDevice(std::string_view code);
  // On the primary device: removes a linked device (2..63) from the signed list; the server
  // then ends its sessions and drops its keys, and its copies stop. Answered as LinkDevice.
  Result<uint64_t> RemoveDevice(uint32_t device);
  // Reads this account's device list from the server (once connected): DevicesEvent or
  // RequestFailedEvent "devices" with the returned number.
  uint64_t RequestDevices();

  // Replaces the token (e.g. after expiry); a client in kFailed tries again.
  void SetToken(std::string token);

  SessionState state() const;
  // Live, nothing queued and no request (send, key fetch, key upload, presence, settings)
  // waiting for the server's answer: a one-shot program may Stop() without leaving work.
  bool Settled() const;
  // The account this state belongs to: 0 until the first WELCOME ever. A later token for
  // another user is refused (StateEvent kFailed, BAD_REQUEST): one state per account.
  uint64_t user_id() const;
  // The persisted sync cursor (id of the newest message stored).
  uint64_t cursor() const;
  std::vector<PendingSend> PendingSends() const;
  // Stored incoming messages with id > after_id, ascending, at most `limit`.
  std::vector<StoredMessage> Messages(uint64_t after_id, size_t limit) const;
  // Whether this account's keys (identity, signed prekey, one-time prekeys) were uploaded
  // and acknowledged at least once: before that, nobody can start a session with it.
  bool KeysPublished() const;
  // This device's identity key fingerprint (hex of the public key), empty before Open().
  std::string IdentityFingerprint() const;

  class Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace iris::client
