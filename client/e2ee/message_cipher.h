#pragma once
// MessageCipher: the Signal Protocol for one local account (device 1 of user N): key
// generation (identity, signed prekey, one-time prekeys), X3DH session set-up from a
// fetched bundle, Double Ratchet encryption and decryption of message bodies in the format
// of body_format.h. All key material and sessions live in the LocalStore (SQLite) through
// signal_store.h; the crypto primitives come from crypto_provider.h (OpenSSL 3).
//
// Every call that changes Signal state writes through to the LocalStore immediately; wrap
// a call in a LocalStore::Transaction to make it atomic with other local writes (the
// client does: "encrypt + store the ciphertext", "decrypt + store the message + cursor").
//
// Thread-safety: none; the owner serialises calls (and the LocalStore's). `store` must
// outlive the MessageCipher.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "client/local_store.h"
#include "common/status.h"
#include "iris/v1/client.pb.h"

struct signal_context;
struct ratchet_identity_key_pair;
struct signal_protocol_store_context;

namespace iris::client::e2ee {

struct Content;  // body_format.h

class MessageCipher {
 public:
  // Opens the account in `store`, generating the registration id, identity key pair and
  // a first signed prekey when the store has none (committed before it returns).
  static Result<std::unique_ptr<MessageCipher>> Open(LocalStore& store);
  ~MessageCipher();

  // A KEYS_UPLOAD carrying the identity key, the current signed prekey and `new_prekeys`
  // freshly generated one-time prekeys (their private halves are stored first).
  // request_id is left 0. new_prekeys <= 100 (one frame's limit).
  Result<v1::KeysUpload> PrepareUpload(uint32_t new_prekeys);

  bool HasSession(uint64_t user) const;
  // X3DH: builds a session with `bundle.user()` from its fetched bundle (verifies the signed
  // prekey's signature). FORBIDDEN when the user's identity key differs from the one
  // trusted before; BAD_REQUEST for a malformed bundle.
  Status ProcessBundle(const v1::KeysBundle& bundle);
  // The wire body for `text` to `user` (precondition: HasSession(user)). The plaintext
  // (body_format.h format 2) carries `content_type` (kContentText, or kContentReceipt with
  // a serialised v1::ReceiptBody as `text`), this device's clock and the next value of the
  // per-recipient conversation counter (advanced in the same local transaction).
  Result<std::string> Encrypt(uint64_t user, std::string_view text, uint8_t content_type = 1);

  struct Decrypted {
    std::string text;
    bool prekey_message = false;
    bool consumed_prekey = false;  // a local one-time prekey was used up
    uint8_t content_type = 1;      // kContentText, or kContentReceipt (text = ReceiptBody)
    // From plaintext format 2 (all 0/false for format 1): the sender's clock, its
    // conversation counter, how many earlier messages of the sender's never arrived here
    // (a gap in the counter: dropped by the server, or still to come out of order), and
    // whether this one arrived after a later one (the counter went backwards).
    uint64_t sender_ms = 0;
    uint64_t counter = 0;
    uint64_t missing = 0;
    bool reordered = false;
  };
  // Decrypts a wire body from `sender`. BAD_REQUEST for a malformed body or failed
  // decryption, FORBIDDEN for an untrusted (changed) identity key; the message says which.
  Result<Decrypted> Decrypt(uint64_t sender, std::string_view body);

  // Signed prekey rotation: when the current signed prekey is `rotate_every_ms` old at
  // `now_ms`, makes a new one (id = the old id + 1, wrapping in libsignal's range) and keeps
  // the old private key `keep_previous_ms` longer for sessions in flight, then deletes it.
  // True when a new signed prekey was made (the caller uploads it).
  Result<bool> RotateSignedPreKeyIfDue(int64_t now_ms, int64_t rotate_every_ms,
                                       int64_t keep_previous_ms);
  uint32_t SignedPreKeyId() const;
  // Deletes the private half of one-time prekey `id` (one the server handed out to this
  // account itself, which nobody else will use).
  Status DiscardPreKey(uint32_t id);

  // Forgets the trusted identity key and the sessions of `user` (accepts a new identity).
  Status ForgetIdentity(uint64_t user);

  // Hex SHA-256 of this account's public identity key (what users compare out of band).
  std::string IdentityFingerprint() const;
  uint32_t registration_id() const { return registration_id_; }

 private:
  explicit MessageCipher(LocalStore& store) : store_(store) {}
  Status Init();
  Status StoreNewSignedPreKey(ratchet_identity_key_pair* identity, uint32_t id, int64_t now_ms);
  Result<std::string> SealContent(uint64_t user, uint8_t content_type, std::string_view data);
  Status CheckOrder(uint64_t sender, const Content& c, Decrypted* out);

  LocalStore& store_;
  signal_context* ctx_ = nullptr;
  signal_protocol_store_context* stores_ = nullptr;
  uint32_t registration_id_ = 0;
};

// libsignal's error code as text ("SG_ERR_INVALID_MAC", ...).
const char* SignalErrorName(int code);

}  // namespace iris::client::e2ee
