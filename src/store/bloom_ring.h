#pragma once
// The warm dedup tier (RFC-001 §6.2): a ring of Bloom filters, one per day ("slot"),
// covering at least the dedup window. It is only ever used as a NEGATIVE cache: "no" means
// the key was not accepted within the window and costs nothing; "maybe" sends the caller to
// the authoritative `dedup` column family. A false positive therefore costs one read, never
// a lost or duplicated message.
//
// Slots rotate by monotonic time (a wall clock stepped forwards cannot expire keys early):
// a key added with age 0 stays in the ring for at least (slots - 1) slot periods.
//
// Thread-safety: none; the owner serialises access (DedupIndex holds a mutex).

#include <cstddef>
#include <cstdint>
#include <vector>

namespace iris::store {

// A blocked Bloom filter (one 64-byte block per key, k probes inside it).
class BloomFilter {
 public:
  BloomFilter(uint64_t expected_keys, uint32_t bits_per_key);
  void Add(uint64_t hash);
  bool MayContain(uint64_t hash) const;
  // Starts loading the cache line MayContain(hash) will read.
  void Prefetch(uint64_t hash) const { __builtin_prefetch(&words_[(hash % blocks_) * 8]); }
  void Clear();

 private:
  std::vector<uint64_t> words_;  // blocks of 8 words
  uint64_t blocks_;
  int probes_;
};

class BloomRing {
 public:
  // `slots` >= 2; `origin_mono_ms` is the monotonic time of slot 0.
  BloomRing(int64_t slot_ms, int slots, uint64_t keys_per_slot, uint32_t bits_per_key,
            int64_t origin_mono_ms);

  // Rotates to the slot of `mono_ms`, clearing slots that fell out of the ring.
  void Advance(int64_t mono_ms);
  // Adds a key accepted `age_slots` slots before the current one (clamped to the ring).
  void Add(uint64_t hash, int64_t age_slots = 0);
  bool MayContain(uint64_t hash) const;

  // Keys added to the current slot, and what each slot is sized for: beyond it the
  // false-positive rate climbs (towards 1), and every "maybe" costs a read.
  uint64_t newest_keys() const { return slots_[SlotIndex(newest_)].keys; }
  uint64_t keys_per_slot() const { return keys_per_slot_; }

  int slots() const { return static_cast<int>(slots_.size()); }
  int64_t slot_ms() const { return slot_ms_; }

 private:
  struct Slot {
    int64_t day;
    BloomFilter filter;
    uint64_t keys = 0;  // added since the slot was last cleared
  };
  size_t SlotIndex(int64_t day) const {
    const int64_t n = static_cast<int64_t>(slots_.size());
    return static_cast<size_t>(((day % n) + n) % n);
  }
  Slot& SlotFor(int64_t day) { return slots_[SlotIndex(day)]; }

  const int64_t slot_ms_;
  const int64_t origin_mono_ms_;
  const uint64_t keys_per_slot_;
  int64_t newest_ = 0;
  std::vector<Slot> slots_;
};

}  // namespace iris::store
