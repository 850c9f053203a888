#include "client/e2ee/signal_store.h"

#include <openssl/crypto.h>

#include <string>
#include <string_view>

#include "iris/v1/client.pb.h"

namespace iris::client::e2ee {
namespace {

LocalStore& S(void* user_data) { return *static_cast<LocalStore*>(user_data); }

std::string_view Name(const signal_protocol_address* a) { return {a->name, a->name_len}; }

std::string_view Bytes(const uint8_t* data, size_t len) {
  return {reinterpret_cast<const char*>(data), len};
}

// The name a peer's identity is saved under (IdentityName).
std::string IdName(const signal_protocol_address* a) {
  std::string name(Name(a));
  if (a->device_id > 1) name += "." + std::to_string(a->device_id);
  return name;
}

// Whether the verified device list of the user named in `a` lists its device with `key`.
bool ListedDevice(LocalStore& store, const signal_protocol_address* a, std::string_view key) {
  uint64_t user = 0;
  for (char c : Name(a)) {
    if (c < '0' || c > '9') return false;
    user = user * 10 + static_cast<uint64_t>(c - '0');
  }
  auto stored = store.Get(DeviceListKey(user));
  if (!stored.ok() || !stored->has_value()) return false;
  v1::DeviceList list;
  if (!list.ParseFromString(**stored)) return false;
  for (const v1::Device& d : list.devices()) {
    if (d.id() == static_cast<uint32_t>(a->device_id)) return d.identity_key() == key;
  }
  return false;
}

int ToSignal(const Status& s) { return s.ok() ? SG_SUCCESS : SG_ERR_UNKNOWN; }

// Loads into *out; 1 when found, 0 when not, negative on error (libsignal's convention).
int LoadInto(const Result<std::optional<std::string>>& r, signal_buffer** out) {
  if (!r.ok()) return SG_ERR_UNKNOWN;
  if (!r->has_value()) return 0;
  const std::string& v = **r;
  *out = signal_buffer_create(reinterpret_cast<const uint8_t*>(v.data()), v.size());
  return *out != nullptr ? 1 : SG_ERR_NOMEM;
}

// Sessions.
int LoadSession(signal_buffer** record, signal_buffer** user_record,
                const signal_protocol_address* address, void* ud) {
  *user_record = nullptr;
  return LoadInto(S(ud).LoadSession(Name(address), address->device_id), record);
}
int GetSubDeviceSessions(signal_int_list** sessions, const char* name, size_t name_len, void* ud) {
  signal_int_list* list = signal_int_list_alloc();
  if (list == nullptr) return SG_ERR_NOMEM;
  const auto devices = S(ud).SubDeviceSessions(std::string_view(name, name_len));
  for (int32_t d : devices) signal_int_list_push_back(list, d);
  *sessions = list;
  return static_cast<int>(devices.size());
}
int StoreSession(const signal_protocol_address* address, uint8_t* record, size_t record_len,
                 uint8_t*, size_t, void* ud) {
  return ToSignal(S(ud).StoreSession(Name(address), address->device_id, Bytes(record, record_len)));
}
int ContainsSession(const signal_protocol_address* address, void* ud) {
  return S(ud).ContainsSession(Name(address), address->device_id) ? 1 : 0;
}
int DeleteSession(const signal_protocol_address* address, void* ud) {
  return S(ud).DeleteSession(Name(address), address->device_id).ok() ? 1 : SG_ERR_UNKNOWN;
}
int DeleteAllSessions(const char* name, size_t name_len, void* ud) {
  return ToSignal(S(ud).DeleteAllSessions(std::string_view(name, name_len)));
}

// One-time prekeys.
int LoadPreKey(signal_buffer** record, uint32_t id, void* ud) {
  const int r = LoadInto(S(ud).LoadPreKey(id), record);
  return r == 1 ? SG_SUCCESS : (r == 0 ? SG_ERR_INVALID_KEY_ID : r);
}
int StorePreKey(uint32_t id, uint8_t* record, size_t len, void* ud) {
  return ToSignal(S(ud).StorePreKey(id, Bytes(record, len)));
}
int ContainsPreKey(uint32_t id, void* ud) {
  auto r = S(ud).LoadPreKey(id);
  return r.ok() && r->has_value() ? 1 : 0;
}
int RemovePreKey(uint32_t id, void* ud) { return ToSignal(S(ud).RemovePreKey(id)); }

// Signed prekeys.
int LoadSignedPreKey(signal_buffer** record, uint32_t id, void* ud) {
  const int r = LoadInto(S(ud).LoadSignedPreKey(id), record);
  return r == 1 ? SG_SUCCESS : (r == 0 ? SG_ERR_INVALID_KEY_ID : r);
}
int StoreSignedPreKey(uint32_t id, uint8_t* record, size_t len, void* ud) {
  return ToSignal(S(ud).StoreSignedPreKey(id, Bytes(record, len)));
}
int ContainsSignedPreKey(uint32_t id, void* ud) {
  auto r = S(ud).LoadSignedPreKey(id);
  return r.ok() && r->has_value() ? 1 : 0;
}
int RemoveSignedPreKey(uint32_t id, void* ud) { return ToSignal(S(ud).RemoveSignedPreKey(id)); }

// Identity.
int GetIdentityKeyPair(signal_buffer** public_data, signal_buffer** private_data, void* ud) {
  auto pub = S(ud).Get(kIdentityPublicKey);
  auto priv = S(ud).Get(kIdentityPrivateKey);
  if (!pub.ok() || !priv.ok() || !pub->has_value() || !priv->has_value()) return SG_ERR_UNKNOWN;
  const int r = LoadInto(priv, private_data);
  OPENSSL_cleanse((**priv).data(), (**priv).size());  // the copy must not linger in the heap
  if (r != 1) return SG_ERR_NOMEM;
  if (LoadInto(pub, public_data) != 1) {
    signal_buffer_bzero_free(*private_data);
    *private_data = nullptr;
    return SG_ERR_NOMEM;
  }
  return SG_SUCCESS;
}
int GetLocalRegistrationId(void* ud, uint32_t* registration_id) {
  const uint64_t id = S(ud).GetU64(kRegistrationId);
  if (id == 0) return SG_ERR_UNKNOWN;
  *registration_id = static_cast<uint32_t>(id);
  return SG_SUCCESS;
}
int SaveIdentity(const signal_protocol_address* address, uint8_t* key, size_t len, void* ud) {
  if (key == nullptr) return SG_SUCCESS;  // libsignal asks to forget: keep TOFU's record
  LocalStore& store = S(ud);
  const std::string_view k = Bytes(key, len);
  // A linked device: vouched for by the device list (IsTrustedIdentity), saved as is.
  if (address->device_id > 1) return ToSignal(store.SaveIdentity(IdName(address), k));
  auto known = store.LoadIdentity(Name(address));
  if (!known.ok()) return SG_ERR_UNKNOWN;
  if (known->has_value() && **known == k) return SG_SUCCESS;
  // A new key for this user: a verification of another key no longer applies.
  auto verified = store.VerifiedIdentity(Name(address));
  if (!verified.ok()) return SG_ERR_UNKNOWN;
  if (verified->has_value() && **verified != k) {
    if (!store.SetVerifiedIdentity(Name(address), "").ok()) return SG_ERR_UNKNOWN;
  }
  return ToSignal(store.SaveIdentity(Name(address), k));
}
// The trust rule (signal_store.h): the saved key is trusted; the first key of an unknown
// user is trusted (TOFU); a changed key is trusted unless the user had verified the saved
// one, in which case only MessageCipher::TrustIdentity (naming the new key) lets it in.
int IsTrustedIdentity(const signal_protocol_address* address, uint8_t* key, size_t len, void* ud) {
  LocalStore& store = S(ud);
  const std::string_view k = Bytes(key, len);
  if (address->device_id > 1) {
    // A linked device: its saved key, or the key its user's verified device list names.
    auto saved = store.LoadIdentity(IdName(address));
    if (!saved.ok()) return SG_ERR_UNKNOWN;
    if (saved->has_value() && **saved == k) return 1;
    return ListedDevice(store, address, k) ? 1 : 0;
  }
  auto known = store.LoadIdentity(Name(address));
  if (!known.ok()) return SG_ERR_UNKNOWN;
  if (known->has_value() && **known == k) return 1;
  auto verified = store.VerifiedIdentity(Name(address));
  if (!verified.ok()) return SG_ERR_UNKNOWN;
  if (verified->has_value()) return **verified == k ? 1 : 0;
  return 1;  // first use, or a changed key of an unverified contact (reported by the caller)
}

// Sender keys (groups).
int StoreSenderKey(const signal_protocol_sender_key_name* n, uint8_t* record, size_t len, uint8_t*,
                   size_t, void* ud) {
  return ToSignal(S(ud).StoreSenderKey(std::string_view(n->group_id, n->group_id_len),
                                       Name(&n->sender), n->sender.device_id, Bytes(record, len)));
}
int LoadSenderKey(signal_buffer** record, signal_buffer** user_record,
                  const signal_protocol_sender_key_name* n, void* ud) {
  *user_record = nullptr;
  return LoadInto(S(ud).LoadSenderKey(std::string_view(n->group_id, n->group_id_len),
                                      Name(&n->sender), n->sender.device_id),
                  record);
}

}  // namespace

std::string DeviceListKey(uint64_t user) { return "device_list/" + std::to_string(user); }

std::string IdentityName(uint64_t user, uint32_t device) {
  std::string name = std::to_string(user);
  if (device > 1) name += "." + std::to_string(device);
  return name;
}

int InstallSignalStores(signal_protocol_store_context* context, LocalStore* store) {
  signal_protocol_session_store sessions{};
  sessions.load_session_func = LoadSession;
  sessions.get_sub_device_sessions_func = GetSubDeviceSessions;
  sessions.store_session_func = StoreSession;
  sessions.contains_session_func = ContainsSession;
  sessions.delete_session_func = DeleteSession;
  sessions.delete_all_sessions_func = DeleteAllSessions;
  sessions.user_data = store;

  signal_protocol_pre_key_store prekeys{};
  prekeys.load_pre_key = LoadPreKey;
  prekeys.store_pre_key = StorePreKey;
  prekeys.contains_pre_key = ContainsPreKey;
  prekeys.remove_pre_key = RemovePreKey;
  prekeys.user_data = store;

  signal_protocol_signed_pre_key_store signed_prekeys{};
  signed_prekeys.load_signed_pre_key = LoadSignedPreKey;
  signed_prekeys.store_signed_pre_key = StoreSignedPreKey;
  signed_prekeys.contains_signed_pre_key = ContainsSignedPreKey;
  signed_prekeys.remove_signed_pre_key = RemoveSignedPreKey;
  signed_prekeys.user_data = store;

  signal_protocol_identity_key_store identity{};
  identity.get_identity_key_pair = GetIdentityKeyPair;
  identity.get_local_registration_id = GetLocalRegistrationId;
  identity.save_identity = SaveIdentity;
  identity.is_trusted_identity = IsTrustedIdentity;
  identity.user_data = store;

  signal_protocol_sender_key_store sender_keys{};
  sender_keys.store_sender_key = StoreSenderKey;
  sender_keys.load_sender_key = LoadSenderKey;
  sender_keys.user_data = store;

  int r = signal_protocol_store_context_set_session_store(context, &sessions);
  if (r == 0) r = signal_protocol_store_context_set_pre_key_store(context, &prekeys);
  if (r == 0) r = signal_protocol_store_context_set_signed_pre_key_store(context, &signed_prekeys);
  if (r == 0) r = signal_protocol_store_context_set_identity_key_store(context, &identity);
  if (r == 0) r = signal_protocol_store_context_set_sender_key_store(context, &sender_keys);
  return r;
}

}  // namespace iris::client::e2ee
