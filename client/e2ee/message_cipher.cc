#include "client/e2ee/message_cipher.h"

#include <group_cipher.h>
#include <group_session_builder.h>
#include <key_helper.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <protocol.h>
#include <sender_key.h>
#include <sender_key_record.h>
#include <sender_key_state.h>
#include <session_builder.h>
#include <session_cipher.h>
#include <session_pre_key.h>
#include <signal_protocol.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>

#include "client/e2ee/body_format.h"
#include "client/e2ee/crypto_provider.h"
#include "client/e2ee/signal_store.h"

namespace iris::client::e2ee {
namespace {

constexpr const char* kSignedPreKeyId = "signed_prekey_id";
constexpr const char* kNextPreKeyId = "next_prekey_id";
// Signed prekey rotation: when the current one was made, and the one it replaced (kept
// for sessions in flight until kPreviousSignedPreKeyRetired + the grace period).
constexpr const char* kSignedPreKeyCreated = "signed_prekey_created_ms";
constexpr const char* kPreviousSignedPreKeyId = "previous_signed_prekey_id";
constexpr const char* kPreviousSignedPreKeyRetired = "previous_signed_prekey_retired_ms";
// Conversation order (body_format.h, plaintext format 2), per peer user id.
constexpr const char* kOutEpoch = "conv_out_epoch/";
constexpr const char* kOutCounter = "conv_out_counter/";
constexpr const char* kInEpoch = "conv_in_epoch/";
constexpr const char* kInCounter = "conv_in_counter/";

// The libsignal device id of `device` (0 = 1).
int32_t DeviceId(uint32_t device) { return device == 0 ? 1 : static_cast<int32_t>(device); }
// The key of per-peer conversation state (counters): "U" for device 1, "U.d" for others.
std::string PeerKey(uint64_t user, uint32_t device) { return IdentityName(user, device); }
constexpr uint32_t kMaxPreKeyId = 0xFFFFFE;  // libsignal's PRE_KEY_MEDIUM_MAX_VALUE - 1

// libsignal objects are reference counted; this releases one reference on scope exit.
template <typename T>
struct Ref {
  T* p = nullptr;
  ~Ref() {
    if (p != nullptr) SIGNAL_UNREF(p);
  }
};

struct Buffer {
  signal_buffer* b = nullptr;
  ~Buffer() {
    if (b != nullptr) signal_buffer_bzero_free(b);
  }
  std::string str() const {
    return b == nullptr ? std::string()
                        : std::string(reinterpret_cast<const char*>(signal_buffer_const_data(b)),
                                      signal_buffer_len(b));
  }
};

std::recursive_mutex& SignalLock() {
  static std::recursive_mutex mu;
  return mu;
}
void Lock(void*) { SignalLock().lock(); }
void Unlock(void*) { SignalLock().unlock(); }

Status SignalError(const std::string& what, int code) {
  std::string msg = what + ": " + SignalErrorName(code);
  if (code == SG_ERR_UNTRUSTED_IDENTITY) return Forbidden(msg);
  if (code == SG_ERR_NOMEM || code == SG_ERR_UNKNOWN) return Internal(msg);
  return BadRequest(msg);
}

const uint8_t* U8(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

uint64_t NowMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// A uniformly random prekey id in libsignal's range 1..PRE_KEY_MEDIUM_MAX_VALUE-1, so that
// a reinstall does not reuse the ids of the installation before it.
Result<uint32_t> RandomPreKeyId() {
  uint32_t v = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof(v)) != 1) {
    return Internal("no randomness for a prekey id");
  }
  return 1 + v % kMaxPreKeyId;
}

// The id after `id`, wrapping within 1..kMaxPreKeyId.
uint32_t NextPreKeyId(uint32_t id, uint32_t step = 1) {
  return static_cast<uint32_t>((uint64_t{id} - 1 + step) % kMaxPreKeyId) + 1;
}

std::string SerializePublic(const ec_public_key* key) {
  Buffer b;
  if (ec_public_key_serialize(&b.b, key) != 0) return {};
  return b.str();
}

}  // namespace

const char* SignalErrorName(int code) {
  switch (code) {
    case SG_ERR_NOMEM: return "out of memory";
    case SG_ERR_INVAL: return "invalid argument";
    case SG_ERR_DUPLICATE_MESSAGE: return "duplicate message";
    case SG_ERR_INVALID_KEY: return "invalid key";
    case SG_ERR_INVALID_KEY_ID: return "unknown key id (one-time prekey already used?)";
    case SG_ERR_INVALID_MAC: return "invalid MAC";
    case SG_ERR_INVALID_MESSAGE: return "invalid message";
    case SG_ERR_INVALID_VERSION: return "invalid version";
    case SG_ERR_LEGACY_MESSAGE: return "legacy message";
    case SG_ERR_NO_SESSION: return "no session";
    case SG_ERR_STALE_KEY_EXCHANGE: return "stale key exchange";
    case SG_ERR_UNTRUSTED_IDENTITY: return "untrusted identity key (the user's key changed)";
    case SG_ERR_VRF_SIG_VERIF_FAILED: return "signature verification failed";
    case SG_ERR_INVALID_PROTO_BUF: return "malformed message";
    default: return "signal error";
  }
}

Result<std::unique_ptr<MessageCipher>> MessageCipher::Open(LocalStore& store) {
  std::unique_ptr<MessageCipher> c(new MessageCipher(store));
  IRIS_RETURN_IF_ERROR(c->Init());
  return c;
}

MessageCipher::~MessageCipher() {
  if (stores_ != nullptr) signal_protocol_store_context_destroy(stores_);
  if (ctx_ != nullptr) signal_context_destroy(ctx_);
}

Status MessageCipher::Init() {
  if (signal_context_create(&ctx_, this) != 0) return Internal("signal_context_create failed");
  const signal_crypto_provider provider = OpenSslCryptoProvider();
  if (signal_context_set_crypto_provider(ctx_, &provider) != 0 ||
      signal_context_set_locking_functions(ctx_, Lock, Unlock) != 0) {
    return Internal("cannot configure the Signal context");
  }
  if (signal_protocol_store_context_create(&stores_, ctx_) != 0 ||
      InstallSignalStores(stores_, &store_) != 0) {
    return Internal("cannot create the Signal stores");
  }
  registration_id_ = static_cast<uint32_t>(store_.GetU64(kRegistrationId));
  if (registration_id_ != 0) return Status::Ok();

  // First use: the account's long-term keys.
  LocalStore::Transaction tx(store_);
  uint32_t reg = 0;
  int r = signal_protocol_key_helper_generate_registration_id(&reg, 0, ctx_);
  if (r != 0) return SignalError("generate registration id", r);
  if (reg == 0) reg = 1;
  Ref<ratchet_identity_key_pair> identity;
  r = signal_protocol_key_helper_generate_identity_key_pair(&identity.p, ctx_);
  if (r != 0) return SignalError("generate identity key", r);
  Buffer pub, priv;
  if (ec_public_key_serialize(&pub.b, ratchet_identity_key_pair_get_public(identity.p)) != 0 ||
      ec_private_key_serialize(&priv.b, ratchet_identity_key_pair_get_private(identity.p)) != 0) {
    return Internal("cannot serialise the identity key");
  }
  IRIS_RETURN_IF_ERROR(store_.Put(kIdentityPublicKey, pub.str()));
  // Straight from libsignal's buffer (wiped on free): no std::string copy of the private key.
  IRIS_RETURN_IF_ERROR(
      store_.Put(kIdentityPrivateKey,
                 std::string_view(reinterpret_cast<const char*>(signal_buffer_const_data(priv.b)),
                                  signal_buffer_len(priv.b))));
  IRIS_ASSIGN_OR_RETURN(const uint32_t spk_id, RandomPreKeyId());
  IRIS_RETURN_IF_ERROR(StoreNewSignedPreKey(identity.p, spk_id, static_cast<int64_t>(NowMs())));
  IRIS_ASSIGN_OR_RETURN(const uint32_t first_prekey, RandomPreKeyId());
  IRIS_RETURN_IF_ERROR(store_.PutU64(kNextPreKeyId, first_prekey));
  IRIS_RETURN_IF_ERROR(store_.PutU64(kRegistrationId, reg));
  IRIS_RETURN_IF_ERROR(tx.Commit());
  registration_id_ = reg;
  return Status::Ok();
}

Result<v1::KeysUpload> MessageCipher::PrepareUpload(uint32_t new_prekeys) {
  if (new_prekeys > 100) return BadRequest("at most 100 one-time prekeys per upload");
  LocalStore::Transaction tx(store_);
  v1::KeysUpload up;
  up.set_registration_id(registration_id_);
  IRIS_ASSIGN_OR_RETURN(auto identity, store_.Get(kIdentityPublicKey));
  if (!identity) return Internal("identity key missing");
  up.set_identity_key(*identity);

  const auto spk_id = static_cast<uint32_t>(store_.GetU64(kSignedPreKeyId));
  IRIS_ASSIGN_OR_RETURN(auto spk_record, store_.LoadSignedPreKey(spk_id));
  if (!spk_record) return Internal("signed prekey missing");
  Ref<session_signed_pre_key> spk;
  if (session_signed_pre_key_deserialize(&spk.p, U8(*spk_record), spk_record->size(), ctx_) != 0) {
    return Internal("stored signed prekey is malformed");
  }
  v1::SignedPreKey* out_spk = up.mutable_signed_prekey();
  out_spk->set_id(spk_id);
  out_spk->set_public_key(
      SerializePublic(ec_key_pair_get_public(session_signed_pre_key_get_key_pair(spk.p))));
  out_spk->set_signature(
      std::string(reinterpret_cast<const char*>(session_signed_pre_key_get_signature(spk.p)),
                  session_signed_pre_key_get_signature_len(spk.p)));

  if (new_prekeys > 0) {
    auto start = static_cast<uint32_t>(store_.GetU64(kNextPreKeyId, 1));
    if (start == 0 || start > kMaxPreKeyId) start = 1;
    signal_protocol_key_helper_pre_key_list_node* head = nullptr;
    const int r = signal_protocol_key_helper_generate_pre_keys(&head, start, new_prekeys, ctx_);
    if (r != 0) return SignalError("generate prekeys", r);
    Status st;
    for (auto* n = head; n != nullptr && st.ok(); n = signal_protocol_key_helper_key_list_next(n)) {
      session_pre_key* pk = signal_protocol_key_helper_key_list_element(n);
      Buffer rec;
      if (session_pre_key_serialize(&rec.b, pk) != 0) {
        st = Internal("cannot serialise a prekey");
        break;
      }
      const uint32_t id = session_pre_key_get_id(pk);
      st = store_.StorePreKey(id, rec.str());
      v1::PreKey* k = up.add_one_time_prekeys();
      k->set_id(id);
      k->set_public_key(SerializePublic(ec_key_pair_get_public(session_pre_key_get_key_pair(pk))));
    }
    signal_protocol_key_helper_key_list_free(head);
    IRIS_RETURN_IF_ERROR(st);
    IRIS_RETURN_IF_ERROR(store_.PutU64(kNextPreKeyId, NextPreKeyId(start, new_prekeys)));
  }
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return up;
}

bool MessageCipher::HasSession(uint64_t user, uint32_t device) const {
  const std::string name = std::to_string(user);
  signal_protocol_address addr{name.c_str(), name.size(), DeviceId(device)};
  return signal_protocol_session_contains_session(stores_, &addr) == 1;
}

Status MessageCipher::ProcessBundle(const v1::KeysBundle& b) {
  const int32_t device = DeviceId(b.device_id());
  const std::string who = "keys of user " + std::to_string(b.user()) +
                          (device > 1 ? " device " + std::to_string(device) : std::string());
  Ref<ec_public_key> identity, spk, otk;
  if (curve_decode_point(&identity.p, U8(b.identity_key()), b.identity_key().size(), ctx_) != 0) {
    return BadRequest(who + ": malformed identity key");
  }
  if (curve_decode_point(&spk.p, U8(b.signed_prekey().public_key()),
                         b.signed_prekey().public_key().size(), ctx_) != 0) {
    return BadRequest(who + ": malformed signed prekey");
  }
  uint32_t otk_id = 0;
  if (b.has_one_time_prekey() && !b.one_time_prekey().public_key().empty()) {
    if (curve_decode_point(&otk.p, U8(b.one_time_prekey().public_key()),
                           b.one_time_prekey().public_key().size(), ctx_) != 0) {
      return BadRequest(who + ": malformed one-time prekey");
    }
    otk_id = b.one_time_prekey().id();
  }
  Ref<session_pre_key_bundle> bundle;
  const std::string& sig = b.signed_prekey().signature();
  int r =
      session_pre_key_bundle_create(&bundle.p, b.registration_id(), device, otk_id, otk.p,
                                    b.signed_prekey().id(), spk.p, U8(sig), sig.size(), identity.p);
  if (r != 0) return SignalError(who, r);
  const std::string name = std::to_string(b.user());
  signal_protocol_address addr{name.c_str(), name.size(), device};
  session_builder* builder = nullptr;
  r = session_builder_create(&builder, stores_, &addr, ctx_);
  if (r != 0) return SignalError(who, r);
  LocalStore::Transaction tx(store_);
  r = session_builder_process_pre_key_bundle(builder, bundle.p);
  session_builder_free(builder);
  if (r != 0) return SignalError("X3DH with " + who, r);
  return tx.Commit();
}

Result<std::string> MessageCipher::Encrypt(uint64_t user, std::string_view text,
                                           uint8_t content_type) {
  IRIS_ASSIGN_OR_RETURN(std::vector<std::string> bodies,
                        EncryptForDevices(user, {1}, text, content_type));
  return std::move(bodies[0]);
}

Result<std::vector<std::string>> MessageCipher::EncryptForDevices(
    uint64_t user, const std::vector<uint32_t>& devices, std::string_view text,
    uint8_t content_type, std::string* sealed) {
  LocalStore::Transaction tx(store_);
  IRIS_ASSIGN_OR_RETURN(std::string plain, SealContent(user, content_type, text));
  IRIS_ASSIGN_OR_RETURN(std::vector<std::string> out, EncryptSealed(user, devices, plain));
  IRIS_RETURN_IF_ERROR(tx.Commit());
  if (sealed != nullptr) *sealed = std::move(plain);
  return out;
}

Result<std::vector<std::string>> MessageCipher::EncryptSealed(uint64_t user,
                                                              const std::vector<uint32_t>& devices,
                                                              std::string_view plain) {
  const std::string name = std::to_string(user);
  LocalStore::Transaction tx(store_);
  std::vector<std::string> out;
  for (uint32_t device : devices) {
    signal_protocol_address addr{name.c_str(), name.size(), DeviceId(device)};
    session_cipher* cipher = nullptr;
    int r = session_cipher_create(&cipher, stores_, &addr, ctx_);
    if (r != 0) return SignalError("encrypt", r);
    Ref<ciphertext_message> msg;
    r = session_cipher_encrypt(cipher, reinterpret_cast<const uint8_t*>(plain.data()), plain.size(),
                               &msg.p);
    session_cipher_free(cipher);
    if (r != 0) {
      return SignalError(
          "encrypt for user " + name + (device > 1 ? " device " + std::to_string(device) : ""), r);
    }
    SealedBody sealed;
    sealed.type = ciphertext_message_get_type(msg.p) == CIPHERTEXT_PREKEY_TYPE ? kBodyPreKeyMessage
                                                                               : kBodySignalMessage;
    signal_buffer* ser = ciphertext_message_get_serialized(msg.p);  // owned by msg
    sealed.ciphertext.assign(reinterpret_cast<const char*>(signal_buffer_const_data(ser)),
                             signal_buffer_len(ser));
    out.push_back(EncodeBody(sealed));
  }
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return out;
}

Result<MessageCipher::Decrypted> MessageCipher::Decrypt(uint64_t sender, std::string_view body,
                                                        uint32_t device) {
  last_decrypt_error_ = 0;
  IRIS_ASSIGN_OR_RETURN(SealedBody sealed, DecodeBody(body));
  const std::string name = std::to_string(sender);
  signal_protocol_address addr{name.c_str(), name.size(), DeviceId(device)};
  session_cipher* cipher = nullptr;
  int r = session_cipher_create(&cipher, stores_, &addr, ctx_);
  if (r != 0) return SignalError("decrypt", r);
  Decrypted out;
  Buffer plain;
  // A savepoint: a failed decryption leaves no trace in the Signal stores.
  LocalStore::Transaction tx(store_);
  const std::string from = "message from user " + name +
                           (DeviceId(device) > 1 ? " device " + std::to_string(device) : "");
  if (sealed.type == kBodyPreKeyMessage) {
    out.prekey_message = true;
    Ref<pre_key_signal_message> m;
    r = pre_key_signal_message_deserialize(&m.p, U8(sealed.ciphertext), sealed.ciphertext.size(),
                                           ctx_);
    if (r == 0) {
      const uint32_t before = store_.CountPreKeys();
      r = session_cipher_decrypt_pre_key_signal_message(cipher, m.p, nullptr, &plain.b);
      out.consumed_prekey = r == 0 && store_.CountPreKeys() < before;
    }
  } else {
    Ref<signal_message> m;
    r = signal_message_deserialize(&m.p, U8(sealed.ciphertext), sealed.ciphertext.size(), ctx_);
    if (r == 0) r = session_cipher_decrypt_signal_message(cipher, m.p, nullptr, &plain.b);
  }
  session_cipher_free(cipher);
  last_decrypt_error_ = r;
  if (r != 0) return SignalError("cannot decrypt " + from, r);
  IRIS_ASSIGN_OR_RETURN(Content content, DecodeContent(plain.str()));
  out.content_type = content.type;
  if (content.type == kContentControl) {
    // Control content carries no conversation counter (body_format.h): no order check.
    IRIS_ASSIGN_OR_RETURN(out.control, DecodeControl(content.data));
  } else if (content.type == kContentSenderKey || IsTranscript(content.type)) {
    // Neither: the caller processes it (ProcessSenderKeyDistribution, a transcript).
    out.text = std::move(content.data);
  } else {
    IRIS_RETURN_IF_ERROR(CheckOrder(PeerKey(sender, DeviceId(device)), content, &out));
    out.text = std::move(content.data);
  }
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return out;
}

std::string MessageCipher::IdentityFingerprint() const {
  return KeyFingerprint(LocalIdentityKey());
}

// ---- Verified identities ----

// ---- devices (docs/protocol.md appendix 20) ----

std::string DeviceListSigningInput(std::string_view list) {
  std::string out = "iris-device-list-v1";
  out.append(list);
  return out;
}

Result<v1::SignedDeviceList> MessageCipher::SignDeviceList(const v1::DeviceList& list) const {
  Ref<ratchet_identity_key_pair> identity;
  const int r = signal_protocol_identity_get_key_pair(stores_, &identity.p);
  if (r != 0) return SignalError("load the identity key pair", r);
  v1::SignedDeviceList out;
  out.set_list(list.SerializeAsString());
  const std::string input = DeviceListSigningInput(out.list());
  Buffer signature;
  const int s = curve_calculate_signature(ctx_, &signature.b,
                                          ratchet_identity_key_pair_get_private(identity.p),
                                          U8(input), input.size());
  if (s != 0) return SignalError("sign the device list", s);
  out.set_signature(signature.str());
  return out;
}

Result<v1::DeviceList> MessageCipher::VerifyDeviceList(
    const v1::SignedDeviceList& signed_list, uint64_t user,
    std::string_view primary_identity_key) const {
  const std::string who = "device list of user " + std::to_string(user);
  const std::string key(primary_identity_key);
  Ref<ec_public_key> primary;
  if (key.empty() || curve_decode_point(&primary.p, U8(key), key.size(), ctx_) != 0) {
    return BadRequest(who + ": no usable identity key of its device 1");
  }
  const std::string input = DeviceListSigningInput(signed_list.list());
  const std::string& sig = signed_list.signature();
  if (curve_verify_signature(primary.p, U8(input), input.size(), U8(sig), sig.size()) != 1) {
    return Forbidden(who + " is not signed by its device 1 (the server changed it?)");
  }
  v1::DeviceList list;
  if (!list.ParseFromString(signed_list.list())) return BadRequest(who + " is malformed");
  if (list.user() != user) return Forbidden(who + " names user " + std::to_string(list.user()));
  if (list.devices_size() < 1 || list.devices_size() > 5) {
    return BadRequest(who + " holds " + std::to_string(list.devices_size()) + " devices");
  }
  std::set<uint32_t> ids;
  bool primary_listed = false;
  for (const v1::Device& d : list.devices()) {
    if (d.id() < 1 || d.id() > 63 || !ids.insert(d.id()).second || d.identity_key().empty()) {
      return BadRequest(who + " has a malformed device entry");
    }
    if (d.id() == 1) primary_listed = d.identity_key() == key;
  }
  if (!primary_listed) return Forbidden(who + " lists device 1 with another identity key");
  return list;
}

std::optional<v1::DeviceList> MessageCipher::DeviceListOf(uint64_t user) const {
  auto stored = store_.Get(DeviceListKey(user));
  if (!stored.ok() || !stored->has_value()) return std::nullopt;
  v1::DeviceList list;
  if (!list.ParseFromString(**stored)) return std::nullopt;
  return list;
}

std::vector<uint32_t> MessageCipher::DevicesOf(uint64_t user) const {
  std::vector<uint32_t> out;
  if (auto list = DeviceListOf(user)) {
    for (const v1::Device& d : list->devices()) out.push_back(d.id());
  }
  if (out.empty()) out.push_back(1);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// Drops the sessions and saved identities of the linked devices of `user` that `keep` does
// not list (with the same key).
Status DropUnlistedDevices(LocalStore& store, uint64_t user, const v1::DeviceList* keep) {
  const std::string name = std::to_string(user);
  for (int32_t device : store.SubDeviceSessions(name)) {
    if (device <= 1) continue;
    bool listed = false;
    if (keep != nullptr) {
      for (const v1::Device& d : keep->devices()) listed |= static_cast<int32_t>(d.id()) == device;
    }
    if (!listed) IRIS_RETURN_IF_ERROR(store.DeleteSession(name, device));
  }
  // Identities: every linked device id the protocol allows.
  for (uint32_t device = 2; device <= 63; ++device) {
    const std::string id_name = IdentityName(user, device);
    IRIS_ASSIGN_OR_RETURN(auto saved, store.LoadIdentity(id_name));
    if (!saved) continue;
    bool same = false;
    if (keep != nullptr) {
      for (const v1::Device& d : keep->devices()) {
        same |= d.id() == device && d.identity_key() == *saved;
      }
    }
    if (!same) {
      IRIS_RETURN_IF_ERROR(store.ForgetIdentity(id_name));
      IRIS_RETURN_IF_ERROR(store.DeleteSession(name, static_cast<int32_t>(device)));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<bool> MessageCipher::SaveDeviceList(const v1::DeviceList& list) {
  if (auto old = DeviceListOf(list.user())) {
    if (old->version() > list.version()) return false;
    if (old->version() == list.version() && old->SerializeAsString() != list.SerializeAsString()) {
      return Forbidden("two different device lists of user " + std::to_string(list.user()) +
                       " carry version " + std::to_string(list.version()) +
                       ": the newer one is refused");
    }
  }
  LocalStore::Transaction tx(store_);
  IRIS_RETURN_IF_ERROR(store_.Put(DeviceListKey(list.user()), list.SerializeAsString()));
  IRIS_RETURN_IF_ERROR(DropUnlistedDevices(store_, list.user(), &list));
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return true;
}

Status MessageCipher::ForgetDeviceList(uint64_t user) {
  LocalStore::Transaction tx(store_);
  IRIS_RETURN_IF_ERROR(store_.Delete(DeviceListKey(user)));
  IRIS_RETURN_IF_ERROR(DropUnlistedDevices(store_, user, nullptr));
  return tx.Commit();
}

std::string MessageCipher::LocalIdentityKey() const {
  auto key = store_.Get(kIdentityPublicKey);
  if (!key.ok() || !key->has_value()) return {};
  return **key;
}

std::string MessageCipher::SavedIdentity(uint64_t user, uint32_t device) const {
  auto key = store_.LoadIdentity(IdentityName(user, device));
  if (!key.ok() || !key->has_value()) return {};
  return **key;
}

Result<MessageCipher::ContactIdentity> MessageCipher::Contact(uint64_t user) const {
  const std::string name = std::to_string(user);
  ContactIdentity c;
  IRIS_ASSIGN_OR_RETURN(auto saved, store_.LoadIdentity(name));
  IRIS_ASSIGN_OR_RETURN(auto verified, store_.VerifiedIdentity(name));
  IRIS_ASSIGN_OR_RETURN(auto refused, store_.BlockedIdentity(name));
  if (saved) {
    c.key = *saved;
    c.fingerprint = KeyFingerprint(c.key);
    c.verified = verified.has_value() && *verified == c.key;
  }
  if (refused && (!saved || *refused != *saved)) {
    c.refused_key = *refused;
    c.refused_fingerprint = KeyFingerprint(c.refused_key);
  }
  return c;
}

Result<SafetyNumber> MessageCipher::SafetyNumberFor(uint64_t local_user, uint64_t user,
                                                    std::string_view key) const {
  const std::string local = LocalIdentityKey();
  if (local.empty()) return Internal("identity key missing");
  if (local_user == 0) {
    return NotFound("this account's user id is not known yet: log in (connect) once first");
  }
  SafetyNumber sn = ComputeSafetyNumber(local_user, local, user, key);
  if (sn.digits.empty()) return Internal("cannot compute the safety number");
  return sn;
}

Status MessageCipher::MarkVerified(uint64_t user) {
  const std::string name = std::to_string(user);
  IRIS_ASSIGN_OR_RETURN(auto saved, store_.LoadIdentity(name));
  if (!saved) {
    return NotFound("no identity key of user " + name +
                    " is known yet: exchange a message with them first");
  }
  return store_.SetVerifiedIdentity(name, *saved);
}

namespace {

// The kv entry that marks `key` as a replaced identity key of user `name`.
std::string ReplacedIdentityName(const std::string& name, const std::string& key) {
  return "replaced_identity/" + name + "/" + KeyFingerprint(key);
}

}  // namespace

Result<bool> MessageCipher::TrustIdentity(uint64_t local_user, uint64_t user,
                                          std::string_view fingerprint) {
  const std::string name = std::to_string(user);
  const std::string want = NormalizeFingerprint(fingerprint);
  if (want.empty()) return BadRequest("name the fingerprint of the key to trust");
  auto matches = [&](const std::string& key) {
    if (KeyFingerprint(key) == want) return true;
    auto sn = SafetyNumberFor(local_user, user, key);
    return sn.ok() && sn->digits == want;
  };
  IRIS_ASSIGN_OR_RETURN(ContactIdentity c, Contact(user));
  if (!c.refused_key.empty() && matches(c.refused_key)) {
    LocalStore::Transaction tx(store_);
    // The key it replaces is remembered: a message carrying it later is a replay.
    if (!c.key.empty()) IRIS_RETURN_IF_ERROR(store_.PutU64(ReplacedIdentityName(name, c.key), 1));
    // Naming the exact key is a verification: it is pinned as the old one was.
    IRIS_RETURN_IF_ERROR(store_.SetVerifiedIdentity(name, c.refused_key));
    IRIS_RETURN_IF_ERROR(store_.SetBlockedIdentity(name, ""));
    IRIS_RETURN_IF_ERROR(store_.SaveIdentity(name, c.refused_key));
    // Sessions with the old key must not carry on: the next message to `user` starts a
    // new session, from a bundle that has to carry exactly the approved key.
    IRIS_RETURN_IF_ERROR(store_.DeleteAllSessions(name));
    IRIS_RETURN_IF_ERROR(tx.Commit());
    return true;
  }
  if (!c.key.empty() && matches(c.key)) return false;
  if (!c.refused_key.empty()) {
    return BadRequest("fingerprint " + want + " does not match the new identity key of user " +
                      name + " (key fingerprint " + c.refused_fingerprint +
                      "); compare it with them out of band (iris verify " + name + ")");
  }
  return NotFound("fingerprint " + want + " matches no identity key of user " + name +
                  (c.key.empty()
                       ? " (none is known yet)"
                       : " (the saved key is " + c.fingerprint + " and no other key was refused)"));
}

bool MessageCipher::WasReplacedIdentity(uint64_t user, std::string_view key) const {
  return !key.empty() &&
         store_.GetU64(ReplacedIdentityName(std::to_string(user), std::string(key))) != 0;
}

Status MessageCipher::NoteRefusedIdentity(uint64_t user, std::string_view key) {
  if (key.empty()) return Status::Ok();
  return store_.SetBlockedIdentity(std::to_string(user), key);
}

std::string MessageCipher::PreKeyMessageIdentity(std::string_view body) const {
  auto sealed = DecodeBody(body);
  if (!sealed.ok() || sealed->type != kBodyPreKeyMessage) return {};
  Ref<pre_key_signal_message> m;
  if (pre_key_signal_message_deserialize(&m.p, U8(sealed->ciphertext), sealed->ciphertext.size(),
                                         ctx_) != 0) {
    return {};
  }
  return SerializePublic(pre_key_signal_message_get_identity_key(m.p));
}

Result<std::string> MessageCipher::EncryptControl(uint64_t user, const ControlContent& control) {
  return Encrypt(user, EncodeControl(control), kContentControl);
}

Status MessageCipher::ResetSession(uint64_t user) {
  return store_.DeleteAllSessions(std::to_string(user));
}

// ---- prekey hygiene (issue 18, item 3) ----

Status MessageCipher::StoreNewSignedPreKey(ratchet_identity_key_pair* identity, uint32_t id,
                                           int64_t now_ms) {
  Ref<session_signed_pre_key> spk;
  int r = signal_protocol_key_helper_generate_signed_pre_key(&spk.p, identity, id,
                                                             static_cast<uint64_t>(now_ms), ctx_);
  if (r != 0) return SignalError("generate signed prekey", r);
  Buffer spk_bytes;
  if (session_signed_pre_key_serialize(&spk_bytes.b, spk.p) != 0) {
    return Internal("cannot serialise the signed prekey");
  }
  IRIS_RETURN_IF_ERROR(store_.StoreSignedPreKey(id, spk_bytes.str()));
  IRIS_RETURN_IF_ERROR(store_.PutU64(kSignedPreKeyId, id));
  return store_.PutU64(kSignedPreKeyCreated, static_cast<uint64_t>(now_ms));
}

Result<bool> MessageCipher::RotateSignedPreKeyIfDue(int64_t now_ms, int64_t rotate_every_ms,
                                                    int64_t keep_previous_ms) {
  LocalStore::Transaction tx(store_);
  bool rotated = false;
  // A store from before rotation existed has no creation time: its key counts from now.
  if (store_.GetU64(kSignedPreKeyCreated) == 0) {
    IRIS_RETURN_IF_ERROR(store_.PutU64(kSignedPreKeyCreated, static_cast<uint64_t>(now_ms)));
  }
  const auto created = static_cast<int64_t>(store_.GetU64(kSignedPreKeyCreated));
  const auto previous = static_cast<uint32_t>(store_.GetU64(kPreviousSignedPreKeyId));
  const auto retired = static_cast<int64_t>(store_.GetU64(kPreviousSignedPreKeyRetired));
  if (previous != 0 && now_ms - retired >= keep_previous_ms) {
    IRIS_RETURN_IF_ERROR(store_.RemoveSignedPreKey(previous));
    IRIS_RETURN_IF_ERROR(store_.Delete(kPreviousSignedPreKeyId));
    IRIS_RETURN_IF_ERROR(store_.Delete(kPreviousSignedPreKeyRetired));
  }
  if (now_ms - created >= rotate_every_ms) {
    // A second rotation within the grace period drops the oldest key at once: at most
    // one previous signed prekey is kept.
    const auto still_previous = static_cast<uint32_t>(store_.GetU64(kPreviousSignedPreKeyId));
    if (still_previous != 0) IRIS_RETURN_IF_ERROR(store_.RemoveSignedPreKey(still_previous));
    const auto current = static_cast<uint32_t>(store_.GetU64(kSignedPreKeyId));
    Ref<ratchet_identity_key_pair> identity;
    const int r = signal_protocol_identity_get_key_pair(stores_, &identity.p);
    if (r != 0) return SignalError("load the identity key pair", r);
    IRIS_RETURN_IF_ERROR(StoreNewSignedPreKey(identity.p, NextPreKeyId(current), now_ms));
    IRIS_RETURN_IF_ERROR(store_.PutU64(kPreviousSignedPreKeyId, current));
    IRIS_RETURN_IF_ERROR(
        store_.PutU64(kPreviousSignedPreKeyRetired, static_cast<uint64_t>(now_ms)));
    rotated = true;
  }
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return rotated;
}

uint32_t MessageCipher::SignedPreKeyId() const {
  return static_cast<uint32_t>(store_.GetU64(kSignedPreKeyId));
}

Status MessageCipher::DiscardPreKey(uint32_t id) { return store_.RemovePreKey(id); }

// ---- conversation order (issue 18, item 5) ----

Result<std::string> MessageCipher::SealContent(uint64_t user, uint8_t content_type,
                                               std::string_view data) {
  const std::string peer = std::to_string(user);
  Content c;
  c.type = content_type;
  c.data = std::string(data);
  c.sender_ms = NowMs();
  c.epoch = store_.GetU64(kOutEpoch + peer);
  if (c.epoch == 0) {
    if (RAND_bytes(reinterpret_cast<unsigned char*>(&c.epoch), sizeof(c.epoch)) != 1) {
      return Internal("no randomness for a conversation epoch");
    }
    if (c.epoch == 0) c.epoch = 1;
    IRIS_RETURN_IF_ERROR(store_.PutU64(kOutEpoch + peer, c.epoch));
  }
  // Control content is not part of the conversation the user sees: counter 0, not advanced
  // (the receiver checks no order on it), so a lost or re-sent control message never shows
  // up as a gap in the user's messages.
  if (content_type != kContentControl && content_type != kContentSenderKey &&
      !IsTranscript(content_type)) {
    c.counter = store_.GetU64(kOutCounter + peer) + 1;
    IRIS_RETURN_IF_ERROR(store_.PutU64(kOutCounter + peer, c.counter));
  }
  return EncodeContent(c);
}

Status MessageCipher::CheckOrder(const std::string& peer, const Content& c, Decrypted* out) {
  if (!c.has_order) return Status::Ok();  // format 1: nothing to check
  out->sender_ms = c.sender_ms;
  out->counter = c.counter;
  const uint64_t epoch = store_.GetU64(kInEpoch + peer);
  uint64_t last = store_.GetU64(kInCounter + peer);
  if (epoch != c.epoch) {
    // The first message seen from this sender sets the baseline (this installation cannot
    // know what came before it); a new epoch (the sender reinstalled) counts from 1.
    if (epoch != 0 && c.counter > 1) out->missing = c.counter - 1;
    IRIS_RETURN_IF_ERROR(store_.PutU64(kInEpoch + peer, c.epoch));
    last = c.counter;
  } else if (c.counter > last + 1) {
    out->missing = c.counter - last - 1;
    last = c.counter;
  } else if (c.counter <= last) {
    out->reordered = true;
  } else {
    last = c.counter;
  }
  return store_.PutU64(kInCounter + peer, last);
}

// ---- groups: Sender Keys ----

namespace {

// libsignal's name of a sender key: the group id and the sender's address, both decimal.
struct SenderKeyName {
  SenderKeyName(uint64_t group, uint64_t sender, uint32_t device)
      : group_id(std::to_string(group)), name(std::to_string(sender)) {
    n.group_id = group_id.c_str();
    n.group_id_len = group_id.size();
    n.sender = signal_protocol_address{name.c_str(), name.size(), DeviceId(device)};
  }
  std::string group_id;
  std::string name;
  signal_protocol_sender_key_name n{};
};

}  // namespace

Result<std::string> MessageCipher::SenderKeyDistributionFor(uint64_t group, uint64_t self) {
  SenderKeyName key(group, self, local_device_);
  group_session_builder* builder = nullptr;
  int r = group_session_builder_create(&builder, stores_, ctx_);
  if (r != 0) return SignalError("group session builder", r);
  LocalStore::Transaction tx(store_);
  Ref<sender_key_distribution_message> skdm;
  r = group_session_builder_create_session(builder, &skdm.p, &key.n);
  group_session_builder_free(builder);
  if (r != 0) return SignalError("sender key for group " + key.group_id, r);
  signal_buffer* ser =
      ciphertext_message_get_serialized(reinterpret_cast<ciphertext_message*>(skdm.p));
  std::string out(reinterpret_cast<const char*>(signal_buffer_const_data(ser)),
                  signal_buffer_len(ser));
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return out;
}

namespace {
// (id, iteration) of a serialised distribution; nullopt when it does not parse.
std::optional<std::pair<uint32_t, uint32_t>> DistributionIdAndIteration(std::string_view d,
                                                                        signal_context* ctx) {
  Ref<sender_key_distribution_message> m;
  if (sender_key_distribution_message_deserialize(&m.p, reinterpret_cast<const uint8_t*>(d.data()),
                                                  d.size(), ctx) != 0) {
    return std::nullopt;
  }
  return std::make_pair(sender_key_distribution_message_get_id(m.p),
                        sender_key_distribution_message_get_iteration(m.p));
}
}  // namespace

Result<std::string> MessageCipher::SenderKeyDistributionSince(uint64_t group, uint64_t self,
                                                              std::string_view given) {
  IRIS_ASSIGN_OR_RETURN(std::string now, SenderKeyDistributionFor(group, self));
  const auto current = DistributionIdAndIteration(now, ctx_);
  const auto before = DistributionIdAndIteration(given, ctx_);
  if (!current || !before || current->first != before->first || current->second < before->second ||
      current->second - before->second > kMaxSenderKeyCatchUp) {
    return now;
  }
  return std::string(given);
}

bool MessageCipher::SameSenderKey(std::string_view a, std::string_view b) const {
  const auto x = DistributionIdAndIteration(a, ctx_);
  const auto y = DistributionIdAndIteration(b, ctx_);
  return x && y && x->first == y->first;
}

Status MessageCipher::RotateSenderKey(uint64_t group, uint64_t self) {
  return store_.DeleteSenderKey(std::to_string(group), std::to_string(self),
                                DeviceId(local_device_));
}

bool MessageCipher::HasSenderKey(uint64_t group, uint64_t self) const {
  auto r =
      store_.LoadSenderKey(std::to_string(group), std::to_string(self), DeviceId(local_device_));
  return r.ok() && r->has_value();
}

Result<std::string> MessageCipher::EncryptGroup(uint64_t group, uint64_t self,
                                                std::string_view text) {
  SenderKeyName key(group, self, local_device_);
  Content c;
  c.type = kContentText;
  c.data = std::string(text);
  c.sender_ms = NowMs();
  const std::string plain = EncodeContent(c);
  group_cipher* cipher = nullptr;
  int r = group_cipher_create(&cipher, stores_, &key.n, ctx_);
  if (r != 0) return SignalError("group cipher", r);
  LocalStore::Transaction tx(store_);
  Ref<ciphertext_message> msg;
  r = group_cipher_encrypt(cipher, U8(plain), plain.size(), &msg.p);
  group_cipher_free(cipher);
  if (r != 0) return SignalError("encrypt for group " + key.group_id, r);
  SealedBody sealed;
  sealed.type = kBodySenderKeyMessage;
  signal_buffer* ser = ciphertext_message_get_serialized(msg.p);
  sealed.ciphertext.assign(reinterpret_cast<const char*>(signal_buffer_const_data(ser)),
                           signal_buffer_len(ser));
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return EncodeBody(sealed);
}

Status MessageCipher::ProcessSenderKeyDistribution(uint64_t sender, const SenderKeyDistribution& d,
                                                   uint32_t device) {
  SenderKeyName key(d.group_id, sender, device);
  Ref<sender_key_distribution_message> skdm;
  int r =
      sender_key_distribution_message_deserialize(&skdm.p, U8(d.message), d.message.size(), ctx_);
  if (r != 0) return SignalError("sender key of user " + key.name, r);
  // A key held already is taken again only ahead of where this device is in its chain (a
  // device far behind catches up); from an earlier point it would make the messages already
  // read decryptable a second time (replays), so it is ignored.
  {
    IRIS_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                          store_.LoadSenderKey(key.group_id, key.name, DeviceId(device)));
    Ref<sender_key_record> record;
    sender_key_state* state = nullptr;  // owned by the record
    if (stored &&
        sender_key_record_deserialize(&record.p, U8(*stored), stored->size(), ctx_) == 0 &&
        sender_key_record_get_sender_key_state_by_id(
            record.p, &state, sender_key_distribution_message_get_id(skdm.p)) == 0 &&
        sender_key_distribution_message_get_iteration(skdm.p) <=
            sender_chain_key_get_iteration(sender_key_state_get_chain_key(state))) {
      return Status::Ok();
    }
  }
  group_session_builder* builder = nullptr;
  r = group_session_builder_create(&builder, stores_, ctx_);
  if (r != 0) return SignalError("group session builder", r);
  LocalStore::Transaction tx(store_);
  r = group_session_builder_process_session(builder, &key.n, skdm.p);
  group_session_builder_free(builder);
  if (r != 0) return SignalError("sender key of user " + key.name, r);
  return tx.Commit();
}

Result<MessageCipher::Decrypted> MessageCipher::DecryptGroup(uint64_t group, uint64_t sender,
                                                             std::string_view body,
                                                             uint32_t device) {
  last_decrypt_error_ = 0;
  IRIS_ASSIGN_OR_RETURN(SealedBody sealed, DecodeBody(body));
  if (sealed.type != kBodySenderKeyMessage) {
    return BadRequest("a group message must be a sender key message (body type 4), not type " +
                      std::to_string(sealed.type));
  }
  SenderKeyName key(group, sender, device);
  const std::string from = "group message from user " + key.name +
                           (DeviceId(device) > 1 ? " device " + std::to_string(device) : "");
  Ref<sender_key_message> m;
  int r =
      sender_key_message_deserialize(&m.p, U8(sealed.ciphertext), sealed.ciphertext.size(), ctx_);
  if (r != 0) {
    last_decrypt_error_ = r;
    return SignalError("cannot decrypt " + from, r);
  }
  // Is the sender key this message names held here? (Not when it was made after this
  // account left or was removed: rotation.) libsignal would say "invalid message".
  {
    IRIS_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                          store_.LoadSenderKey(key.group_id, key.name, DeviceId(device)));
    bool held = false;
    if (stored) {
      Ref<sender_key_record> record;
      sender_key_state* state = nullptr;  // owned by the record
      held = sender_key_record_deserialize(&record.p, U8(*stored), stored->size(), ctx_) == 0 &&
             sender_key_record_get_sender_key_state_by_id(record.p, &state,
                                                          sender_key_message_get_key_id(m.p)) == 0;
    }
    if (!held) {
      last_decrypt_error_ = SG_ERR_NO_SESSION;
      return BadRequest("cannot decrypt " + from + ": no sender key of theirs for this message " +
                        "(never distributed to this account, e.g. it was sent after this " +
                        "account left the group or was removed)");
    }
  }
  group_cipher* cipher = nullptr;
  r = group_cipher_create(&cipher, stores_, &key.n, ctx_);
  if (r != 0) return SignalError("group cipher", r);
  LocalStore::Transaction tx(store_);
  Buffer plain;
  r = group_cipher_decrypt(cipher, m.p, nullptr, &plain.b);
  group_cipher_free(cipher);
  last_decrypt_error_ = r;
  if (r != 0) {
    return SignalError("cannot decrypt " + from, r);
  }
  IRIS_ASSIGN_OR_RETURN(Content content, DecodeContent(plain.str()));
  if (content.type != kContentText) {
    return BadRequest(from + ": unexpected content type " + std::to_string(content.type));
  }
  Decrypted out;
  out.text = std::move(content.data);
  out.sender_ms = content.sender_ms;
  IRIS_RETURN_IF_ERROR(tx.Commit());
  return out;
}

}  // namespace iris::client::e2ee
