// Dedup of (sender, idempotency key): tiers, restart, window expiry, compaction.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "common/clock.h"
#include "store/inbox_store.h"
#include "store/store_db.h"
#include "store/store_keys.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

constexpr int64_t kHour = 3600 * 1000;

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

TEST(DedupTest, RetryReturnsFirstIdAndStoresNothing) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> first = store->Append(1, "key-1", One(1, 2, "hello"));
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);
  clock.AdvanceMillis(1000);
  Result<AppendOutcome> retry = store->Append(1, "key-1", One(1, 2, "hello again"));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->message_id, first->message_id);
  EXPECT_EQ(retry->accepted_at_ms, first->accepted_at_ms);
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].body(), "hello");
  const StoreStats s = store->Stats();
  EXPECT_EQ(s.duplicates, 1u);
  EXPECT_EQ(s.dedup_hot_hits, 1u);
}

TEST(DedupTest, SameKeyFromDifferentSendersIsNotADuplicate) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> a = store->Append(1, "shared", One(1, 2, "a"));
  Result<AppendOutcome> b = store->Append(3, "shared", One(3, 2, "b"));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->duplicate);
  EXPECT_NE(a->message_id, b->message_id);
  Result<AppendOutcome> no_key = store->Append(1, "", One(1, 2, "c"));
  Result<AppendOutcome> no_key2 = store->Append(1, "", One(1, 2, "c"));
  ASSERT_TRUE(no_key.ok());
  ASSERT_TRUE(no_key2.ok());
  EXPECT_FALSE(no_key2->duplicate);  // an empty key never deduplicates
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 4u);
}

TEST(DedupTest, ConcurrentRetriesOfOneKeyStoreItOnce) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::vector<uint64_t> ids(kThreads);
  std::atomic<int> originals{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        Result<AppendOutcome> r = store->Append(1, "race-" + std::to_string(round), One(1, 2, "x"));
        ASSERT_TRUE(r.ok());
        if (!r->duplicate) originals.fetch_add(1);
        if (round == 0) ids[t] = r->message_id;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(originals.load(), 20);
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(ids[t], ids[0]);
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 20u);
}

TEST(DedupTest, DuplicatesWithinOneBatchShareTheFirstId) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<AppendOutcome> outcomes;
  // Queued back to back: most land in the same batch as the original.
  for (int i = 0; i < 50; ++i) {
    store->AppendAsync(4, "same", One(4, 5, "once"), [&](Result<AppendOutcome> r) {
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_TRUE(r.ok());
      outcomes.push_back(*r);
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return outcomes.size() == 50; }));
  int originals = 0;
  for (const AppendOutcome& o : outcomes) {
    EXPECT_EQ(o.message_id, outcomes[0].message_id);
    if (!o.duplicate) ++originals;
  }
  EXPECT_EQ(originals, 1);
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 5);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);
}

TEST(DedupTest, RetryAfterRestartIsStillADuplicate) {
  TempDir dir;
  const StoreOptions o = TestOptions(dir.path());
  uint64_t first_id = 0;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 100; ++i) {
      Result<AppendOutcome> r = store->Append(1, "k" + std::to_string(i), One(1, 2, "x"));
      ASSERT_TRUE(r.ok());
      if (i == 0) first_id = r->message_id;
    }
  }
  {
    // Right after Open: the hot tier is empty and the filters may still be refilling.
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    Result<AppendOutcome> retry = store->Append(1, "k0", One(1, 2, "x"));
    ASSERT_TRUE(retry.ok());
    EXPECT_TRUE(retry->duplicate);
    EXPECT_EQ(retry->message_id, first_id);
  }
  {
    // After the Bloom filters are refilled they answer "maybe" for stored keys.
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->WaitDedupFiltersReady(30'000));
    for (int i = 0; i < 100; ++i) {
      Result<AppendOutcome> retry = store->Append(1, "k" + std::to_string(i), One(1, 2, "x"));
      ASSERT_TRUE(retry.ok());
      EXPECT_TRUE(retry->duplicate) << i;
    }
    EXPECT_EQ(store->Stats().dedup_db_lookups, 100u);
    Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all->size(), 100u);
  }
}

TEST(DedupTest, BloomFiltersClearNewKeysWithoutReads) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WaitDedupFiltersReady(30'000));
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(store->Append(1, "fresh-" + std::to_string(i), One(1, 2, "x")).ok());
  }
  const StoreStats s = store->Stats();
  // About 1% false positives at 10 bits/key; allow generous slack.
  EXPECT_GE(s.dedup_bloom_negatives, 480u);
  EXPECT_LE(s.dedup_db_lookups, 20u);
  // Every accepted key went into today's filter, which is sized as configured.
  EXPECT_EQ(s.dedup_bloom_keys_today, 500u);
  EXPECT_EQ(s.dedup_bloom_keys_per_day, TestOptions(dir.path()).dedup_bloom_keys_per_day);
}

TEST(DedupTest, RetryAfterHotWindowIsFoundInTheColumnFamily) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WaitDedupFiltersReady(30'000));
  Result<AppendOutcome> first = store->Append(1, "late-retry", One(1, 2, "x"));
  ASSERT_TRUE(first.ok());
  clock.AdvanceMillis(6 * 60 * 1000);  // past the 5-minute hot tier
  ASSERT_TRUE(store->Append(1, "", One(1, 2, "evicts the hot tier")).ok());
  const uint64_t lookups_before = store->Stats().dedup_db_lookups;
  Result<AppendOutcome> retry = store->Append(1, "late-retry", One(1, 2, "x"));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->message_id, first->message_id);
  EXPECT_EQ(store->Stats().dedup_db_lookups, lookups_before + 1);
}

TEST(DedupTest, KeyIsFreeAgainAfterTheWindow) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  o.dedup_window_ms = kHour;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> first = store->Append(1, "k", One(1, 2, "x"));
  ASSERT_TRUE(first.ok());
  clock.AdvanceMillis(kHour - 1);
  Result<AppendOutcome> inside = store->Append(1, "k", One(1, 2, "x"));
  ASSERT_TRUE(inside.ok());
  EXPECT_TRUE(inside->duplicate);
  clock.AdvanceMillis(2);
  Result<AppendOutcome> outside = store->Append(1, "k", One(1, 2, "x"));
  ASSERT_TRUE(outside.ok());
  EXPECT_FALSE(outside->duplicate);
  EXPECT_NE(outside->message_id, first->message_id);
  // And the new acceptance deduplicates from then on.
  Result<AppendOutcome> again = store->Append(1, "k", One(1, 2, "x"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->message_id, outside->message_id);
}

TEST(DedupTest, ExpiredEntriesAreRemovedByCompaction) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  o.dedup_window_ms = 7 * 24 * kHour;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(store->Append(1, "old-" + std::to_string(i), One(1, 2, "x")).ok());
    }
    clock.AdvanceMillis(8 * 24 * kHour);
    ASSERT_TRUE(store->Append(1, "new", One(1, 2, "x")).ok());
  }
  StoreDbOptions dbo;
  dbo.path = dir.path();
  dbo.clock = &clock;
  dbo.dedup_window_ms = o.dedup_window_ms;
  dbo.write_buffer_bytes = 1u << 20;
  Result<std::unique_ptr<StoreDb>> db = StoreDb::Open(dbo);
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  rocksdb::CompactRangeOptions cro;
  cro.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  ASSERT_TRUE((*db)->db()->Flush(rocksdb::FlushOptions(), (*db)->cf(Cf::kDedup)).ok());
  ASSERT_TRUE((*db)->db()->CompactRange(cro, (*db)->cf(Cf::kDedup), nullptr, nullptr).ok());
  std::set<std::string> keys;
  std::unique_ptr<rocksdb::Iterator> it(
      (*db)->db()->NewIterator(rocksdb::ReadOptions(), (*db)->cf(Cf::kDedup)));
  // vnode(4) sender(8) key
  for (it->SeekToFirst(); it->Valid(); it->Next()) keys.insert(it->key().ToString().substr(12));
  EXPECT_EQ(keys, std::set<std::string>{"new"});
}

}  // namespace
}  // namespace iris::store
