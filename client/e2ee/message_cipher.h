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
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "client/e2ee/body_format.h"
#include "client/e2ee/safety_number.h"
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

  // Sessions are per device of a user (libsignal address: the user id in decimal, the
  // device id); device 1 is the primary device, and the only one of a user without linked
  // devices.
  bool HasSession(uint64_t user, uint32_t device = 1) const;
  // X3DH: builds a session with device `bundle.device_id()` (0 = 1) of `bundle.user()` from
  // its fetched bundle (verifies the signed prekey's signature). FORBIDDEN when the
  // identity key is not trusted (device 1: differs from a verified one; a linked device:
  // not the key its user's verified device list names); BAD_REQUEST for a malformed bundle.
  Status ProcessBundle(const v1::KeysBundle& bundle);
  // The wire body for `text` to device 1 of `user` (precondition: HasSession(user)). The plaintext
  // (body_format.h format 2) carries `content_type` (kContentText, or kContentReceipt with
  // a serialised v1::ReceiptBody as `text`; EncryptControl for kContentControl), this
  // device's clock and the next value of the per-recipient conversation counter (advanced
  // in the same local transaction; control content carries 0 and does not advance it).
  Result<std::string> Encrypt(uint64_t user, std::string_view text, uint8_t content_type = 1);
  // The same plaintext (one conversation counter value) encrypted for each of `devices` of
  // `user`, in that order (precondition: a session with each).
  // *sealed (when not null) receives the sealed plaintext, for EncryptSealed.
  Result<std::vector<std::string>> EncryptForDevices(uint64_t user,
                                                     const std::vector<uint32_t>& devices,
                                                     std::string_view text,
                                                     uint8_t content_type = 1,
                                                     std::string* sealed = nullptr);
  // Encrypts a plaintext sealed before (EncryptForDevices) again, for `devices` of `user`:
  // the same message (conversation counter and clock) for a changed set of devices.
  Result<std::vector<std::string>> EncryptSealed(uint64_t user,
                                                 const std::vector<uint32_t>& devices,
                                                 std::string_view sealed);

  struct Decrypted {
    std::string text;
    bool prekey_message = false;
    bool consumed_prekey = false;  // a local one-time prekey was used up
    uint8_t content_type = 1;      // kContentText, kContentReceipt (text = ReceiptBody) or
                                   // kContentControl (`control` set, `text` empty)
    std::optional<ControlContent> control;
    // From plaintext format 2 (all 0/false for format 1 and for control content): the
    // sender's clock, its conversation counter, how many earlier messages of the sender's
    // never arrived here (a gap in the counter: dropped by the server, or still to come out
    // of order), and whether this one arrived after a later one (the counter went backwards).
    uint64_t sender_ms = 0;
    uint64_t counter = 0;
    uint64_t missing = 0;
    bool reordered = false;
  };
  // Decrypts a wire body from `sender`. BAD_REQUEST for a malformed body or failed
  // decryption, FORBIDDEN for an untrusted (changed) identity key; the message says which.
  // `device` is the sending device (Envelope.sender_device; 0 = 1). The conversation order
  // is checked per sending device.
  Result<Decrypted> Decrypt(uint64_t sender, std::string_view body, uint32_t device = 1);

  // libsignal's error code of the last failed Decrypt (0 when the body itself was malformed).
  int last_decrypt_error() const { return last_decrypt_error_; }

  // ---- Verified identities (safety numbers; trust rule in signal_store.h) ----

  struct ContactIdentity {
    std::string key;          // the saved (trusted) identity key; empty when none yet
    std::string fingerprint;  // KeyFingerprint(key)
    bool verified = false;    // the user marked exactly this key verified
    std::string refused_key;  // a newer key refused because `key` was verified; or empty
    std::string refused_fingerprint;
  };
  Result<ContactIdentity> Contact(uint64_t user) const;
  // The safety number of this account (`local_user`) with `key` of `user`.
  Result<SafetyNumber> SafetyNumberFor(uint64_t local_user, uint64_t user,
                                       std::string_view key) const;
  // Marks the saved key of `user` verified. NOT_FOUND when no key of `user` is known yet.
  Status MarkVerified(uint64_t user);
  // Approves the refused key of `user` whose fingerprint is `fingerprint` (its
  // KeyFingerprint, or the 60-digit safety number computed with it; spaces ignored): it
  // becomes the saved, verified key and the old sessions are dropped. Returns false when
  // `fingerprint` names the key already saved (nothing to do). BAD_REQUEST when it matches
  // neither (the message names the refused key's fingerprint), NOT_FOUND when no key was
  // refused and the fingerprint is not the saved one either.
  Result<bool> TrustIdentity(uint64_t local_user, uint64_t user, std::string_view fingerprint);
  // Records `key` as the refused key of `user` (after Decrypt or ProcessBundle returned
  // FORBIDDEN), so that TrustIdentity can name it.
  Status NoteRefusedIdentity(uint64_t user, std::string_view key);
  // True when `key` was the saved key of `user` until TrustIdentity approved another one: a
  // message carrying it now is an old one replayed (the server delivers in order), never a
  // key change to offer for approval. An unreadable store reads as false.
  bool WasReplacedIdentity(uint64_t user, std::string_view key) const;
  // The sender's identity key in a prekey message body; empty for other bodies.
  std::string PreKeyMessageIdentity(std::string_view body) const;
  // The saved identity key of `user` (empty when none; an unreadable store reads as none).
  std::string SavedIdentity(uint64_t user, uint32_t device = 1) const;
  // The wire body of a control message to `user` (precondition: HasSession(user)):
  // format 2, content type kContentControl, conversation counter 0 (not advanced).
  Result<std::string> EncryptControl(uint64_t user, const ControlContent& control);
  // Drops every session with `user` (the next message builds a new one from a fresh bundle).
  Status ResetSession(uint64_t user);
  // This account's public identity key (serialised).
  std::string LocalIdentityKey() const;

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

  // ---- Groups: Sender Keys (docs/protocol.md, "Client-side group encryption") ----

  // This account's (`self`) sender-key distribution message for `group`, serialised; a
  // fresh sender key is made first when there is none (none yet, or after RotateSenderKey).
  // It carries the current chain iteration: whoever processes it decrypts this account's
  // group messages from that point on.
  Result<std::string> SenderKeyDistributionFor(uint64_t group, uint64_t self);
  // Forgets this account's sender key for `group`: the next SenderKeyDistributionFor makes
  // a new one, which those who hold the old one cannot derive.
  Status RotateSenderKey(uint64_t group, uint64_t self);
  // `given`: a distribution of this device's sender key for `group` handed to a member
  // before. Returns `given` again when it is of the current key and at most
  // kMaxSenderKeyCatchUp messages back (libsignal derives at most 2,000 keys ahead), so the
  // member's device linked later reads the group messages it was sent since; otherwise the
  // current distribution (from now on).
  Result<std::string> SenderKeyDistributionSince(uint64_t group, uint64_t self,
                                                 std::string_view given);
  static constexpr uint32_t kMaxSenderKeyCatchUp = 1'900;
  // Whether two serialised distributions are of the same key (same id).
  bool SameSenderKey(std::string_view a, std::string_view b) const;
  bool HasSenderKey(uint64_t group, uint64_t self) const;
  // A group SEND body (body_format.h type 0x04): `text` in plaintext format 2 (content type
  // text, conversation counter 0) encrypted once with this account's sender key for
  // `group` (precondition: SenderKeyDistributionFor was called, so the key exists).
  Result<std::string> EncryptGroup(uint64_t group, uint64_t self, std::string_view text);
  // Stores the sender key that `sender` distributed (kContentSenderKey content, decrypted
  // from a pairwise message of `sender`). BAD_REQUEST when malformed.
  Status ProcessSenderKeyDistribution(uint64_t sender, const SenderKeyDistribution& d,
                                      uint32_t device = 1);
  // Decrypts a group message body of `sender` in `group`. BAD_REQUEST when malformed or
  // it does not decrypt: SG_ERR_NO_SESSION (last_decrypt_error, "no sender key" in the
  // message) when no sender key of
  // `sender` for this key id is held (never distributed to this account, e.g. after it was
  // removed and the sender rotated).
  Result<Decrypted> DecryptGroup(uint64_t group, uint64_t sender, std::string_view body,
                                 uint32_t device = 1);

  // ---- Devices (docs/protocol.md appendix 20) ----

  // `list` signed with this device's identity key (the account's primary device signs its
  // device list): signature = XEdDSA over DeviceListSigningInput(serialized list).
  Result<v1::SignedDeviceList> SignDeviceList(const v1::DeviceList& list) const;
  // The device list of `user` in `signed_list`, once its signature verifies with
  // `primary_identity_key` (the identity key of `user`'s device 1 this account trusts) and
  // the list names `user`, lists device 1 with exactly that key and has the shape the
  // protocol allows. FORBIDDEN ("device list ... not signed by ...") for a bad signature
  // or a list whose device 1 has another key: a list the server made up or changed;
  // BAD_REQUEST for a malformed one.
  Result<v1::DeviceList> VerifyDeviceList(const v1::SignedDeviceList& signed_list, uint64_t user,
                                          std::string_view primary_identity_key) const;

  // The verified device list of `user` kept here (none: the user has device 1 only, as far
  // as this account knows). An unreadable store reads as none.
  std::optional<v1::DeviceList> DeviceListOf(uint64_t user) const;
  // Keeps `list` (verified by the caller) as the device list of list.user(): the sessions
  // and saved identities of that user's linked devices not in it are dropped. A list older
  // than the one kept (a lower version) is ignored: false then.
  Result<bool> SaveDeviceList(const v1::DeviceList& list);
  // Forgets the device list of `user` (it has device 1 only): the sessions and identities of
  // its linked devices are dropped.
  Status ForgetDeviceList(uint64_t user);
  // The devices of `user` this account writes to: those of its device list, or {1}.
  std::vector<uint32_t> DevicesOf(uint64_t user) const;

  // This device's id in its account (1 until the client learns it from WELCOME): it names
  // this account's own sender keys and is left out of the devices a send to oneself is
  // encrypted for.
  void set_local_device(uint32_t device) { local_device_ = device == 0 ? 1 : device; }
  uint32_t local_device() const { return local_device_; }

  // Hex SHA-256 of this account's public identity key (what users compare out of band).
  std::string IdentityFingerprint() const;
  uint32_t registration_id() const { return registration_id_; }

 private:
  explicit MessageCipher(LocalStore& store) : store_(store) {}
  Status Init();
  Status StoreNewSignedPreKey(ratchet_identity_key_pair* identity, uint32_t id, int64_t now_ms);
  Result<std::string> SealContent(uint64_t user, uint8_t content_type, std::string_view data);
  Status CheckOrder(const std::string& peer, const Content& c, Decrypted* out);

  LocalStore& store_;
  signal_context* ctx_ = nullptr;
  signal_protocol_store_context* stores_ = nullptr;
  uint32_t registration_id_ = 0;
  int last_decrypt_error_ = 0;
  uint32_t local_device_ = 1;
};

// What a device list's signature covers: "iris-device-list-v1" followed by the serialized
// DeviceList (docs/protocol.md appendix 20).
std::string DeviceListSigningInput(std::string_view list);

// libsignal's error code as text ("SG_ERR_INVALID_MAC", ...).
const char* SignalErrorName(int code);

}  // namespace iris::client::e2ee
