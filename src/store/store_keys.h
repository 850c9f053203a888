#pragma once
// Key and value layouts of the store's column families (docs/storage.md, "Layout"), layout
// version 2. Every integer in a key is big-endian, so RocksDB's bytewise order is numeric
// order.
//
// Every per-user and per-group key starts with the 4-byte vnode of its owner,
// vnode = VnodeOf(owner, V) = JumpConsistentHash(UserPartitionKey(owner), V) (CLUSTER.md
// §4), so one vnode is the key range [VnodePrefix(v), VnodePrefix(v + 1)) in every column
// family: it can be copied, checksummed and deleted as a range. V is at most kMaxVnodes
// (2^24), so a vnode prefix starts with 0x00 and sorts before every node-wide `meta` key,
// which starts with a letter.
//
//   inbox, archive  vnode(4) user(8) id(8)                  -> envelope (EncodeStoredEnvelope)
//   dedup           vnode(4) sender(8) idempotency key(1..255) -> first id(8) accepted ms(8)
//                   (vnode of the inbox owner: the recipient of a 1:1 send, the group of a
//                   group send)
//   meta            vnode(4) 'U' user(8)                    -> inbox count(8)
//                                                              archived-through(8)
//                                                              counted-through(8)
//                   vnode(4) 'A' user(8)                    -> "" (inbox over cap: archive
//                                                              pending)
//                   vnode(4) 'S' user(8)                    -> settings flags(1)
//                                                              blocked user(8)...
//                                                              (EncodeUserSettings)
//                   vnode(4) 'W' user(8) sender(8)          -> "" (sender has sent user a
//                                                              1:1 message: consent)
//                   vnode(4) 'L' user(8)                    -> last seen ms(8)
//     node-wide:    'H' shard(4)                            -> HLC high-water mark(8) of the
//                                                              shard
//                   'J' jti, 'R' user(8)                    -> token revocations (ms)
//                   'N'                                     -> V, the vnode count(4)
//                   'V'                                     -> layout version(4)
//   keys            vnode(4) user(8) 'B'                    -> next seq(8) pool size(8)
//                                                              KeysBundle
//                   vnode(4) user(8) 'P' seq(8)             -> PreKey
//                   vnode(4) user(8) 'b' device(1)          -> the same for a device other
//                   vnode(4) user(8) 'q' device(1) seq(8)      than 1 (appendix 20)
//   groups          vnode(4) group id(8)                    -> GroupInfo
//                   vnode(4) group id(8) 'F' job id(8)      -> a group message waiting for
//                                                              its throttled fan-out:
//                                                              done-through member(8)
//                                                              Envelope (FanOutJobKey)
//
// The previous layout (version 1, the same keys without the vnode prefix and one 'H' mark)
// is migrated on open (layout_migration.cc, with the helpers of legacy_keys.h).
//
// Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "iris/v1/client.pb.h"

namespace iris::store {

inline constexpr size_t kMaxIdempotencyKeyBytes = 255;
inline constexpr uint32_t kLayoutVersion = 2;
inline constexpr int32_t kMaxVnodes = 1 << 24;
inline constexpr size_t kVnodePrefixBytes = 4;

// The vnode of a user or group id. Precondition: 0 < vnodes <= kMaxVnodes.
int32_t VnodeOf(uint64_t owner, int32_t vnodes);
// vnode(4), big-endian: the first key of the vnode's range. VnodePrefix(vnodes) is the
// end of the last vnode's range.
std::string VnodePrefix(int32_t vnode);

std::string InboxKey(int32_t vnode, uint64_t user, uint64_t id);
// The parts of an inbox/archive key; nullopt when the key is not 20 bytes.
struct InboxKeyParts {
  int32_t vnode;
  uint64_t user;
  uint64_t id;
};
std::optional<InboxKeyParts> ParseInboxKey(std::string_view key);
// A key after every inbox/archive key of `user` and before the next user's.
std::string InboxUpperBound(int32_t vnode, uint64_t user);

std::string DedupKey(int32_t vnode, uint64_t sender, std::string_view idempotency_key);
struct DedupEntry {
  uint64_t first_id;
  int64_t accepted_ms;
};
std::string EncodeDedupEntry(const DedupEntry& e);
std::optional<DedupEntry> DecodeDedupEntry(std::string_view v);

// Node-wide `meta` keys.
inline constexpr char kMetaHlcPrefix = 'H';
std::string MetaHlcKey(uint32_t shard);
// The last lsn of a shard's replication log this node's store has applied
// (InboxStore::ApplyReplicated): 'C' shard(4) -> lsn(8). Node-wide: each node records its own.
inline constexpr char kMetaReplicatedLsnPrefix = 'C';
std::string MetaReplicatedLsnKey(uint32_t shard);
inline constexpr char kMetaLayoutVersionKey[] = "V";
inline constexpr char kMetaVnodesKey[] = "N";
// Token revocations: 'J' + jti -> keep-until (unix ms); 'R' + user -> revoked-before (ms).
inline constexpr char kMetaRevokedJtiPrefix = 'J';
inline constexpr char kMetaRevokedUserPrefix = 'R';
std::string MetaRevokedJtiKey(std::string_view jti);
std::string MetaRevokedUserKey(uint64_t user);

// Per-user `meta` keys: vnode(4) tag(1) user(8).
inline constexpr char kMetaUserStateTag = 'U';
inline constexpr char kMetaArchivePendingTag = 'A';
inline constexpr char kMetaSettingsTag = 'S';
inline constexpr char kMetaLastSeenTag = 'L';
inline constexpr char kMetaWroteTag = 'W';
// "The inbox still holds envelopes of devices the user removed": set with the device list
// that removed them, deleted when the archiver has dropped them all.
inline constexpr char kMetaDevicePurgeTag = 'D';
std::string MetaUserStateKey(int32_t vnode, uint64_t user);
std::string MetaArchivePendingKey(int32_t vnode, uint64_t user);
std::string MetaDevicePurgeKey(int32_t vnode, uint64_t user);
std::string MetaSettingsKey(int32_t vnode, uint64_t user);
std::string MetaLastSeenKey(int32_t vnode, uint64_t user);
// "`sender` has sent `user` a 1:1 message": vnode(4) 'W' user(8) sender(8), in user's vnode.
// MetaWroteKey(vnode, user, 0) is the first of user's and MetaWroteKey(vnode, user + 1, 0)
// (user < UINT64_MAX) after the last.
std::string MetaWroteKey(int32_t vnode, uint64_t user, uint64_t sender);
// The user of a per-user `meta` key with the given tag; nullopt for any other key.
std::optional<uint64_t> ParseMetaUserKey(std::string_view key, char tag);

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

// Settings (meta 'S'): a flags byte, then the blocked users (8 bytes each, ascending). A
// value of one byte (the layout before consent) has no blocked users.
struct UserSettings;
std::string EncodeUserSettings(const UserSettings& s);
std::optional<UserSettings> DecodeUserSettings(std::string_view v);

std::string EncodeU64(uint64_t v);
std::optional<uint64_t> DecodeU64(std::string_view v);
std::string EncodeU32(uint32_t v);
std::optional<uint32_t> DecodeU32(std::string_view v);

std::string KeysBundleKey(int32_t vnode, uint64_t user);
std::string PreKeyKey(int32_t vnode, uint64_t user, uint64_t seq);
std::string PreKeyPrefix(int32_t vnode, uint64_t user);  // vnode(4) user(8) 'P'
// The keys of one device (docs/protocol.md appendix 20): device 1's are the keys above;
// another device's bundle is vnode(4) user(8) 'b' device(1) and its one-time prekeys
// vnode(4) user(8) 'q' device(1) seq(8). All of them sort inside the user's range.
std::string DeviceKeysBundleKey(int32_t vnode, uint64_t user, uint32_t device);
std::string DevicePreKeyPrefix(int32_t vnode, uint64_t user, uint32_t device);
std::string DevicePreKeyKey(int32_t vnode, uint64_t user, uint32_t device, uint64_t seq);

struct StoredBundle {
  uint64_t next_seq = 0;
  uint64_t pool_size = 0;
  v1::KeysBundle bundle;  // registration id, identity key, signed prekey
};
std::string EncodeStoredBundle(const StoredBundle& b);
std::optional<StoredBundle> DecodeStoredBundle(std::string_view v);

std::string GroupKey(int32_t vnode, uint64_t group_id);
// A fan-out job of `group_id` (docs/architecture.md, "Group fan-out"): 21 bytes, after the
// group's own 12-byte key. ParseFanOutJobKey: the group and job id; nullopt for any other key.
inline constexpr char kFanOutJobTag = 'F';
std::string FanOutJobKey(int32_t vnode, uint64_t group_id, uint64_t job_id);
std::optional<std::pair<uint64_t, uint64_t>> ParseFanOutJobKey(std::string_view key);

// Envelopes are serialized on the caller's thread without id and sent_at_ms (`body`), and
// the commit thread prefixes those two fields once it has assigned them. Protobuf parsing
// accepts fields in any order, so the result parses to the complete envelope.
std::string EncodeEnvelopeBody(v1::Envelope* envelope);  // clears id and sent_at_ms
void EncodeStoredEnvelope(uint64_t id, uint64_t sent_at_ms, std::string_view body,
                          std::string* out);

}  // namespace iris::store
