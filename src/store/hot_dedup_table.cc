#include "store/hot_dedup_table.h"

#include <cstring>
#include <new>

namespace iris::store {
namespace {

uint64_t* ZeroedCells(size_t n) {
  void* p = std::calloc(n, sizeof(uint64_t));
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<uint64_t*>(p);
}

}  // namespace

HotDedupTable::HotDedupTable(size_t expected_entries, uint64_t first_seq)
    : front_seq_(first_seq) {
  // At most half full at the expected size: probes stay short.
  size_t cells = 16;
  while (cells < 2 * expected_entries) cells *= 2;
  index_.reset(ZeroedCells(cells));
  mask_ = cells - 1;
}

HotDedupTable::Slot* HotDedupTable::FindSlot(std::string_view key, uint64_t hash) {
  const uint64_t tag = Tag(hash);
  for (size_t i = Home(tag);; i = (i + 1) & mask_) {
    const uint64_t cell = index_[i];
    if (cell == 0) return nullptr;
    if (CellTag(cell) != tag) continue;
    Slot& s = ring_[Position(cell)];
    if (s.live && s.hash == hash && s.key() == key) return &s;
  }
}

const HotDedupTable::Value* HotDedupTable::Find(std::string_view key, uint64_t hash) const {
  Slot* s = const_cast<HotDedupTable*>(this)->FindSlot(key, hash);
  return s != nullptr ? &s->value : nullptr;
}

void HotDedupTable::Place(uint64_t cell) {
  size_t i = Home(CellTag(cell));
  while (index_[i] != 0) i = (i + 1) & mask_;
  index_[i] = cell;
}

void HotDedupTable::EraseCell(uint64_t cell) {
  // Cells are unique (sequence numbers are), so the first equal cell is the one.
  size_t i = Home(CellTag(cell));
  while (index_[i] != cell) i = (i + 1) & mask_;
  // Backward-shift deletion: pull later cells of the probe run into the hole unless their
  // home lies cyclically in (hole, cell], where moving them would put them before it.
  for (size_t j = i;;) {
    j = (j + 1) & mask_;
    const uint64_t c = index_[j];
    if (c == 0) break;
    const size_t home = Home(CellTag(c));
    const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (stays) continue;
    index_[i] = c;
    i = j;
  }
  index_[i] = 0;
}

void HotDedupTable::Grow() {
  const size_t cells = 2 * (mask_ + 1);
  index_.reset(ZeroedCells(cells));
  mask_ = cells - 1;
  for (size_t p = 0; p < ring_.size(); ++p) Place(CellOf(ring_[p].hash, front_seq_ + p));
}

void HotDedupTable::Insert(std::string_view key, uint64_t hash, const Value& value) {
  if (Slot* old = FindSlot(key, hash)) {
    old->live = false;
    --live_;
  }
  // Keep the index at most 70 % full (the ring may run past the expected size between
  // evictions).
  if ((ring_.size() + 1) * 10 > (mask_ + 1) * 7) Grow();
  Slot& s = ring_.emplace_back();
  s.hash = hash;
  s.value = value;
  s.key_size = static_cast<uint32_t>(key.size());
  s.live = true;
  if (key.size() <= kInlineKeyBytes) {
    std::memcpy(s.inline_key.data(), key.data(), key.size());
  } else {
    s.long_key = std::make_unique<char[]>(key.size());
    std::memcpy(s.long_key.get(), key.data(), key.size());
  }
  ++live_;
  Place(CellOf(hash, front_seq_ + ring_.size() - 1));
}

void HotDedupTable::Forget(std::string_view key, uint64_t hash) {
  if (Slot* s = FindSlot(key, hash)) {
    s->live = false;
    --live_;
  }
}

void HotDedupTable::Evict(int64_t expired_through_mono_ms, size_t max_entries) {
  while (!ring_.empty()) {
    const Slot& oldest = ring_.front();
    if (oldest.value.inserted_mono_ms > expired_through_mono_ms && ring_.size() <= max_entries) {
      break;
    }
    EraseCell(CellOf(oldest.hash, front_seq_));
    if (oldest.live) --live_;
    ring_.pop_front();
    ++front_seq_;
  }
}

}  // namespace iris::store
