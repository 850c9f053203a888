#pragma once
// Limiter state that every process of a node shares (docs/architecture.md, "Node-wide
// limiter state"): one mapping holding fixed-capacity hash tables of trivially copyable
// limiter states, so that a limit means the same with 1 or N edge processes.
//
//   SharedRegion       the mapping: a header (magic, layout version, sizes, hash seed) and
//                      the tables. Created by the core process on a memfd (MAP_SHARED) and
//                      inherited by the edge processes, which Attach() it; in the embedded
//                      shape (and for a limiter built on its own) it is a private anonymous
//                      mapping, so both shapes run the same code.
//   SharedTable        one table of the region: 16 shards, each a process-shared robust
//                      mutex and an open-addressing index (linear probing, backward-shift
//                      deletion) of at most per_shard_cap entries in 2 * cap (power of two)
//                      slots. No pointers live in the mapping, only indices from its start.
//
// The layout is shared between processes of the same binary only: Attach() checks the
// header (magic, version, slot and mutex sizes, every table's key/entry size and capacity)
// and refuses a mismatch with a message naming it.
//
// A process that dies holding a shard lock (SIGKILL) leaves the shard to the next locker:
// it gets EOWNERDEAD, rebuilds the shard's index from the slots it finds (an interrupted
// backward shift may have left a key twice or a count off; the rebuild keeps one copy of
// each key), marks the mutex consistent and goes on. The interrupted update itself may be
// lost, which only ever forgets one take.
//
// Thread- and process-safety: every table operation takes its shard's lock; the header is
// written once by Create() before any other process maps the region.

#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/status.h"

namespace iris::edge::internal {

// What one table of a region holds; the same list must be given to Create() and Attach().
struct TableSpec {
  uint32_t key_size = 0;
  uint32_t entry_size = 0;
  uint64_t max_entries = 0;
  friend bool operator==(const TableSpec&, const TableSpec&) = default;
};

class SharedRegion {
 public:
  static constexpr size_t kShards = 16;
  static constexpr size_t kMaxTables = 12;
  // Bytes of one slot of a table of `spec` (SharedTable::Slot: a used word, the key and the
  // entry, each at 8-byte alignment).
  static constexpr uint64_t SlotSize(uint64_t key_size, uint64_t entry_size) {
    return 8 + (key_size + 7) / 8 * 8 + (entry_size + 7) / 8 * 8;
  }

  // Where table i of the region lives, from the start of the mapping.
  struct TableLayout {
    TableSpec spec;
    uint64_t offset = 0;         // of its kShards shard headers, then each shard's slots
    uint64_t per_shard_cap = 0;  // entries per shard
    uint64_t slots = 0;          // slots per shard (power of two, > per_shard_cap)
    uint64_t slot_size = 0;      // bytes per slot (see SharedTable::Slot)
  };

  // A shard's header in the mapping.
  struct alignas(64) ShardHeader {
    pthread_mutex_t mu;     // process-shared, robust
    uint64_t count;         // used slots
    int64_t next_sweep_ns;  // a full shard is not swept on demand before this
    // No entry is full before this (a lower bound, lowered by every update), so a
    // periodic Sweep() skips the shard until then without reading its slots.
    int64_t min_full_ns;
    // Bit b: block b of the slots (kBlocks blocks of slots / kBlocks) may hold an entry.
    // Set on insert, cleared by a sweep that finds the block empty, so a sweep reads only
    // the blocks in use (and never faults in the pages of a sparse table).
    uint64_t blocks[8];
  };
  static constexpr size_t kBlocks = 8 * 64;

  enum class Mode {
    kPrivate,  // anonymous private mapping: this process only
    kShared,   // memfd: fd() can be inherited by child processes and Attach()ed there
  };

  // Creates a zeroed region with `tables` (at most kMaxTables) and the hash seed `seed`.
  // kShared: the memfd has FD_CLOEXEC set; the caller clears it in the child it execs.
  static Result<std::shared_ptr<SharedRegion>> Create(const std::vector<TableSpec>& tables,
                                                      Mode mode, uint64_t seed);
  // Maps the region of `fd` (a kShared region's fd inherited from the process that created
  // it) and checks that its header describes exactly `tables` in a layout of this binary.
  // Takes ownership of fd (closed with the region). BAD_REQUEST naming the mismatch.
  static Result<std::shared_ptr<SharedRegion>> Attach(int fd, const std::vector<TableSpec>& tables);

  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  int fd() const { return fd_; }  // -1 for kPrivate
  uint64_t seed() const;
  size_t table_count() const;
  const TableLayout& layout(size_t table) const;
  ShardHeader& shard(size_t table, size_t shard) const;
  // The first slot of a shard.
  unsigned char* slots(size_t table, size_t shard) const;
  size_t mapped_bytes() const { return size_; }

  // Locks a shard; on EOWNERDEAD calls `repair` (with the lock held) before marking the
  // mutex consistent. Aborts on any other error (a corrupt mutex: nothing safe to do).
  template <typename Repair>
  void Lock(ShardHeader& s, Repair repair) const {
    const int rc = pthread_mutex_lock(&s.mu);
    if (rc == 0) return;
    if (rc == EOWNERDEAD) {
      repair();
      pthread_mutex_consistent(&s.mu);
      return;
    }
    LockFailed(rc);
  }
  static void Unlock(ShardHeader& s) { pthread_mutex_unlock(&s.mu); }

 private:
  SharedRegion(void* base, size_t size, int fd)
      : base_(static_cast<unsigned char*>(base)), size_(size), fd_(fd) {}
  [[noreturn]] static void LockFailed(int rc);

  unsigned char* base_;
  size_t size_;
  int fd_;
};

// Table `index` of a region: Key -> Entry, bounded as BoundedTable documents. Key and Entry
// must be trivially copyable (they are copied in and out of the mapping as bytes) and Key
// comparable with ==. Entry needs `int64_t FullAtNanos() const` and `bool IsFull(int64_t now)
// const`, equal to FullAtNanos() <= now.
template <typename Key, typename Entry, typename Hash>
class SharedTable {
  static_assert(std::is_trivially_copyable_v<Key> && std::is_trivially_copyable_v<Entry>,
                "shared-memory entries are copied as bytes");

 public:
  static constexpr size_t kShards = SharedRegion::kShards;
  static constexpr int64_t kMinSweepIntervalNs = 50'000'000;

  struct Slot {
    uint64_t used;  // 0: empty (a zeroed mapping is an empty table)
    Key key;
    alignas(Entry) unsigned char entry[sizeof(Entry)];
    Entry& value() { return *std::launder(reinterpret_cast<Entry*>(entry)); }
  };

  static_assert(alignof(Key) <= 8 && alignof(Entry) <= 8);
  static_assert(sizeof(Slot) == SharedRegion::SlotSize(sizeof(Key), sizeof(Entry)),
                "SharedRegion computes the slot layout");

  static TableSpec Spec(size_t max_entries) {
    return TableSpec{static_cast<uint32_t>(sizeof(Key)), static_cast<uint32_t>(sizeof(Entry)),
                     static_cast<uint64_t>(max_entries)};
  }

  // The region must hold a table of Spec(...) at `index`; `salt` varies the region's seed.
  SharedTable(std::shared_ptr<SharedRegion> region, size_t index, uint64_t salt)
      : region_(std::move(region)), index_(index), hash_{region_->seed() ^ salt} {
    const auto& l = region_->layout(index_);
    cap_ = l.per_shard_cap;
    mask_ = l.slots - 1;
    while ((l.slots >> block_shift_) > SharedRegion::kBlocks) ++block_shift_;
  }

  template <typename Make, typename Fn>
  bool Update(const Key& key, int64_t now_ns, Make make, Fn fn, int64_t* retry_ns) {
    const uint64_t h = hash_(key);
    const size_t si = h % kShards;
    Guard g(*this, si);
    Slot* slots = SlotsOf(si);
    size_t i = Find(slots, key, h);
    if (!slots[i].used) {
      SharedRegion::ShardHeader& s = g.shard();
      if (s.count >= cap_) {
        if (now_ns >= s.next_sweep_ns) SweepLocked(si, now_ns);
        if (s.count >= cap_) {
          *retry_ns = s.next_sweep_ns > now_ns ? s.next_sweep_ns - now_ns : kMinSweepIntervalNs;
          return false;
        }
        i = Find(slots, key, h);  // the sweep moved slots
      }
      // In this order, with compiler fences, so that a process killed anywhere in between
      // leaves nothing Rebuild cannot repair: the block's bit, the slot, then `used`.
      s.blocks[(i >> block_shift_) / 64] |= uint64_t{1} << ((i >> block_shift_) % 64);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      slots[i].key = key;
      ::new (static_cast<void*>(slots[i].entry)) Entry(make());
      std::atomic_signal_fence(std::memory_order_seq_cst);
      slots[i].used = 1;
      ++s.count;
    }
    fn(slots[i].value());
    SharedRegion::ShardHeader& s = g.shard();
    s.min_full_ns = std::min(s.min_full_ns, slots[i].value().FullAtNanos());
    return true;
  }

  template <typename Fn>
  auto Read(const Key& key, Fn fn) const {
    const uint64_t h = hash_(key);
    const size_t si = h % kShards;
    Guard g(*this, si);
    Slot* slots = SlotsOf(si);
    const size_t i = Find(slots, key, h);
    return fn(slots[i].used ? &std::as_const(slots[i].value()) : nullptr);
  }

  void Sweep(int64_t now_ns) {
    for (size_t si = 0; si < kShards; ++si) {
      Guard g(*this, si);
      // Nothing to drop before min_full_ns: the slots are not even read (a sparse table's
      // pages stay untouched, and the periodic sweep of a quiet table is cheap).
      if (g.shard().count == 0 || now_ns < g.shard().min_full_ns) continue;
      SweepLocked(si, now_ns);
    }
  }

  size_t size() const {
    size_t n = 0;
    for (size_t si = 0; si < kShards; ++si) {
      Guard g(*this, si);
      n += g.shard().count;
    }
    return n;
  }

  size_t capacity() const { return cap_ * kShards; }
  const SharedRegion& region() const { return *region_; }

  // Removes `key` (for tests of the index). True when it was present.
  bool Erase(const Key& key) {
    const uint64_t h = hash_(key);
    const size_t si = h % kShards;
    Guard g(*this, si);
    Slot* slots = SlotsOf(si);
    const size_t i = Find(slots, key, h);
    if (!slots[i].used) return false;
    EraseAt(si, i);
    return true;
  }

 private:
  class Guard {
   public:
    Guard(const SharedTable& t, size_t si) : s_(t.region_->shard(t.index_, si)) {
      t.region_->Lock(s_, [&t, si] { t.Rebuild(si); });
    }
    ~Guard() { SharedRegion::Unlock(s_); }
    SharedRegion::ShardHeader& shard() const { return s_; }

   private:
    SharedRegion::ShardHeader& s_;
  };

  Slot* SlotsOf(size_t si) const { return reinterpret_cast<Slot*>(region_->slots(index_, si)); }
  size_t Home(uint64_t h) const { return static_cast<size_t>(h / kShards) & mask_; }
  size_t HomeOf(const Key& key) const { return Home(hash_(key)); }

  // The slot holding `key`, or the empty slot where it would go. There is always an empty
  // slot (slots > cap), so the probe ends.
  size_t Find(Slot* slots, const Key& key, uint64_t h) const {
    size_t i = Home(h);
    while (slots[i].used && !(slots[i].key == key)) i = (i + 1) & mask_;
    return i;
  }

  // Backward-shift deletion: entries after the hole that may live there move back into it.
  void EraseAt(size_t si, size_t i) const {
    Slot* slots = SlotsOf(si);
    size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (!slots[j].used) break;
      const size_t k = HomeOf(slots[j].key);
      // slots[j] may move to i when i lies cyclically in [k, j).
      if (((j - k) & mask_) >= ((j - i) & mask_)) {
        std::memcpy(static_cast<void*>(&slots[i]), &slots[j], sizeof(Slot));
        i = j;
      }
    }
    slots[i].used = 0;
    --region_->shard(index_, si).count;
  }

  void SweepLocked(size_t si, int64_t now_ns) const {
    SharedRegion::ShardHeader& s = region_->shard(index_, si);
    Slot* slots = SlotsOf(si);
    const uint64_t before = s.count;
    int64_t earliest_full = std::numeric_limits<int64_t>::max();
    const size_t block_slots = size_t{1} << block_shift_;
    for (size_t b = 0; b * block_slots <= mask_; ++b) {
      uint64_t& word = s.blocks[b / 64];
      const uint64_t bit = uint64_t{1} << (b % 64);
      if ((word & bit) == 0) continue;  // no entry in this block
      bool any = false;
      for (size_t i = b * block_slots; i < (b + 1) * block_slots; ++i) {
        // An erase may shift a later entry into i: look at i again. (Entries only ever
        // move into slots that held one, so into blocks whose bit is set.)
        while (slots[i].used && slots[i].value().IsFull(now_ns)) EraseAt(si, i);
        if (slots[i].used) {
          any = true;
          earliest_full = std::min(earliest_full, slots[i].value().FullAtNanos());
        }
      }
      if (!any) word &= ~bit;
    }
    s.min_full_ns = earliest_full;
    const uint64_t freed = before - s.count;
    if (freed >= cap_ / 16 + 1) {
      s.next_sweep_ns = std::numeric_limits<int64_t>::min();
    } else {
      const int64_t floor = now_ns + kMinSweepIntervalNs;
      s.next_sweep_ns = earliest_full > floor ? earliest_full : floor;
    }
  }

  // After a process died holding the shard's lock: re-inserts every used slot, one copy of
  // each key, and recounts the entries and the block bits. Every slot is read, whatever the
  // bits say: the dead process may have stopped anywhere in Update, EraseAt or a sweep, and
  // the bits and the count are exactly what it may have left inconsistent (a rare path, so
  // touching the whole shard is fine).
  void Rebuild(size_t si) const {
    Slot* slots = SlotsOf(si);
    SharedRegion::ShardHeader& s = region_->shard(index_, si);
    std::vector<Slot> live;
    for (size_t i = 0; i <= mask_; ++i) {
      if (slots[i].used) live.push_back(slots[i]);
    }
    std::memset(static_cast<void*>(slots), 0, sizeof(Slot) * (mask_ + 1));
    std::memset(s.blocks, 0, sizeof(s.blocks));
    uint64_t count = 0;
    for (const Slot& e : live) {
      const size_t i = Find(slots, e.key, hash_(e.key));
      if (slots[i].used || count >= cap_) continue;  // a duplicate left by a cut-off shift
      std::memcpy(static_cast<void*>(&slots[i]), &e, sizeof(Slot));
      s.blocks[(i >> block_shift_) / 64] |= uint64_t{1} << ((i >> block_shift_) % 64);
      ++count;
    }
    s.count = count;
    s.next_sweep_ns = std::numeric_limits<int64_t>::min();
    s.min_full_ns = std::numeric_limits<int64_t>::min();  // unknown: the next sweep looks
  }

  std::shared_ptr<SharedRegion> region_;
  size_t index_;
  Hash hash_;
  uint64_t cap_ = 1;
  size_t mask_ = 0;
  unsigned block_shift_ = 0;  // slots per block = 1 << block_shift_
};

}  // namespace iris::edge::internal
