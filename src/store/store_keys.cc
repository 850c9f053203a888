#include "store/store_keys.h"

#include <algorithm>

#include "common/bytes.h"
#include "common/jump_hash.h"
#include "store/inbox_store.h"

namespace iris::store {
namespace {

void AppendBigEndian32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

uint32_t GetBigEndian32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
}

// vnode(4) tag(1) user(8)
std::string VnodeTaggedUserKey(int32_t vnode, char tag, uint64_t user) {
  std::string k;
  k.reserve(13);
  AppendBigEndian32(&k, static_cast<uint32_t>(vnode));
  k.push_back(tag);
  AppendBigEndian64(&k, user);
  return k;
}

// vnode(4) id(8)
std::string VnodeIdKey(int32_t vnode, uint64_t id, size_t reserve) {
  std::string k;
  k.reserve(reserve);
  AppendBigEndian32(&k, static_cast<uint32_t>(vnode));
  AppendBigEndian64(&k, id);
  return k;
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

int32_t VnodeOf(uint64_t owner, int32_t vnodes) {
  return JumpConsistentHash(UserPartitionKey(owner), vnodes);
}

std::string VnodePrefix(int32_t vnode) {
  std::string k;
  AppendBigEndian32(&k, static_cast<uint32_t>(vnode));
  return k;
}

std::string InboxKey(int32_t vnode, uint64_t user, uint64_t id) {
  std::string k = VnodeIdKey(vnode, user, 20);
  AppendBigEndian64(&k, id);
  return k;
}

std::optional<InboxKeyParts> ParseInboxKey(std::string_view key) {
  if (key.size() != 20) return std::nullopt;
  return InboxKeyParts{static_cast<int32_t>(GetBigEndian32(key.data())),
                       GetBigEndian64(key.data() + 4), GetBigEndian64(key.data() + 12)};
}

std::string InboxUpperBound(int32_t vnode, uint64_t user) {
  std::string k = VnodeIdKey(vnode, user, 21);
  k.append(9, '\xff');  // longer than, and not below, every 20-byte key of this user
  return k;
}

std::string DedupKey(int32_t vnode, uint64_t sender, std::string_view idempotency_key) {
  std::string k = VnodeIdKey(vnode, sender, 12 + idempotency_key.size());
  k.append(idempotency_key);
  return k;
}

std::string EncodeDedupEntry(const DedupEntry& e) {
  std::string v;
  v.reserve(16);
  AppendBigEndian64(&v, e.first_id);
  AppendBigEndian64(&v, static_cast<uint64_t>(e.accepted_ms));
  return v;
}

std::optional<DedupEntry> DecodeDedupEntry(std::string_view v) {
  if (v.size() != 16) return std::nullopt;
  return DedupEntry{GetBigEndian64(v.data()), static_cast<int64_t>(GetBigEndian64(v.data() + 8))};
}

std::string MetaHlcKey(uint32_t shard) {
  std::string k(1, kMetaHlcPrefix);
  AppendBigEndian32(&k, shard);
  return k;
}
std::string MetaReplicatedLsnKey(uint32_t shard) {
  std::string k(1, kMetaReplicatedLsnPrefix);
  AppendBigEndian32(&k, shard);
  return k;
}
std::string MetaUserStateKey(int32_t vnode, uint64_t user) {
  return VnodeTaggedUserKey(vnode, kMetaUserStateTag, user);
}
std::string MetaArchivePendingKey(int32_t vnode, uint64_t user) {
  return VnodeTaggedUserKey(vnode, kMetaArchivePendingTag, user);
}
std::string MetaDevicePurgeKey(int32_t vnode, uint64_t user) {
  return VnodeTaggedUserKey(vnode, kMetaDevicePurgeTag, user);
}
std::string MetaSettingsKey(int32_t vnode, uint64_t user) {
  return VnodeTaggedUserKey(vnode, kMetaSettingsTag, user);
}
std::string MetaLastSeenKey(int32_t vnode, uint64_t user) {
  return VnodeTaggedUserKey(vnode, kMetaLastSeenTag, user);
}
std::string MetaWroteKey(int32_t vnode, uint64_t user, uint64_t sender) {
  std::string k = VnodeTaggedUserKey(vnode, kMetaWroteTag, user);
  AppendBigEndian64(&k, sender);
  return k;
}

namespace {
constexpr uint8_t kReadReceiptsBit = 1;
constexpr uint8_t kSharePresenceBit = 2;
constexpr uint8_t kGroupInvitesContactsBit = 4;
// A device list follows the flags: devices(8) removed devices(8) list version(8)
// list length(8) list bytes (docs/storage.md; appendix 20 of docs/protocol.md).
constexpr uint8_t kDevicesBit = 8;
}  // namespace

std::string EncodeUserSettings(const UserSettings& s) {
  const auto flags = static_cast<uint8_t>(
      (s.read_receipts ? kReadReceiptsBit : 0) | (s.share_presence ? kSharePresenceBit : 0) |
      (s.group_invites_contacts_only ? kGroupInvitesContactsBit : 0) |
      (s.device_list.empty() ? 0 : kDevicesBit));
  std::string v(1, static_cast<char>(flags));
  if (!s.device_list.empty()) {
    AppendBigEndian64(&v, s.devices);
    AppendBigEndian64(&v, s.removed_devices);
    AppendBigEndian64(&v, s.device_list_version);
    AppendBigEndian64(&v, s.device_list.size());
    v += s.device_list;
  }
  for (uint64_t u : s.blocked) AppendBigEndian64(&v, u);
  return v;
}

std::optional<UserSettings> DecodeUserSettings(std::string_view v) {
  if (v.empty()) return std::nullopt;
  const auto flags = static_cast<uint8_t>(v[0]);
  UserSettings s;
  s.read_receipts = (flags & kReadReceiptsBit) != 0;
  s.share_presence = (flags & kSharePresenceBit) != 0;
  s.group_invites_contacts_only = (flags & kGroupInvitesContactsBit) != 0;
  size_t at = 1;
  if ((flags & kDevicesBit) != 0) {
    if (v.size() < at + 32) return std::nullopt;
    s.devices = GetBigEndian64(v.data() + at);
    s.removed_devices = GetBigEndian64(v.data() + at + 8);
    s.device_list_version = GetBigEndian64(v.data() + at + 16);
    const uint64_t len = GetBigEndian64(v.data() + at + 24);
    at += 32;
    if (len == 0 || len > v.size() - at) return std::nullopt;
    s.device_list.assign(v.substr(at, len));
    at += len;
  }
  if ((v.size() - at) % 8 != 0) return std::nullopt;
  for (; at < v.size(); at += 8) s.blocked.push_back(GetBigEndian64(v.data() + at));
  if (!std::is_sorted(s.blocked.begin(), s.blocked.end()) ||
      std::adjacent_find(s.blocked.begin(), s.blocked.end()) != s.blocked.end()) {
    return std::nullopt;
  }
  return s;
}

std::optional<uint64_t> ParseMetaUserKey(std::string_view key, char tag) {
  if (key.size() != 13 || key[4] != tag) return std::nullopt;
  return GetBigEndian64(key.data() + 5);
}
std::string MetaRevokedJtiKey(std::string_view jti) {
  std::string k(1, kMetaRevokedJtiPrefix);
  k.append(jti);
  return k;
}
std::string MetaRevokedUserKey(uint64_t user) {
  std::string k(1, kMetaRevokedUserPrefix);
  AppendBigEndian64(&k, user);
  return k;
}

std::string EncodeUserState(const UserState& s) {
  std::string v;
  v.reserve(24);
  AppendBigEndian64(&v, s.count);
  AppendBigEndian64(&v, s.archived_through);
  AppendBigEndian64(&v, s.counted_through);
  return v;
}

std::optional<UserState> DecodeUserState(std::string_view v) {
  if (v.size() != 24) return std::nullopt;
  return UserState{GetBigEndian64(v.data()), GetBigEndian64(v.data() + 8),
                   GetBigEndian64(v.data() + 16)};
}

std::string EncodeU64(uint64_t v) {
  std::string s;
  AppendBigEndian64(&s, v);
  return s;
}

std::optional<uint64_t> DecodeU64(std::string_view v) {
  if (v.size() != 8) return std::nullopt;
  return GetBigEndian64(v.data());
}

std::string EncodeU32(uint32_t v) {
  std::string s;
  AppendBigEndian32(&s, v);
  return s;
}

std::optional<uint32_t> DecodeU32(std::string_view v) {
  if (v.size() != 4) return std::nullopt;
  return GetBigEndian32(v.data());
}

std::string KeysBundleKey(int32_t vnode, uint64_t user) {
  std::string k = VnodeIdKey(vnode, user, 13);
  k.push_back('B');
  return k;
}

std::string PreKeyPrefix(int32_t vnode, uint64_t user) {
  std::string k = VnodeIdKey(vnode, user, 21);
  k.push_back('P');
  return k;
}

std::string PreKeyKey(int32_t vnode, uint64_t user, uint64_t seq) {
  std::string k = PreKeyPrefix(vnode, user);
  AppendBigEndian64(&k, seq);
  return k;
}

std::string DeviceKeysBundleKey(int32_t vnode, uint64_t user, uint32_t device) {
  if (device <= 1) return KeysBundleKey(vnode, user);
  std::string k = VnodeIdKey(vnode, user, 14);
  k.push_back('b');
  k.push_back(static_cast<char>(device));
  return k;
}

std::string DevicePreKeyPrefix(int32_t vnode, uint64_t user, uint32_t device) {
  if (device <= 1) return PreKeyPrefix(vnode, user);
  std::string k = VnodeIdKey(vnode, user, 22);
  k.push_back('q');
  k.push_back(static_cast<char>(device));
  return k;
}

std::string DevicePreKeyKey(int32_t vnode, uint64_t user, uint32_t device, uint64_t seq) {
  std::string k = DevicePreKeyPrefix(vnode, user, device);
  AppendBigEndian64(&k, seq);
  return k;
}

std::string EncodeStoredBundle(const StoredBundle& b) {
  std::string v;
  AppendBigEndian64(&v, b.next_seq);
  AppendBigEndian64(&v, b.pool_size);
  b.bundle.AppendToString(&v);
  return v;
}

std::optional<StoredBundle> DecodeStoredBundle(std::string_view v) {
  if (v.size() < 16) return std::nullopt;
  StoredBundle b;
  b.next_seq = GetBigEndian64(v.data());
  b.pool_size = GetBigEndian64(v.data() + 8);
  if (!b.bundle.ParseFromArray(v.data() + 16, static_cast<int>(v.size() - 16))) {
    return std::nullopt;
  }
  return b;
}

std::string GroupKey(int32_t vnode, uint64_t group_id) { return VnodeIdKey(vnode, group_id, 12); }

std::string FanOutJobKey(int32_t vnode, uint64_t group_id, uint64_t job_id) {
  std::string k = VnodeIdKey(vnode, group_id, 21);
  k.push_back(kFanOutJobTag);
  AppendBigEndian64(&k, job_id);
  return k;
}

std::optional<std::pair<uint64_t, uint64_t>> ParseFanOutJobKey(std::string_view key) {
  if (key.size() != 21 || key[12] != kFanOutJobTag) return std::nullopt;
  return std::make_pair(GetBigEndian64(key.data() + 4), GetBigEndian64(key.data() + 13));
}

std::string EncodeEnvelopeBody(v1::Envelope* envelope) {
  envelope->clear_id();
  envelope->clear_sent_at_ms();
  return envelope->SerializeAsString();
}

void EncodeStoredEnvelope(uint64_t id, uint64_t sent_at_ms, std::string_view body,
                          std::string* out) {
  out->clear();
  out->reserve(body.size() + 22);
  out->push_back(static_cast<char>(0x08));  // field 1 (id), varint
  AppendVarint(out, id);
  if (sent_at_ms != 0) {
    out->push_back(static_cast<char>(0x38));  // field 7 (sent_at_ms), varint
    AppendVarint(out, sent_at_ms);
  }
  out->append(body);
}

}  // namespace iris::store
