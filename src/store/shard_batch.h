#pragma once
// Shard batches: a store write as a shard's replication log carries it (docs/replication.md,
// "What is left"). One group-commit batch is split by the shard of each key, and each part
// is encoded so that another node's store applies exactly those operations
// (InboxStore::ApplyShardBatch): a backup's store then holds the same records as the
// primary's, counters, dedup entries and HLC high-water marks included.
//
// Which shard a key belongs to: the shard of its vnode (every per-user and per-group key
// starts with its 4-byte vnode, which is below 2^24 so its first byte is 0), and for the
// per-shard HLC high-water mark ('H' shard(4) in `meta`) that shard. Node-wide records
// (token revocations, the vnode count, the layout version) belong to no shard and are not
// part of any shard batch. A range deletion belongs to the shard of its first key (the
// store's range deletions never span vnodes).
//
// Encoding, repeated: kind(1: 'P' put, 'D' delete, 'R' range delete) cf(1) varint32 key
// size, key, varint32 size, value (for 'R': the end of the range).

#include <rocksdb/write_batch.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "store/store_db.h"

namespace iris::store {

struct ShardOp {
  char kind = 'P';  // 'P', 'D', 'R'
  Cf cf = Cf::kInbox;
  std::string key;
  std::string value;  // 'P': the value; 'R': the range's end
  bool operator==(const ShardOp&) const = default;
};

void AppendShardOp(const ShardOp& op, std::string* out);
// BAD_REQUEST for a payload that is not a sequence of well-formed operations.
Result<std::vector<ShardOp>> DecodeShardOps(std::string_view payload);

// The shard (through vnode_shard, indexed by vnode) a key of `cf` belongs to, or nullopt for
// a node-wide record (or a vnode beyond vnode_shard).
std::optional<uint32_t> ShardOfKey(Cf cf, std::string_view key,
                                   const std::vector<uint32_t>& vnode_shard);

// Splits a WriteBatch of `db` (its column family ids) into encoded per-shard payloads; the
// node-wide operations are encoded the same way into *node_wide when it is given (dropped
// otherwise). INTERNAL for an operation the store never writes (merge, an unknown column
// family).
Result<std::map<uint32_t, std::string>> SplitByShard(const rocksdb::WriteBatch& batch,
                                                     const StoreDb& db,
                                                     const std::vector<uint32_t>& vnode_shard,
                                                     std::string* node_wide = nullptr);

}  // namespace iris::store
