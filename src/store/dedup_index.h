#pragma once
// DedupIndex: (vnode, sender, idempotency key) -> first message id over the dedup window
// (the vnode is the inbox owner's, store_keys.h), in three
// tiers (RFC-001 §1.2, §6.2; DESIGN.md §3):
//   hot    an in-memory map of the keys accepted in the last `dedup_hot_window_ms`
//          (bounded by `dedup_hot_max_entries`); answers retries without any I/O;
//   warm   a BloomRing of daily filters over the window, used only as a negative cache;
//   cold   the authoritative `dedup` column family, read only when the filters say "maybe".
// Entries past the window are ignored by Lookup and dropped by DedupExpiryFilter when RocksDB
// compacts the column family.
//
// After Open the Bloom filters are empty, so until a background pass over the `dedup`
// column family has refilled them (RebuildReady()), every lookup that misses the hot tier
// reads the column family: correctness never depends on the filters being complete.
//
// Thread-safety: Lookup, Remember, Forget and Evict are called only by the commit thread.
// The Bloom ring is shared with the rebuild thread under an internal mutex.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/clock.h"
#include "common/status.h"
#include "store/bloom_ring.h"
#include "store/hot_dedup_table.h"
#include "store/store_db.h"
#include "store/store_keys.h"

namespace iris::store {

struct DedupIndexOptions {
  int64_t window_ms = 7LL * 24 * 3600 * 1000;
  int64_t hot_window_ms = 5LL * 60 * 1000;
  size_t hot_max_entries = 1'000'000;
  uint64_t bloom_keys_per_day = 1'000'000;
  uint32_t bloom_bits_per_key = 10;
};

struct DedupStats {
  uint64_t hot_hits = 0;
  uint64_t bloom_negatives = 0;
  uint64_t db_lookups = 0;
  uint64_t bloom_keys_today = 0;    // keys in the newest daily filter
  uint64_t bloom_keys_per_day = 0;  // what each filter is sized for
};

class DedupIndex {
 public:
  // `clock` and `db` must outlive the index.
  DedupIndex(const DedupIndexOptions& options, const Clock& clock, const StoreDb& db);
  ~DedupIndex();  // stops the rebuild

  struct Hit {
    DedupEntry entry;
    uint64_t batch_seq;  // the commit batch that wrote it (0 = durable before this run)
  };

  // The hash every tier is keyed on; compute it once per key and pass it to both calls.
  static uint64_t Hash(std::string_view dedup_key);

  // The first acceptance of `dedup_key` (DedupKey(vnode, sender, key); `hash` =
  // Hash(dedup_key))
  // within the window, or nullopt. Errors: INTERNAL when the column family cannot be read.
  Result<std::optional<Hit>> Lookup(std::string_view dedup_key, uint64_t hash);

  // Records an acceptance made by batch `batch_seq` (hot tier and Bloom filters). The
  // caller writes the `dedup` column family entry in the same batch.
  void Remember(std::string_view dedup_key, uint64_t hash, const DedupEntry& entry,
                uint64_t batch_seq);
  // Undoes Remember for a batch that failed to commit (the Bloom bit stays: a false
  // positive is harmless).
  void Forget(std::string_view dedup_key);
  // Adds a key another node accepted (replicated into the `dedup` column family) to the
  // Bloom filters only. Unlike the rest, callable from any thread.
  void NoteApplied(std::string_view dedup_key);
  // Drops hot entries past the hot window or over the size bound.
  void Evict();
  // Drops every hot entry (lookups then read the column family, through the filters).
  void ForgetAllHot();

  // Starts the background refill of the Bloom filters from the column family.
  void StartRebuild();
  bool RebuildReady() const { return bloom_ready_.load(std::memory_order_acquire); }
  // Waits for the refill (tests); false on timeout.
  bool WaitRebuild(int64_t timeout_ms) const;

  DedupStats stats() const;

 private:
  void RunRebuild();

  const DedupIndexOptions options_;
  const Clock& clock_;
  const StoreDb& db_;

  HotDedupTable hot_;  // commit thread only

  mutable std::mutex bloom_mu_;
  mutable std::condition_variable bloom_cv_;
  BloomRing bloom_;  // guarded by bloom_mu_
  std::atomic<bool> bloom_ready_{false};
  std::atomic<bool> stop_rebuild_{false};
  std::thread rebuild_thread_;

  std::atomic<uint64_t> hot_hits_{0};
  std::atomic<uint64_t> bloom_negatives_{0};
  std::atomic<uint64_t> db_lookups_{0};
};

}  // namespace iris::store
