#pragma once
// Key and value layouts of the store's column families (docs/storage.md, "Layout").
// Every integer in a key is big-endian, so RocksDB's bytewise order is numeric order.
//
//   inbox, archive  user(8) id(8)                    -> envelope (EncodeStoredEnvelope)
//   dedup           sender(8) idempotency key(1..255) -> first id(8) accepted ms(8)
//   meta            'H'                               -> HLC high-water mark(8)
//                   'U' user(8)                       -> inbox count(8) archived-through(8)
//                                                        counted-through(8)
//                   'A' user(8)                       -> "" (inbox over cap: archive pending)
//                   'S' user(8)                       -> settings flags(1)
//                   'L' user(8)                       -> last seen ms(8)
//   keys            user(8) 'B'                       -> next seq(8) pool size(8) KeysBundle
//                   user(8) 'P' seq(8)                -> PreKey
//   groups          group id(8)                       -> GroupInfo
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "iris/v1/client.pb.h"

namespace iris::store {

inline constexpr size_t kMaxIdempotencyKeyBytes = 255;

std::string InboxKey(uint64_t user, uint64_t id);
// The user and id of an inbox/archive key; nullopt when the key is not 16 bytes.
struct InboxKeyParts {
  uint64_t user;
  uint64_t id;
};
std::optional<InboxKeyParts> ParseInboxKey(std::string_view key);
// The first key after every key of `user` (user + 1, id 0); for user UINT64_MAX a 9-byte
// key that sorts after all 16-byte keys of that user.
std::string InboxUpperBound(uint64_t user);

std::string DedupKey(uint64_t sender, std::string_view idempotency_key);
struct DedupEntry {
  uint64_t first_id;
  int64_t accepted_ms;
};
std::string EncodeDedupEntry(const DedupEntry& e);
std::optional<DedupEntry> DecodeDedupEntry(std::string_view v);

std::string MetaHlcKey();
std::string MetaUserStateKey(uint64_t user);
std::string MetaArchivePendingKey(uint64_t user);
inline constexpr char kMetaArchivePendingPrefix = 'A';
std::string MetaSettingsKey(uint64_t user);
std::string MetaLastSeenKey(uint64_t user);
// Token revocations: 'J' + jti -> keep-until (unix ms); 'R' + user -> revoked-before (ms).
inline constexpr char kMetaRevokedJtiPrefix = 'J';
inline constexpr char kMetaRevokedUserPrefix = 'R';
std::string MetaRevokedJtiKey(std::string_view jti);
std::string MetaRevokedUserKey(uint64_t user);

// Per-user inbox bookkeeping, as last persisted: `count` messages in `inbox` with ids up to
// `counted_through` (messages with greater ids were appended after it was written and are
// counted again when it is loaded), and the greatest id moved to `archive` (0 when none).
struct UserState {
  uint64_t count = 0;
  uint64_t archived_through = 0;
  uint64_t counted_through = 0;
};
std::string EncodeUserState(const UserState& s);
std::optional<UserState> DecodeUserState(std::string_view v);

std::string EncodeU64(uint64_t v);
std::optional<uint64_t> DecodeU64(std::string_view v);

std::string KeysBundleKey(uint64_t user);
std::string PreKeyKey(uint64_t user, uint64_t seq);
std::string PreKeyPrefix(uint64_t user);  // user(8) 'P'

struct StoredBundle {
  uint64_t next_seq = 0;
  uint64_t pool_size = 0;
  v1::KeysBundle bundle;  // registration id, identity key, signed prekey
};
std::string EncodeStoredBundle(const StoredBundle& b);
std::optional<StoredBundle> DecodeStoredBundle(std::string_view v);

std::string GroupKey(uint64_t group_id);

// Envelopes are serialized on the caller's thread without id and sent_at_ms (`body`), and
// the commit thread prefixes those two fields once it has assigned them. Protobuf parsing
// accepts fields in any order, so the result parses to the complete envelope.
std::string EncodeEnvelopeBody(v1::Envelope* envelope);  // clears id and sent_at_ms
void EncodeStoredEnvelope(uint64_t id, uint64_t sent_at_ms, std::string_view body,
                          std::string* out);

}  // namespace iris::store
