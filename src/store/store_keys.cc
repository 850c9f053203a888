#include "store/store_keys.h"

#include "common/bytes.h"

namespace iris::store {
namespace {

std::string TaggedUserKey(char tag, uint64_t user) {
  std::string k;
  k.reserve(9);
  k.push_back(tag);
  AppendBigEndian64(&k, user);
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

std::string InboxKey(uint64_t user, uint64_t id) {
  std::string k;
  k.reserve(16);
  AppendBigEndian64(&k, user);
  AppendBigEndian64(&k, id);
  return k;
}

std::optional<InboxKeyParts> ParseInboxKey(std::string_view key) {
  if (key.size() != 16) return std::nullopt;
  return InboxKeyParts{GetBigEndian64(key.data()), GetBigEndian64(key.data() + 8)};
}

std::string InboxUpperBound(uint64_t user) {
  if (user == UINT64_MAX) {
    std::string k(8, '\xff');
    k.append(9, '\xff');  // longer than every 16-byte key of this user
    return k;
  }
  return InboxKey(user + 1, 0);
}

std::string DedupKey(uint64_t sender, std::string_view idempotency_key) {
  std::string k;
  k.reserve(8 + idempotency_key.size());
  AppendBigEndian64(&k, sender);
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

std::string MetaHlcKey() { return std::string(1, 'H'); }
std::string MetaUserStateKey(uint64_t user) { return TaggedUserKey('U', user); }
std::string MetaArchivePendingKey(uint64_t user) {
  return TaggedUserKey(kMetaArchivePendingPrefix, user);
}
std::string MetaSettingsKey(uint64_t user) { return TaggedUserKey('S', user); }
std::string MetaLastSeenKey(uint64_t user) { return TaggedUserKey('L', user); }
std::string MetaRevokedJtiKey(std::string_view jti) {
  std::string k(1, kMetaRevokedJtiPrefix);
  k.append(jti);
  return k;
}
std::string MetaRevokedUserKey(uint64_t user) {
  return TaggedUserKey(kMetaRevokedUserPrefix, user);
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

std::string KeysBundleKey(uint64_t user) {
  std::string k;
  AppendBigEndian64(&k, user);
  k.push_back('B');
  return k;
}

std::string PreKeyPrefix(uint64_t user) {
  std::string k;
  AppendBigEndian64(&k, user);
  k.push_back('P');
  return k;
}

std::string PreKeyKey(uint64_t user, uint64_t seq) {
  std::string k = PreKeyPrefix(user);
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

std::string GroupKey(uint64_t group_id) { return EncodeU64(group_id); }

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
