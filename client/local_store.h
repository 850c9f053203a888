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
};
constexpr uint8_t kQueuedMessage = 0;
constexpr uint8_t kQueuedReceipt = 1;        // the protocol's RECEIPT frame (for the server)
constexpr uint8_t kQueuedSealedReceipt = 2;  // the receipt encrypted to the author, in a SEND

struct StoredIncoming {
  uint64_t id = 0;
  uint64_t peer = 0;
  uint64_t sent_at_ms = 0;
  uint8_t kind = 0;  // v1::Kind
  std::string body;  // plaintext for messages; ReceiptBody bytes for receipts
  bool ok = true;
  std::string error;
};

class LocalStore {
 public:
  // Opens or creates `path` and its schema. INTERNAL on failure.
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
  Status SetWireBody(int64_t seq, std::string_view body);
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

  Result<std::optional<std::string>> LoadSenderKey(std::string_view group, std::string_view name,
                                                   int32_t device) const;
  Status StoreSenderKey(std::string_view group, std::string_view name, int32_t device,
                        std::string_view record);

 private:
  explicit LocalStore(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql);
  Status Error(const char* what) const;

  sqlite3* db_;
  int tx_depth_ = 0;
};

}  // namespace iris::client
