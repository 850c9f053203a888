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
// why, e.g. an identity key change); such a message is stored and never retried.
struct MessageEvent {
  uint64_t id = 0;  // server message id (HLC), increasing within this user's inbox
  uint64_t sender = 0;
  uint64_t sent_at_ms = 0;
  std::string text;
  bool decrypted = true;
  bool prekey_message = false;  // the first message(s) of a new Signal session (X3DH)
  std::string error;
  bool from_catch_up = false;  // came in a SYNC_PAGE rather than a DELIVER push
};

// A queued send got its SEND_ACK (it is durable on the server) and left the local queue.
struct SendAckedEvent {
  std::string local_id;  // the idempotency key as UUID text, as returned by Client::Send
  uint64_t recipient = 0;
  uint64_t message_id = 0;
  bool duplicate = false;  // the server had it already (a retry after a lost ack)
  bool receipt = false;    // a receipt rather than a message
};

// A queued send could not go out yet and will be retried (`status` says why), or failed for
// good (`permanent`: the request itself is invalid, e.g. TOO_LARGE) and left the queue.
struct SendFailedEvent {
  std::string local_id;
  uint64_t recipient = 0;
  Status status;
  bool permanent = false;
  uint32_t attempts = 0;
};

enum class ReceiptKind : uint8_t { kDelivered = 1, kRead = 2 };

// Another user's receipt for messages this user sent (ids as the server's SEND_ACKs gave them).
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

// A request that is not a send (presence, settings, keys) was refused by the server.
struct RequestFailedEvent {
  std::string what;  // "presence_query", "settings", "keys_upload", ...
  Status status;
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

using Event =
    std::variant<StateEvent, MessageEvent, SendAckedEvent, SendFailedEvent, ReceiptEvent,
                 PresenceEvent, TypingEvent, RequestFailedEvent, SyncedEvent, KeysUploadedEvent>;

}  // namespace iris::client
