#include "store/bloom_ring.h"

#include <algorithm>
#include <cmath>

namespace iris::store {

BloomFilter::BloomFilter(uint64_t expected_keys, uint32_t bits_per_key) {
  const uint64_t bits =
      std::max<uint64_t>(512, expected_keys * std::max<uint32_t>(bits_per_key, 1));
  blocks_ = (bits + 511) / 512;
  words_.assign(blocks_ * 8, 0);
  // ln 2 * bits per key probes is optimal for a classic filter; blocked filters lose a
  // little, which 10 bits/key (~1% false positives) absorbs.
  probes_ = std::clamp(static_cast<int>(std::lround(0.69 * bits_per_key)), 1, 16);
}

void BloomFilter::Add(uint64_t hash) {
  uint64_t* block = &words_[(hash % blocks_) * 8];
  uint32_t h = static_cast<uint32_t>(hash >> 32);
  const uint32_t delta = (h >> 17) | (h << 15);
  for (int i = 0; i < probes_; ++i) {
    const uint32_t bit = h & 511;
    block[bit >> 6] |= uint64_t{1} << (bit & 63);
    h += delta;
  }
}

bool BloomFilter::MayContain(uint64_t hash) const {
  const uint64_t* block = &words_[(hash % blocks_) * 8];
  uint32_t h = static_cast<uint32_t>(hash >> 32);
  const uint32_t delta = (h >> 17) | (h << 15);
  for (int i = 0; i < probes_; ++i) {
    const uint32_t bit = h & 511;
    if ((block[bit >> 6] & (uint64_t{1} << (bit & 63))) == 0) return false;
    h += delta;
  }
  return true;
}

void BloomFilter::Clear() { std::fill(words_.begin(), words_.end(), 0); }

BloomRing::BloomRing(int64_t slot_ms, int slots, uint64_t keys_per_slot, uint32_t bits_per_key,
                     int64_t origin_mono_ms)
    : slot_ms_(std::max<int64_t>(slot_ms, 1)),
      origin_mono_ms_(origin_mono_ms),
      keys_per_slot_(keys_per_slot) {
  const int n = std::max(slots, 2);
  slots_.reserve(n);
  for (int i = 0; i < n; ++i) slots_.push_back(Slot{0, BloomFilter(keys_per_slot, bits_per_key)});
  // Slot days newest-n+1 .. newest (= 0).
  for (int64_t d = -(n - 1); d <= 0; ++d) SlotFor(d).day = d;
}

void BloomRing::Advance(int64_t mono_ms) {
  const int64_t day = (mono_ms - origin_mono_ms_) / slot_ms_;
  if (day <= newest_) return;
  const int64_t n = static_cast<int64_t>(slots_.size());
  for (int64_t d = std::max(newest_ + 1, day - n + 1); d <= day; ++d) {
    Slot& s = SlotFor(d);
    s.filter.Clear();
    s.keys = 0;
    s.day = d;
  }
  newest_ = day;
}

void BloomRing::Add(uint64_t hash, int64_t age_slots) {
  const int64_t n = static_cast<int64_t>(slots_.size());
  const int64_t day = newest_ - std::clamp<int64_t>(age_slots, 0, n - 1);
  Slot& s = SlotFor(day);
  s.filter.Add(hash);
  ++s.keys;
}

bool BloomRing::MayContain(uint64_t hash) const {
  // A key absent from the window (the common case) reads one block in every slot: start
  // all the cache misses before waiting on the first.
  for (const Slot& s : slots_) s.filter.Prefetch(hash);
  for (const Slot& s : slots_) {
    if (s.filter.MayContain(hash)) return true;
  }
  return false;
}

}  // namespace iris::store
