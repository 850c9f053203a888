#pragma once
// Events the client library reports to the application (iris::client::Client, client.h).
//
// Every event is a plain value; the application receives them through
// ClientOptions::on_event, on the client's own I/O thread, in the order they happened.

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "iris/status.h"

namespace iris::client {

// The connection's life cycle.
enum class SessionState : uint8_t {
  kStopped = 0,     // Start() not called yet, or Stop() returned
  kConnecting = 1,  // connecting / HELLO in flight / waiting to retry
  kSyncing = 2,     // WELCOME received, catch-up running
  kLive = 3,        // SYNC_DONE received: push mode, sends flow
  kFailed = 4,      // a fatal error that retrying cannot fix (bad token, wrong certificate):
                    // the client stops connecting until SetToken() or Stop()
};
const char* SessionStateName(SessionState s);

// The state changed. `status` says why for kConnecting (after a failure) and kFailed.
struct StateEvent {
  SessionState state = SessionState::kStopped;
  Status status;
  uint64_t user_id = 0;      // known from kSyncing on
  uint32_t retry_in_ms = 0;  // kConnecting after a failure: when the next attempt starts
};

// A message from another user, stored locally before this event and before the cursor
// moved past it. `decrypted` is false when the body could not be decrypted (`error` says
// why). Then, when `pending`, the ciphertext is kept and retried once the user trusts the
// sender's new identity key (Client::TrustIdentity); when the sender's session was lost
// (e.g. this user re-installed), the client asked the sender to re-send it in a new
// session (the error says so). A group message (`group_id` set) is decrypted with the
// sender's sender key for that group (docs/protocol.md, "Client-side group encryption");
// it gets no receipt. A local storage error is never reported here: the message is not
// stored, the cursor does not move, and it is processed again after reconnecting.
struct MessageEvent {
  uint64_t id = 0;  // server message id (HLC), increasing within this user's inbox
  uint64_t sender = 0;
  uint64_t sent_at_ms = 0;
  std::string text;
  bool decrypted = true;
  bool prekey_message = false;  // the first message(s) of a new Signal session (X3DH)
  std::string error;
  bool from_catch_up = false;  // came in a SYNC_PAGE rather than a DELIVER push
  uint64_t group_id = 0;       // a group message: its group (0 = a direct message)
  bool pending = false;        // kept for a retry (see above)
  // From inside the ciphertext (0/false for messages from older clients): the sender's own
  // clock, and the sender's per-conversation counter, checked against the messages seen
  // before: `missing` earlier messages of the sender never arrived here (dropped by the
  // server, or still to come out of order), or this one `reordered`: it arrived after a
  // later one.
  uint64_t sender_clock_ms = 0;
  uint64_t counter = 0;
  uint64_t missing = 0;
  bool reordered = false;
  // Linked devices (docs/protocol.md appendix 20): the sending device of `sender`
  // (1 = the primary), and, when not 0, this message is one this account sent to user
  // `sent_to` from another of its devices (a transcript; `sender` is this user).
  uint32_t sender_device = 1;
  uint64_t sent_to = 0;
  // Sent by this account from another of its devices (a transcript): to `sent_to`, or to
  // `group_id` (a group message of this account's; `sent_to` 0).
  bool outgoing = false;
  // A message reported before as not decrypted (`pending`) that decrypts now (after its
  // linked device's list was fetched): same id, reported again.
  bool retried = false;
};

// A contact's identity key changed: they re-installed, or the server hands out a key that
// is not theirs. Applications must show this loudly. When the user had verified the
// contact, `blocked`: messages to and from the new key are refused until the user
// approves exactly this key (Client::TrustIdentity with new_fingerprint or the new safety
// number); otherwise the new key replaced the old one (the contact stays unverified).
struct IdentityChangedEvent {
  uint64_t user = 0;
  std::string old_fingerprint;  // key fingerprints (Client::Verification)
  std::string new_fingerprint;
  bool was_verified = false;
  bool blocked = false;
};

// A recipient could not decrypt messages this user sent (its session was lost, e.g. it
// re-installed) and asked for them again in a new session: the ones still in the local
// sent history (`resent`) were queued again; the others cannot be recovered.
struct PeerDecryptFailedEvent {
  uint64_t peer = 0;
  std::vector<uint64_t> message_ids;
  std::vector<uint64_t> resent;
};

// A queued send got its SEND_ACK (it is durable on the server) and left the local queue.
struct SendAckedEvent {
  std::string local_id;  // the idempotency key as UUID text, as returned by Client::Send
  uint64_t recipient = 0;
  uint64_t message_id = 0;
  bool duplicate = false;  // the server had it already (a retry after a lost ack)
  bool receipt = false;    // a receipt (or an E2EE control message) rather than a message
  uint64_t group_id = 0;   // a group message (Client::SendGroup): its group; recipient is 0
  // The SEND carried Send.adds_contact: the first message this user chose to send to
  // `recipient` (until one such SEND was acknowledged); the server now lets `recipient` add
  // this user to groups although this user takes invitations from contacts only
  // (docs/protocol.md, Client conventions 12). Never set for receipts or control messages.
  bool adds_contact = false;
};

// A queued send could not go out yet and will be retried (`status` says why), or failed for
// good (`permanent`: the request itself is invalid, e.g. TOO_LARGE) and left the queue.
struct SendFailedEvent {
  std::string local_id;
  uint64_t recipient = 0;
  Status status;
  bool permanent = false;
  uint32_t attempts = 0;
  uint64_t group_id = 0;  // a group message: its group; recipient is 0
};

enum class ReceiptKind : uint8_t { kDelivered = 1, kRead = 2 };

// Another user's receipt for messages this user sent (ids as the server's SEND_ACKs gave them).
// Only end-to-end encrypted receipts from the author are reported; the server's plaintext
// RECEIPT envelopes (which the server could forge) are stored and ignored.
struct ReceiptEvent {
  uint64_t id = 0;  // the receipt's own inbox id
  uint64_t from = 0;
  ReceiptKind kind = ReceiptKind::kDelivered;
  std::vector<uint64_t> message_ids;
};

struct PresenceEvent {
  uint64_t user = 0;
  bool online = false;
  uint64_t last_seen_ms = 0;
};

struct TypingEvent {
  uint64_t user = 0;
  bool typing = false;
};

// A request that is not a send (presence, settings, keys, history, groups) was refused by
// the server, or (history, group requests, settings_get) its connection ended before the
// answer came.
struct RequestFailedEvent {
  std::string what;  // "presence_query", "settings", "keys_upload", "history", "group_create",
                     // "group_update", "group_get", "settings_get", ...
  Status status;
  uint64_t request = 0;  // "history", "group_create", "group_update", "settings_get": the
                         // number the call returned
};

// Catch-up found that messages newer than this client's cursor were moved to the server's
// archive before this client fetched them (the server's inbox serves only the newest
// messages of each user, by default 10,000; PROTOCOL.md SyncPage.gap): catch-up skips
// them. They have ids above `after_id` and below `before_id` (0: not known, the catch-up
// page carried no message) and are read with Client::RequestHistory (newest first).
struct ArchiveGapEvent {
  uint64_t after_id = 0;   // this client's cursor when the gap was found
  uint64_t before_id = 0;  // the first message catch-up delivers after the gap
};

// One message of a history page (Client::RequestHistory): the locally stored copy when this
// client received it before (decrypting twice is impossible: Signal deletes message keys
// after use), else decrypted now (and stored) when possible.
struct HistoryMessage {
  uint64_t id = 0;
  uint64_t sender = 0;
  uint64_t sent_at_ms = 0;
  std::string text;
  bool decrypted = true;
  std::string error;           // why not, when !decrypted
  bool stored_before = false;  // it was in the local store already
  uint64_t group_id = 0;
  uint64_t sent_to = 0;  // sent by this account to that user from another of its devices
};

// The answer to Client::RequestHistory: archived messages (kind MESSAGE, text content only:
// receipts and control messages are handled as in catch-up and not listed), newest first.
struct HistoryEvent {
  uint64_t request = 0;  // the number RequestHistory returned
  std::vector<HistoryMessage> messages;
  bool has_more = false;     // older archived entries remain
  uint64_t next_before = 0;  // `before` for the next older page: the oldest id on this page
                             // (of any kind), 0 when the page was empty
};

// Catch-up finished: everything the server held for this user up to `cursor` is stored.
struct SyncedEvent {
  uint64_t cursor = 0;
  uint32_t received = 0;  // messages and receipts that catch-up brought in this session
};

// One-time prekeys were uploaded (first login or replenishment).
struct KeysUploadedEvent {
  uint32_t one_time_prekeys = 0;
  bool identity = false;  // the identity and signed prekey were new
};

enum class GroupKind : uint8_t { kUnspecified = 0, kE2ee = 1, kBroadcast = 2 };

// Who may add this user to a group (docs/protocol.md appendix 19; Client::SetGroupInvites).
enum class GroupInvites : uint8_t {
  kUnspecified = 0,  // not set (from this device: Client::LocalSettings)
  kEveryone = 1,     // the server's default
  // Only users this user chose to write to: a 1:1 message sent with Client::Send counts;
  // what the client sends on its own (receipts, session resets, sender keys) does not, so a
  // stranger who writes first gains nothing from this user's automatic delivery receipt.
  kContacts = 2,
};

// The answer to Client::RequestSettings: the server's copy of this user's settings
// (SETTINGS_INFO), read after every SETTINGS this client sent before the request was answered.
struct SettingsEvent {
  uint64_t request = 0;  // the number RequestSettings returned
  bool read_receipts = true;
  bool share_presence = true;
  GroupInvites group_invites = GroupInvites::kEveryone;
  std::vector<uint64_t> blocked;  // ascending
};

// One device of this account's device list (DevicesEvent).
struct DeviceEntry {
  uint32_t id = 0;          // 1 = the primary device
  std::string fingerprint;  // hex SHA-256 of its identity key (e2ee::KeyFingerprint)
  bool this_device = false;
};

// The answer to Client::RequestDevices, LinkDevice or RemoveDevice: this account's device
// list as the server holds it (after the change, for LinkDevice/RemoveDevice), verified
// against the primary device's identity key. A list nobody set is device 1 alone
// (version 0).
struct DevicesEvent {
  uint64_t request = 0;
  uint64_t version = 0;
  std::vector<DeviceEntry> devices;  // ascending ids
};

// The answer to Client::GetGroup, CreateGroup, UpdateGroup or LeaveGroup: the group with
// its whole member list (ascending ids, the owner included), assembled from as many
// GROUP_INFO pages as the server sent; every page is of the same `version` (a list that
// changed while it was paged is fetched again). The client records it (Client::Groups).
struct GroupInfoEvent {
  uint64_t request = 0;  // the number CreateGroup/UpdateGroup/LeaveGroup returned; 0 for GetGroup
  uint64_t group_id = 0;
  GroupKind kind = GroupKind::kUnspecified;
  uint64_t owner = 0;
  uint64_t version = 0;
  std::vector<uint64_t> members;
  uint32_t pages = 0;  // GROUP_INFO frames it took
};

// A GROUP_EVENT from this user's inbox: `actor` created the group or changed its membership.
// Stored before this event (Client::Groups shows the new state). `added` and `removed`
// compare with the membership this client knew before (everyone is `added` for a group
// it did not know). When this user was removed or left, `member` is false: the group's
// later messages do not reach it, and those who stay rotate their sender keys.
struct GroupEvent {
  uint64_t id = 0;  // inbox id
  uint64_t group_id = 0;
  uint64_t actor = 0;
  GroupKind kind = GroupKind::kUnspecified;
  uint64_t owner = 0;
  uint64_t version = 0;
  std::vector<uint64_t> members;  // after the change (empty for a group over 256 members)
  std::vector<uint64_t> added;
  std::vector<uint64_t> removed;
  bool member = true;
};

using Event =
    std::variant<StateEvent, MessageEvent, SendAckedEvent, SendFailedEvent, ReceiptEvent,
                 PresenceEvent, TypingEvent, RequestFailedEvent, SyncedEvent, KeysUploadedEvent,
                 IdentityChangedEvent, PeerDecryptFailedEvent, ArchiveGapEvent, HistoryEvent,
                 GroupInfoEvent, GroupEvent, SettingsEvent, DevicesEvent>;

}  // namespace iris::client
