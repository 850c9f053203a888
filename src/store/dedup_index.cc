#include "store/dedup_index.h"

#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <limits>

namespace iris::store {
namespace {

constexpr int64_t kDayMs = 24LL * 3600 * 1000;

int RingSlots(int64_t window_ms) {
  // Enough daily slots to cover the window plus the partly elapsed current day.
  return static_cast<int>((window_ms + kDayMs - 1) / kDayMs) + 1;
}

}  // namespace

DedupIndex::DedupIndex(const DedupIndexOptions& options, const Clock& clock, const StoreDb& db)
    : options_(options),
      clock_(clock),
      db_(db),
      // Room for the bound plus what one batch adds before Evict() runs: growing the index
      // of a million keys would rehash it on the commit thread (a latency spike for every
      // append queued behind it).
      hot_(options.hot_max_entries + 4096),
      bloom_(kDayMs, RingSlots(options.window_ms), options.bloom_keys_per_day,
             options.bloom_bits_per_key, clock.MonoMillis()) {}

DedupIndex::~DedupIndex() {
  stop_rebuild_.store(true, std::memory_order_release);
  if (rebuild_thread_.joinable()) rebuild_thread_.join();
}

uint64_t DedupIndex::Hash(std::string_view dedup_key) {
  return XXH3_64bits(dedup_key.data(), dedup_key.size());
}

Result<std::optional<DedupIndex::Hit>> DedupIndex::Lookup(std::string_view dedup_key,
                                                          uint64_t hash) {
  const int64_t now = clock_.WallMillis();
  auto live = [&](const DedupEntry& e) { return e.accepted_ms + options_.window_ms > now; };

  if (const HotDedupTable::Value* hot = hot_.Find(dedup_key, hash)) {
    if (!live(hot->entry)) return std::optional<Hit>();
    hot_hits_.fetch_add(1, std::memory_order_relaxed);
    return std::optional<Hit>(Hit{hot->entry, hot->batch_seq});
  }
  if (bloom_ready_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(bloom_mu_);
    bloom_.Advance(clock_.MonoMillis());
    if (!bloom_.MayContain(hash)) {
      bloom_negatives_.fetch_add(1, std::memory_order_relaxed);
      return std::optional<Hit>();
    }
  }
  db_lookups_.fetch_add(1, std::memory_order_relaxed);
  std::string value;
  const rocksdb::Status s =
      db_.db()->Get(rocksdb::ReadOptions(), db_.cf(Cf::kDedup),
                    rocksdb::Slice(dedup_key.data(), dedup_key.size()), &value);
  if (s.IsNotFound()) return std::optional<Hit>();
  if (!s.ok()) return FromRocks(s, "store: dedup lookup");
  const std::optional<DedupEntry> e = DecodeDedupEntry(value);
  if (!e) return Internal("store: malformed dedup entry");
  if (!live(*e)) return std::optional<Hit>();
  return std::optional<Hit>(Hit{*e, 0});
}

void DedupIndex::Remember(std::string_view dedup_key, uint64_t hash, const DedupEntry& entry,
                          uint64_t batch_seq) {
  const int64_t mono = clock_.MonoMillis();
  hot_.Insert(dedup_key, hash, HotDedupTable::Value{entry, batch_seq, mono});
  std::lock_guard<std::mutex> lock(bloom_mu_);
  bloom_.Advance(mono);
  bloom_.Add(hash);
}

void DedupIndex::NoteApplied(std::string_view dedup_key) {
  const uint64_t hash = Hash(dedup_key);
  std::lock_guard<std::mutex> lock(bloom_mu_);
  bloom_.Advance(clock_.MonoMillis());
  bloom_.Add(hash);
}

void DedupIndex::Forget(std::string_view dedup_key) { hot_.Forget(dedup_key, Hash(dedup_key)); }

void DedupIndex::Evict() {
  hot_.Evict(clock_.MonoMillis() - options_.hot_window_ms, options_.hot_max_entries);
}

void DedupIndex::ForgetAllHot() { hot_.Evict(std::numeric_limits<int64_t>::max(), 0); }

void DedupIndex::StartRebuild() {
  rebuild_thread_ = std::thread([this] { RunRebuild(); });
}

void DedupIndex::RunRebuild() {
  // Entries committed after this snapshot were Remember()ed by the commit thread, so
  // snapshot + live inserts together cover every entry.
  // Holding the database keeps a reopen (after a write error) waiting until the pass ends.
  const StoreDb::ReadHold db = db_.Hold();
  if (!db.ok()) return;  // the filters stay unused; every lookup reads the column family
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  const rocksdb::Snapshot* snapshot = db.db()->GetSnapshot();
  ro.snapshot = snapshot;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kDedup)));
  const int64_t now = clock_.WallMillis();
  constexpr int kChunk = 1024;
  std::vector<std::pair<uint64_t, int64_t>> chunk;  // (hash, age in slots)
  chunk.reserve(kChunk);
  auto flush = [&] {
    std::lock_guard<std::mutex> lock(bloom_mu_);
    bloom_.Advance(clock_.MonoMillis());
    for (const auto& [h, age] : chunk) bloom_.Add(h, age);
    chunk.clear();
  };
  bool complete = true;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (stop_rebuild_.load(std::memory_order_acquire)) {
      complete = false;
      break;
    }
    const std::optional<DedupEntry> e =
        DecodeDedupEntry(std::string_view(it->value().data(), it->value().size()));
    if (!e) continue;
    if (e->accepted_ms + options_.window_ms <= now) continue;
    const int64_t age = std::max<int64_t>(0, now - e->accepted_ms) / bloom_.slot_ms();
    chunk.emplace_back(Hash(std::string_view(it->key().data(), it->key().size())), age);
    if (chunk.size() == kChunk) flush();
  }
  if (!it->status().ok()) complete = false;  // keep reading the column family instead
  it.reset();
  db.db()->ReleaseSnapshot(snapshot);
  flush();
  if (complete) {
    std::lock_guard<std::mutex> lock(bloom_mu_);
    bloom_ready_.store(true, std::memory_order_release);
    bloom_cv_.notify_all();
  }
}

bool DedupIndex::WaitRebuild(int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(bloom_mu_);
  return bloom_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                            [&] { return bloom_ready_.load(std::memory_order_acquire); });
}

DedupStats DedupIndex::stats() const {
  DedupStats s{hot_hits_.load(std::memory_order_relaxed),
               bloom_negatives_.load(std::memory_order_relaxed),
               db_lookups_.load(std::memory_order_relaxed)};
  std::lock_guard<std::mutex> lock(bloom_mu_);
  s.bloom_keys_today = bloom_.newest_keys();
  s.bloom_keys_per_day = bloom_.keys_per_slot();
  return s;
}

}  // namespace iris::store
