// The hot tier of the dedup index (docs/storage.md, "Dedup"): the newest acceptances, kept
// in insertion order and found through an open-addressing index on the key's hash.
//
// It replaces a std::unordered_map<std::string, ...> plus an eviction queue of key copies,
// which cost three allocations, three frees and four scattered cache misses per append on
// the commit thread. Here an append adds one slot at the back of a deque (keys up to
// kInlineKeyBytes live in the slot: protocol keys are 4 + 8 + 16 bytes) and one 8-byte cell
// to a flat table; eviction pops the front. Not thread-safe: the commit thread owns it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string_view>

#include "store/store_keys.h"

namespace iris::store {

class HotDedupTable {
 public:
  struct Value {
    DedupEntry entry{};
    uint64_t batch_seq = 0;        // the commit batch that wrote it
    int64_t inserted_mono_ms = 0;  // when it was inserted (eviction by age)
  };
  static constexpr size_t kInlineKeyBytes = 28;  // vnode(4) sender(8) UUIDv7(16)

  // Sizes the index for `expected_entries` without growing; it grows beyond that if needed.
  // `first_seq` numbers the first entry (tests start near 2^32 to cross the wrap of the
  // 32-bit sequence numbers the index cells hold).
  explicit HotDedupTable(size_t expected_entries, uint64_t first_seq = 0);

  // The live entry of `key` (whose 64-bit hash is `hash`), or nullptr. The pointer is valid
  // until the next Insert, Forget or Evict.
  const Value* Find(std::string_view key, uint64_t hash) const;
  // Adds `key`; a live entry of the same key is replaced.
  void Insert(std::string_view key, uint64_t hash, const Value& value);
  // Makes the entry of `key` invisible (it still occupies its place until evicted).
  void Forget(std::string_view key, uint64_t hash);
  // Drops the oldest entries while the oldest was inserted at or before
  // `expired_through_mono_ms`, or while more than `max_entries` remain.
  void Evict(int64_t expired_through_mono_ms, size_t max_entries);

  size_t size() const { return ring_.size(); }  // entries, forgotten ones included
  size_t live() const { return live_; }
  size_t index_cells() const { return mask_ + 1; }

 private:
  struct Slot {
    uint64_t hash = 0;
    Value value;
    uint32_t key_size = 0;
    bool live = false;
    std::array<char, kInlineKeyBytes> inline_key{};
    std::unique_ptr<char[]> long_key;  // keys longer than kInlineKeyBytes
    std::string_view key() const {
      return {key_size <= kInlineKeyBytes ? inline_key.data() : long_key.get(), key_size};
    }
  };

  // An index cell: kOccupied | tag << 32 | the slot's sequence number mod 2^32. The tag is
  // the hash's top 31 bits; a cell's home position is its tag masked to the table size, so
  // deletion can move cells without reading their slots.
  static constexpr uint64_t kOccupied = uint64_t{1} << 63;
  static uint64_t Tag(uint64_t hash) { return hash >> 33; }
  static uint64_t CellTag(uint64_t cell) { return (cell >> 32) & 0x7fffffffu; }
  size_t Home(uint64_t tag) const { return static_cast<size_t>(tag) & mask_; }
  // Where the slot a cell names sits in ring_.
  size_t Position(uint64_t cell) const {
    return static_cast<uint32_t>(static_cast<uint32_t>(cell) - static_cast<uint32_t>(front_seq_));
  }
  uint64_t CellOf(uint64_t hash, uint64_t seq) const {
    return kOccupied | (Tag(hash) << 32) | (seq & 0xffffffffu);
  }
  Slot* FindSlot(std::string_view key, uint64_t hash);
  void Place(uint64_t cell);
  void EraseCell(uint64_t cell);
  void Grow();

  std::deque<Slot> ring_;   // oldest first
  uint64_t front_seq_ = 0;  // sequence number of ring_.front(); the back's is front + size - 1
  // 0 = an empty cell; linear probing. calloc'd: an idle table's pages stay unmapped.
  struct FreeDeleter {
    void operator()(uint64_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint64_t[], FreeDeleter> index_;
  size_t mask_ = 0;
  size_t live_ = 0;
};

}  // namespace iris::store
