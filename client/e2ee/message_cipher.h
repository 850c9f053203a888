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
struct signal_protocol_store_context;

namespace iris::client::e2ee {

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
  // The wire body for `text` to `user` (precondition: HasSession(user)).
  Result<std::string> Encrypt(uint64_t user, std::string_view text);

  struct Decrypted {
    std::string text;
    bool prekey_message = false;
    bool consumed_prekey = false;  // a local one-time prekey was used up
  };
  // Decrypts a wire body from `sender`. BAD_REQUEST for a malformed body or failed
  // decryption, FORBIDDEN for an untrusted (changed) identity key; the message says which.
  Result<Decrypted> Decrypt(uint64_t sender, std::string_view body);

  // Forgets the trusted identity key and the sessions of `user` (accepts a new identity).
  Status ForgetIdentity(uint64_t user);

  // Hex SHA-256 of this account's public identity key (what users compare out of band).
  std::string IdentityFingerprint() const;
  uint32_t registration_id() const { return registration_id_; }

 private:
  explicit MessageCipher(LocalStore& store) : store_(store) {}
  Status Init();

  LocalStore& store_;
  signal_context* ctx_ = nullptr;
  signal_protocol_store_context* stores_ = nullptr;
  uint32_t registration_id_ = 0;
};

// libsignal's error code as text ("SG_ERR_INVALID_MAC", ...).
const char* SignalErrorName(int code);

}  // namespace iris::client::e2ee
