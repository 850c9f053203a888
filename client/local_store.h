#pragma once
// LocalStore: the client's durable state in one SQLite database (WAL, synchronous=FULL):
// the sync cursor and small settings (table `kv`), received messages, the send queue and
// sent history, and the Signal Protocol stores (identity, prekeys, signed prekeys,
// sessions, sender keys).
//
// Atomicity: Transaction groups several calls into one SQLite transaction (nested
// Transactions join the outer one), e.g. "decrypt (updates the Signal session), store the
// message, advance the cursor" commits all or nothing.
//
// Thread-safety: none of its own; the owner serialises access (Client holds a mutex
// around every use). u64 values are stored as the same bits in SQLite's int64.

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace iris::client {

struct QueuedSend {
  int64_t seq = 0;       // queue order
  std::string idem_key;  // 16 bytes, UUIDv7
  uint64_t recipient = 0;
  uint8_t kind = 0;       // kQueuedMessage, kQueuedReceipt or kQueuedSealedReceipt
  std::string payload;    // message: plaintext UTF-8; receipts: serialized v1::ReceiptBody
  std::string wire_body;  // the exact body to send once fixed (ciphertext); empty before
  uint32_t attempts = 0;
  int64_t created_ms = 0;
  // The SEND carries Send.adds_contact (a 1:1 message only; docs/protocol.md, Client
  // conventions 12). Decided when the body is encrypted and stored with it, so every retry
  // under the same idempotency key carries the same flag.
  bool adds_contact = false;
};
// A message in the sent history (LocalStore::FindSent).
struct SentMessage {
  QueuedSend sent;          // idem_key, recipient, kind, payload
  uint64_t message_id = 0;  // SEND_ACK.message_id: the id its author knows it by
  uint32_t device = 1;      // the recipient's device whose copy the looked-up id is
  std::string sealed;       // the sealed plaintext of its copies ("" before they were kept)
};
// One copy of a sent message: its envelope id and the recipient's device it went to.
struct SentCopy {
  uint64_t id = 0;
  uint32_t device = 1;
};
constexpr uint8_t kQueuedMessage = 0;
constexpr uint8_t kQueuedReceipt = 1;  // the protocol's RECEIPT frame (for the server)
// An E2EE control message (payload: the content bytes, e2ee::EncodeControl), encrypted
// like a message; never shown to the user and never re-sent from history.
constexpr uint8_t kQueuedControl = 2;
constexpr uint8_t kQueuedSealedReceipt = 3;  // the receipt encrypted to the author, in a SEND

// A group message (payload: plaintext UTF-8; recipient: the group id), sent as one group
// SEND encrypted with this user's sender key (docs/protocol.md, "Client-side group
// encryption"); it waits for the sender-key distributions queued before it.
constexpr uint8_t kQueuedGroupMessage = 4;
// A sender-key distribution to one member (payload: the content bytes,
// e2ee::EncodeSenderKeyDistribution), encrypted like a message over the pairwise session;
// never shown, never re-sent from history.
constexpr uint8_t kQueuedSenderKey = 5;

// A group this account knows of (from GROUP_INFO answers and GROUP_EVENTs).
struct LocalGroup {
  uint64_t id = 0;
  std::string info;    // the newest serialised v1::GroupInfo (whole member list)
  std::string name;    // a local name (never sent), may be empty
  bool member = true;  // false once this user left or was removed
};

// Incoming.kind for a decrypted control message (not a v1::Kind; Messages() skips it).
constexpr uint8_t kIncomingControl = 100;
// Incoming.kind for a message this account sent from another of its devices (a transcript,
// e2ee::Transcript): `peer` is the user it was sent to, `body` its text.
constexpr uint8_t kIncomingSentByOwnDevice = 101;

struct StoredIncoming {
  uint64_t id = 0;
  uint64_t peer = 0;
  uint64_t sent_at_ms = 0;
  uint8_t kind = 0;  // v1::Kind
  std::string body;  // plaintext for messages; ReceiptBody bytes for receipts
  bool ok = true;
  std::string error;
  uint64_t group_id = 0;  // a group message: its group (0 = direct)
};

// A ciphertext that could not be decrypted yet, kept so that it can be retried (after the
// user trusts a changed identity key) instead of being lost.
struct Undecryptable {
  uint64_t id = 0;  // server message id
  uint64_t peer = 0;
  uint64_t sent_at_ms = 0;
  std::string body;  // the wire body, as received
  std::string error;
  uint32_t device = 1;  // the sender's device (Envelope.sender_device; 1 for 0)
  uint64_t group_id = 0;  // a group message (waiting for its sender key); 0 = direct
};

// Creates `dir` (and missing parents) and makes it private: mode 0700 from its creation on,
// and tightened to 0700 when it exists with looser permissions. INTERNAL on failure.
Status EnsurePrivateDirectory(const std::string& dir);

class LocalStore {
 public:
  // Opens or creates `path` and its schema. The database file (and SQLite's -wal, -shm and
  // -journal files, which inherit its mode) is created 0600 before SQLite opens it; an
  // existing one is tightened to 0600. INTERNAL on failure.
  static Result<std::unique_ptr<LocalStore>> Open(const std::string& path);
  ~LocalStore();

  // RAII transaction. Commit() returns the COMMIT status; without it the destructor rolls
  // back. A nested Transaction is a SAVEPOINT: rolling it back undoes only its own writes;
  // committing it makes them part of the enclosing transaction.
  class Transaction {
   public:
    explicit Transaction(LocalStore& store);
    ~Transaction();
    Status Commit();

   private:
    LocalStore& store_;
    int depth_ = 0;
    bool done_ = false;
  };

  // kv: small named values.
  Result<std::optional<std::string>> Get(std::string_view key) const;
  Status Put(std::string_view key, std::string_view value);
  Status Delete(std::string_view key);
  uint64_t GetU64(std::string_view key, uint64_t fallback = 0) const;
  Status PutU64(std::string_view key, uint64_t value);

  uint64_t Cursor() const { return GetU64("cursor"); }
  Status SetCursor(uint64_t cursor) { return PutU64("cursor", cursor); }

  // Received messages (and receipts), keyed by server id. False when the id was stored
  // before (nothing changes).
  Result<bool> InsertIncoming(const StoredIncoming& m);
  std::vector<StoredIncoming> Incoming(uint64_t after_id, size_t limit) const;

  // Send queue.
  Result<int64_t> Enqueue(const QueuedSend& s);
  std::vector<QueuedSend> Queue() const;
  Result<std::optional<QueuedSend>> FindQueued(std::string_view idem_key) const;
  // Fixes the body to send (and whether the SEND carries Send.adds_contact).
  Status SetWireBody(int64_t seq, std::string_view body, bool adds_contact = false);
  Status SetAttempts(int64_t seq, uint32_t attempts);
  Status SetPayload(int64_t seq, std::string_view payload);
  // The newest queued entry for `recipient` (the tail of its FIFO), if any.
  Result<std::optional<QueuedSend>> LastQueuedFor(uint64_t recipient) const;
  // Removes it from the queue; when `message_id` != 0 records it in the sent history.
  Status Dequeue(int64_t seq, uint64_t message_id, int64_t acked_ms);

  // Signal stores (record bytes are libsignal's serialisations).
  Result<std::optional<std::string>> LoadSession(std::string_view name, int32_t device) const;
  Status StoreSession(std::string_view name, int32_t device, std::string_view record);
  bool ContainsSession(std::string_view name, int32_t device) const;
  Status DeleteSession(std::string_view name, int32_t device);
  Status DeleteAllSessions(std::string_view name);
  std::vector<int32_t> SubDeviceSessions(std::string_view name) const;

  Result<std::optional<std::string>> LoadPreKey(uint32_t id) const;
  Status StorePreKey(uint32_t id, std::string_view record);
  Status RemovePreKey(uint32_t id);
  uint32_t CountPreKeys() const;

  Result<std::optional<std::string>> LoadSignedPreKey(uint32_t id) const;
  Status StoreSignedPreKey(uint32_t id, std::string_view record);
  Status RemoveSignedPreKey(uint32_t id);

  Result<std::optional<std::string>> LoadIdentity(std::string_view name) const;
  Status SaveIdentity(std::string_view name, std::string_view key);
  Status ForgetIdentity(std::string_view name);

  // Identity verification (safety numbers): the key the user marked verified for `name`,
  // and the newest key of `name` that was refused because it differs from a verified one
  // (waiting for the user's explicit approval). An empty key clears the entry.
  Result<std::optional<std::string>> VerifiedIdentity(std::string_view name) const;
  Status SetVerifiedIdentity(std::string_view name, std::string_view key);
  Result<std::optional<std::string>> BlockedIdentity(std::string_view name) const;
  Status SetBlockedIdentity(std::string_view name, std::string_view key);

  // Ciphertexts kept for a retry (see Undecryptable). Store replaces an entry with the same id.
  Status StoreUndecryptable(const Undecryptable& u);
  std::vector<Undecryptable> UndecryptableFrom(uint64_t peer) const;
  Status RemoveUndecryptable(uint64_t id);
  // The senders of kept ciphertexts that came from a linked device (device > 1).
  std::vector<uint64_t> PeersWithKeptFromLinkedDevices() const;
  // One entry (peer, group_id, device) per sender device and group of kept group messages.
  std::vector<Undecryptable> KeptGroupMessages() const;
  // Rewrites a stored incoming message (after a successful retry).
  Status UpdateIncoming(const StoredIncoming& m);
  // The sent-history entry of a message to `recipient` whose id, or the id of one of its
  // copies (a re-send's too), is `message_id`.
  Result<std::optional<SentMessage>> FindSent(uint64_t recipient, uint64_t message_id) const;
  // Records the ids of a sent message's copies (SEND_ACK.copy_ids, also those of a re-send
  // of it) and, when not empty, the sealed plaintext they encrypt. `idem` names the message.
  Status RecordSentCopies(std::string_view idem, const std::vector<SentCopy>& copies,
                          std::string_view sealed);
  // A transcript (stored as incoming message `local`) of a message another device of this
  // account sent to `peer`, whose copies have `copy_ids`; FindTranscriptCopy: the transcript
  // of the message one of whose copies is `id`.
  Status RecordTranscriptCopies(uint64_t local, uint64_t peer,
                                const std::vector<uint64_t>& copy_ids);
  Result<std::optional<uint64_t>> FindTranscriptCopy(uint64_t peer, uint64_t id) const;

  // Contacts (Send.adds_contact, docs/protocol.md Client conventions 12): the recipients
  // for which the server acknowledged a SEND carrying the flag (the server then counts this
  // user as having written to them for good), with that message's id and when its SEND_ACK
  // came. Marking a recipient again keeps the first record.
  Result<bool> ContactAdded(uint64_t peer) const;
  Status MarkContactAdded(uint64_t peer, uint64_t message_id, int64_t acked_ms);

  // Test-only fault injection: every call of the operation named `op` fails with INTERNAL
  // (as a full disk or a corrupt database would). Names: "load_session", "store_session",
  // "load_identity", "insert_incoming". Also set from $IRIS_TEST_LOCAL_STORE_FAULT at
  // Open(). Empty clears.
  void SetFaultForTesting(std::string op) { fault_ = std::move(op); }

  Result<std::optional<std::string>> LoadSenderKey(std::string_view group, std::string_view name,
                                                   int32_t device) const;
  Status StoreSenderKey(std::string_view group, std::string_view name, int32_t device,
                        std::string_view record);
  Status DeleteSenderKey(std::string_view group, std::string_view name, int32_t device);

  // Groups (LocalGroup) and, per group, the members that hold this user's current sender
  // key (it was distributed to them); rotation clears the holders.
  Status PutGroup(const LocalGroup& g);
  Result<std::optional<LocalGroup>> GetGroup(uint64_t id) const;
  std::vector<LocalGroup> Groups() const;
  std::vector<uint64_t> GroupKeyHolders(uint64_t group) const;
  Status AddGroupKeyHolder(uint64_t group, uint64_t member);
  Status RemoveGroupKeyHolder(uint64_t group, uint64_t member);
  Status ClearGroupKeyHolders(uint64_t group);

 private:
  explicit LocalStore(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);
  Status Error(const char* what) const;
  bool Faulty(std::string_view op) const { return !fault_.empty() && fault_ == op; }

  sqlite3* db_;
  int tx_depth_ = 0;
  std::string fault_;
};

}  // namespace iris::client
