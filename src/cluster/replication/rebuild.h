#pragma once
// The state transfer of a rebuild (docs/replication.md, "Catch-up and rebuild"). The state
// machine only says *that* a replica must be rebuilt (the Rebuild effect) and takes the
// result (an InstallSnapshot message); the copy between them runs outside it:
//
//   primary (NodeReplication)                       replica (its ReplicaHost)
//   RebuildChunk{id, seq 0, payload}  ------------>  installs it in the store (synced)
//                                     <------------  RebuildAck{id, 0, ok}
//   ... one chunk in flight, throttled ...
//   RebuildChunk{id, seq n, last}     ------------>  installs it
//                                     <------------  RebuildAck{id, n, ok}
//   InstallSnapshot{epoch, {lsn, epoch, hlc, state = RebuildState(id)}} --> taken only if
//       every chunk of `id` was installed, nothing was applied since its first chunk and
//       every chunk was read at or after lsn; else
//                                     <------------  RebuildAck{id, 2^64 - 1, not ok}
//       (the sender drops the rebuild; the primary's next order starts another)
//
// Each chunk replaces whole key ranges of the shard's vnodes by the primary's records, read
// when the chunk was made (at the primary's applied lsn `read_lsn`). The primary sends a
// chunk only once read_lsn is at least the rebuild's lsn (a commit it knows of may not be
// applied to its store yet: that chunk is read again), and the replica takes the install
// only if every chunk was (a chunk without some batch up to the lsn would lose it: the
// replica is levelled from the lsn on). The replica takes a chunk only if read_lsn is at
// least what it has applied itself (an older chunk would put back records its applied
// batches changed), and only while it has applied nothing since the rebuild's first chunk. Chunks
// are not one snapshot; the replica is then levelled from lsn and replays every later batch, whose
// operations are blind writes: replaying them in order over any state between lsn and now ends in
// the primary's state.

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "cluster/replication/replica.h"

namespace iris::cluster::repl {

struct RebuildChunk {
  uint64_t rebuild = 0;  // the rebuild's id, unique per sender
  uint64_t seq = 0;      // 0, 1, ...
  Epoch epoch = 0;       // the sending primary's epoch
  bool last = false;
  std::string payload;  // the store's encoding (InboxStore::CopyShardChunk)
  Lsn read_lsn = 0;     // the sender's applied lsn of the shard when the chunk was read
};
struct RebuildAck {
  uint64_t rebuild = 0;
  uint64_t seq = 0;
  bool ok = false;  // false: the replica will not take this rebuild; the sender stops it
};
using Transfer = std::variant<RebuildChunk, RebuildAck>;

// The snapshot state an InstallSnapshot carries for rebuild `id` (the data are in the store).
inline std::string RebuildState(uint64_t id) { return "rebuild " + std::to_string(id); }
// The rebuild an InstallSnapshot's state names (0: none).
inline uint64_t RebuildIdOf(std::string_view state) {
  constexpr std::string_view kPrefix = "rebuild ";
  if (state.substr(0, kPrefix.size()) != kPrefix) return 0;
  uint64_t id = 0;
  const char* end = state.data() + state.size();
  const auto [p, ec] = std::from_chars(state.data() + kPrefix.size(), end, id);
  return ec == std::errc() && p == end ? id : 0;
}
// RebuildAck::seq of the answer to a refused InstallSnapshot (ok = false): the sender drops
// the finished rebuild at once, so that the primary's next order starts another, rather
// than holding orders off while it waits for a replica that will not be levelled.
inline constexpr uint64_t kInstallRefusedSeq = ~uint64_t{0};

}  // namespace iris::cluster::repl
