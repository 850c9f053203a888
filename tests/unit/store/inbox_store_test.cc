// InboxStore: appends, ids, scans, fan-out, the commit listener, retention and history.
#include "store/inbox_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "common/hlc.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::HistoryAll;
using testing::MakeEnvelope;
using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

TEST(InboxStoreTest, AppendThenScanReturnsMessagesInIdOrder) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 20; ++i) {
    Result<AppendOutcome> r = store->Append(7, "", One(7, 42, "m" + std::to_string(i)));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->duplicate);
    ids.push_back(r->message_id);
  }
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 42);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 20u);
  for (int i = 0; i < 20; ++i) {
    const v1::Envelope& e = (*all)[i];
    EXPECT_EQ(e.id(), ids[i]);
    EXPECT_EQ(e.body(), "m" + std::to_string(i));
    EXPECT_EQ(e.sender(), 7u);
    EXPECT_EQ(e.recipient(), 42u);
    if (i > 0) {
      EXPECT_GT(e.id(), (*all)[i - 1].id());
    }
  }
  EXPECT_EQ(store->LastId(), ids.back());
  // Another inbox is empty; a scan after the last id is empty.
  Result<ScanPage> other = store->Scan(43, 0, 10, 1 << 20);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->messages.empty());
  EXPECT_FALSE(other->has_more);
  EXPECT_FALSE(other->gap);
  Result<ScanPage> after = store->Scan(42, ids.back(), 10, 1 << 20);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->messages.empty());
}

TEST(InboxStoreTest, AssignsHlcIdsAndAcceptTime) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  o.node_id = 9;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  std::vector<v1::Envelope> in = One(1, 2, "x");
  in[0].set_id(12345);        // ignored: the store assigns ids
  in[0].set_sent_at_ms(777);  // and the accept time
  Result<AppendOutcome> r = store->Append(1, "", std::move(in));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->accepted_at_ms, 1'800'000'000'000u);
  const HlcParts parts = SplitHlcId(r->message_id);
  EXPECT_EQ(parts.millis, 1'800'000'000'000u);
  EXPECT_EQ(parts.node, 9u);
  Result<ScanPage> page = store->Scan(2, 0, 10, 1 << 20);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->messages.size(), 1u);
  EXPECT_EQ(page->messages[0].id(), r->message_id);
  EXPECT_EQ(page->messages[0].sent_at_ms(), 1'800'000'000'000u);
}

TEST(InboxStoreTest, IdsKeepIncreasingWhenWallClockStepsBack) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> a = store->Append(1, "", One(1, 2, "a"));
  ASSERT_TRUE(a.ok());
  clock.SetWallMillis(1'800'000'000'000 - 30'000);
  Result<AppendOutcome> b = store->Append(1, "", One(1, 2, "b"));
  ASSERT_TRUE(b.ok());
  EXPECT_GT(b->message_id, a->message_id);
}

TEST(InboxStoreTest, FanOutWritesEveryInboxWithFirstIdAsMessageId) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  std::vector<v1::Envelope> fan;
  for (uint64_t member = 100; member < 110; ++member) {
    fan.push_back(MakeEnvelope(5, member, "group hello", /*group_id=*/77));
  }
  Result<AppendOutcome> r = store->Append(5, "k-fan", std::move(fan));
  ASSERT_TRUE(r.ok());
  uint64_t prev = 0;
  for (uint64_t member = 100; member < 110; ++member) {
    Result<std::vector<v1::Envelope>> all = ScanAll(*store, member);
    ASSERT_TRUE(all.ok());
    ASSERT_EQ(all->size(), 1u) << member;
    EXPECT_EQ((*all)[0].group_id(), 77u);
    EXPECT_GT((*all)[0].id(), prev);
    if (member == 100) {
      EXPECT_EQ((*all)[0].id(), r->message_id);
    }
    prev = (*all)[0].id();
  }
}

TEST(InboxStoreTest, ConcurrentAppendsShareSyncsAndKeepPerInboxOrder) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Result<AppendOutcome> r =
            store->Append(t, "", One(t, 1 + (i % 3), std::to_string(t) + ":" + std::to_string(i)));
        if (!r.ok()) failures.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  size_t total = 0;
  for (uint64_t user = 1; user <= 3; ++user) {
    Result<std::vector<v1::Envelope>> all = ScanAll(*store, user);
    ASSERT_TRUE(all.ok());
    total += all->size();
    // Per sender the messages of one inbox keep send order.
    std::map<uint64_t, int> last_seq;
    for (size_t i = 0; i < all->size(); ++i) {
      if (i > 0) {
        ASSERT_LT((*all)[i - 1].id(), (*all)[i].id());
      }
      const std::string& b = (*all)[i].body();
      const int seq = std::stoi(b.substr(b.find(':') + 1));
      auto it = last_seq.find((*all)[i].sender());
      if (it != last_seq.end()) {
        EXPECT_GT(seq, it->second);
      }
      last_seq[(*all)[i].sender()] = seq;
    }
  }
  EXPECT_EQ(total, size_t{kThreads * kPerThread});
  const StoreStats stats = store->Stats();
  EXPECT_EQ(stats.appends, uint64_t{kThreads * kPerThread});
  EXPECT_LE(stats.batches, stats.appends);
}

TEST(InboxStoreTest, PipelinedAppendsAreGroupCommitted) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  constexpr int kN = 2000;
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  int ok = 0;
  for (int i = 0; i < kN; ++i) {
    store->AppendAsync(1, "", One(1, 2, "p"), [&](Result<AppendOutcome> r) {
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      if (r.ok()) ++ok;
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return done == kN; }));
  EXPECT_EQ(ok, kN);
  // 2,000 queued appends cannot each have needed their own sync.
  EXPECT_LT(store->Stats().batches, uint64_t{kN});
}

TEST(InboxStoreTest, ScanHonoursLimitAndByteBudget) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(store->Append(1, "", One(1, 2, std::string(100, 'a' + i))).ok());
  }
  Result<ScanPage> p = store->Scan(2, 0, 4, 1 << 20);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->messages.size(), 4u);
  EXPECT_TRUE(p->has_more);
  // The byte budget counts ByteSizeLong()+6 per envelope.
  const size_t one = p->messages[0].ByteSizeLong() + 6;
  Result<ScanPage> q = store->Scan(2, 0, 100, 3 * one);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->messages.size(), 3u);
  EXPECT_TRUE(q->has_more);
  // Always at least one message, even over the budget.
  Result<ScanPage> r = store->Scan(2, 0, 100, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->messages.size(), 1u);
  EXPECT_TRUE(r->has_more);
  // The last page has has_more = false.
  Result<ScanPage> last = store->Scan(2, p->messages[3].id(), 100, 1 << 20);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->messages.size(), 6u);
  EXPECT_FALSE(last->has_more);
  // limit 0 returns nothing but says whether anything is there.
  Result<ScanPage> zero = store->Scan(2, 0, 0, 1 << 20);
  ASSERT_TRUE(zero.ok());
  EXPECT_TRUE(zero->messages.empty());
  EXPECT_TRUE(zero->has_more);
  Result<ScanPage> top = store->Scan(2, UINT64_MAX, 10, 1 << 20);
  ASSERT_TRUE(top.ok());
  EXPECT_TRUE(top->messages.empty());
}

TEST(InboxStoreTest, CommitListenerSeesStoredEnvelopesInOrderAfterTheyAreVisible) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  std::mutex mu;
  std::vector<v1::Envelope> seen;
  std::atomic<int> invisible{0};
  store->SetCommitListener([&](const std::vector<v1::Envelope>& batch) {
    for (const v1::Envelope& e : batch) {
      Result<ScanPage> p = store->Scan(e.recipient(), e.id() - 1, 1, 1 << 20);
      if (!p.ok() || p->messages.empty() || p->messages[0].id() != e.id()) invisible.fetch_add(1);
    }
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(seen.end(), batch.begin(), batch.end());
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(
            store->Append(t, "k" + std::to_string(t) + "-" + std::to_string(i), One(t, 9, "b"))
                .ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  // A retry is not reported again.
  Result<AppendOutcome> dup = store->Append(0, "k0-0", One(0, 9, "b"));
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(invisible.load(), 0);
  ASSERT_EQ(seen.size(), 200u);
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_LT(seen[i - 1].id(), seen[i].id());
  EXPECT_NE(seen[0].sent_at_ms(), 0u);
}

TEST(InboxStoreTest, StopFinishesQueuedAppendsThenRefusesWrites) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  std::atomic<int> ok{0};
  std::atomic<int> other{0};
  for (int i = 0; i < 500; ++i) {
    store->AppendAsync(1, "", One(1, 2, "q"),
                       [&](Result<AppendOutcome> r) { (r.ok() ? ok : other).fetch_add(1); });
  }
  store->Stop();
  EXPECT_EQ(ok.load(), 500);  // queued before Stop: all committed, callbacks ran
  EXPECT_EQ(other.load(), 0);
  Result<AppendOutcome> late = store->Append(1, "", One(1, 2, "late"));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(store->PutLastSeen(1, 5).code(), StatusCode::kUnavailable);
  store->Stop();  // idempotent
  // Reads still work until destruction.
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 500u);
}

TEST(InboxStoreTest, RejectsMalformedAppends) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> empty = store->Append(1, "k", {});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kBadRequest);
  Result<AppendOutcome> no_recipient = store->Append(1, "k", One(1, 0, "x"));
  ASSERT_FALSE(no_recipient.ok());
  EXPECT_EQ(no_recipient.status().code(), StatusCode::kBadRequest);
  Result<AppendOutcome> long_key = store->Append(1, std::string(256, 'k'), One(1, 2, "x"));
  ASSERT_FALSE(long_key.ok());
  EXPECT_EQ(long_key.status().code(), StatusCode::kBadRequest);
  // Nothing was stored, and the key of the refused request is still free.
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->empty());
  Result<AppendOutcome> fine = store->Append(1, "k", One(1, 2, "x"));
  ASSERT_TRUE(fine.ok());
  EXPECT_FALSE(fine->duplicate);
}

TEST(InboxStoreTest, OpenRejectsInvalidOptions) {
  StoreOptions o;
  Result<std::unique_ptr<InboxStore>> no_path = InboxStore::Open(o);
  ASSERT_FALSE(no_path.ok());
  EXPECT_EQ(no_path.status().code(), StatusCode::kBadRequest);
  TempDir dir;
  o = TestOptions(dir.path());
  o.inbox_cap = 0;
  EXPECT_EQ(InboxStore::Open(o).status().code(), StatusCode::kBadRequest);
  o = TestOptions(dir.path());
  o.dedup_window_ms = 0;
  EXPECT_EQ(InboxStore::Open(o).status().code(), StatusCode::kBadRequest);
  o = TestOptions(dir.path());
  o.max_batch_requests = 0;
  EXPECT_EQ(InboxStore::Open(o).status().code(), StatusCode::kBadRequest);
}

TEST(InboxStoreTest, OpenFailsWhenDirectoryIsLockedOrNotADirectory) {
  TempDir dir;
  auto first = OpenOrDie(TestOptions(dir.Sub("db")));
  ASSERT_NE(first, nullptr);
  Result<std::unique_ptr<InboxStore>> second = InboxStore::Open(TestOptions(dir.Sub("db")));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kInternal);

  const std::string file = dir.Sub("plain-file");
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  Result<std::unique_ptr<InboxStore>> on_file = InboxStore::Open(TestOptions(file));
  ASSERT_FALSE(on_file.ok());
  EXPECT_EQ(on_file.status().code(), StatusCode::kInternal);
}

TEST(InboxStoreTest, HighWaterMarkKeepsIdsIncreasingAcrossRestartWithClockBehind) {
  TempDir dir;
  ManualClock clock(1'800'000'000'000);
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  uint64_t last = 0;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 5; ++i) {
      Result<AppendOutcome> r = store->Append(1, "", One(1, 2, "before"));
      ASSERT_TRUE(r.ok());
      last = r->message_id;
    }
  }
  clock.SetWallMillis(1'800'000'000'000 - 3'600'000);  // an hour behind after the restart
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->LastId(), last);
  Result<AppendOutcome> r = store->Append(1, "", One(1, 2, "after"));
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->message_id, last);
}

TEST(InboxStoreTest, WriteLatencyObserverSeesEverySyncedBatch) {
  TempDir dir;
  std::atomic<int> calls{0};
  std::atomic<int64_t> total{0};
  StoreOptions o = TestOptions(dir.path());
  o.write_latency_observer = [&](int64_t nanos) {
    calls.fetch_add(1);
    total.fetch_add(nanos);
  };
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store->Append(1, "", One(1, 2, "x")).ok());
  EXPECT_EQ(calls.load(), 3);
  EXPECT_GT(total.load(), 0);
}

// ---- retention: inbox cap, archive, gap, history ----

TEST(InboxStoreTest, InboxKeepsNewestCapAndArchivesTheRest) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 10;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 25; ++i) {
    Result<AppendOutcome> r = store->Append(1, "", One(1, 2, "m" + std::to_string(i)));
    ASSERT_TRUE(r.ok());
    ids.push_back(r->message_id);
  }
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 2);
  ASSERT_TRUE(inbox.ok());
  ASSERT_EQ(inbox->size(), 10u);
  EXPECT_EQ(inbox->front().id(), ids[15]);
  EXPECT_EQ(inbox->back().id(), ids[24]);
  Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 2);
  ASSERT_TRUE(archive.ok());
  ASSERT_EQ(archive->size(), 15u);
  for (int i = 0; i < 15; ++i) {
    EXPECT_EQ((*archive)[i].id(), ids[i]);
    EXPECT_EQ((*archive)[i].body(), "m" + std::to_string(i));
  }
  EXPECT_EQ(store->Stats().archived, 15u);

  // A cursor older than the oldest retained message reports the gap; one inside does not.
  Result<ScanPage> from_zero = store->Scan(2, 0, 100, 1 << 20);
  ASSERT_TRUE(from_zero.ok());
  EXPECT_TRUE(from_zero->gap);
  ASSERT_EQ(from_zero->messages.size(), 10u);
  EXPECT_EQ(from_zero->messages[0].id(), ids[15]);
  Result<ScanPage> at_edge = store->Scan(2, ids[14], 100, 1 << 20);
  ASSERT_TRUE(at_edge.ok());
  EXPECT_FALSE(at_edge->gap);
  EXPECT_EQ(at_edge->messages.size(), 10u);
  Result<ScanPage> inside = store->Scan(2, ids[20], 100, 1 << 20);
  ASSERT_TRUE(inside.ok());
  EXPECT_FALSE(inside->gap);
  EXPECT_EQ(inside->messages.size(), 4u);
}

TEST(InboxStoreTest, HistoryPagesDescendingWithBeforeId) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 5;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 17; ++i) {
    Result<AppendOutcome> r = store->Append(1, "", One(1, 3, "h"));
    ASSERT_TRUE(r.ok());
    ids.push_back(r->message_id);
  }
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  // 12 archived: ids[0..11].
  Result<ScanPage> p1 = store->History(3, 0, 5, 1 << 20);
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->messages.size(), 5u);
  EXPECT_TRUE(p1->has_more);
  EXPECT_EQ(p1->messages[0].id(), ids[11]);
  EXPECT_EQ(p1->messages[4].id(), ids[7]);
  Result<ScanPage> p2 = store->History(3, p1->messages[4].id(), 5, 1 << 20);
  ASSERT_TRUE(p2.ok());
  ASSERT_EQ(p2->messages.size(), 5u);
  EXPECT_EQ(p2->messages[0].id(), ids[6]);
  Result<ScanPage> p3 = store->History(3, p2->messages[4].id(), 5, 1 << 20);
  ASSERT_TRUE(p3.ok());
  ASSERT_EQ(p3->messages.size(), 2u);
  EXPECT_FALSE(p3->has_more);
  EXPECT_EQ(p3->messages[1].id(), ids[0]);
  // before_id inside the inbox range still returns only archived messages below it.
  Result<ScanPage> high = store->History(3, ids[16], 100, 1 << 20);
  ASSERT_TRUE(high.ok());
  EXPECT_EQ(high->messages.size(), 12u);
  Result<ScanPage> none = store->History(3, ids[0], 100, 1 << 20);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->messages.empty());
  EXPECT_FALSE(none->has_more);
  Result<ScanPage> other_user = store->History(4, 0, 100, 1 << 20);
  ASSERT_TRUE(other_user.ok());
  EXPECT_TRUE(other_user->messages.empty());
}

TEST(InboxStoreTest, DefaultCapKeepsExactlyTenThousand) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  uint64_t first = 0;
  // 10,050 messages to one inbox, 50 per append.
  for (int batch = 0; batch < 201; ++batch) {
    std::vector<v1::Envelope> envs;
    for (int i = 0; i < 50; ++i) envs.push_back(MakeEnvelope(1, 8, std::to_string(batch * 50 + i)));
    Result<AppendOutcome> r = store->Append(1, "", std::move(envs));
    ASSERT_TRUE(r.ok());
    if (batch == 0) first = r->message_id;
  }
  ASSERT_TRUE(store->WaitArchiverIdle(60'000));
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 8);
  ASSERT_TRUE(inbox.ok());
  EXPECT_EQ(inbox->size(), 10'000u);
  EXPECT_EQ(inbox->front().body(), "50");
  Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 8);
  ASSERT_TRUE(archive.ok());
  ASSERT_EQ(archive->size(), 50u);
  EXPECT_EQ(archive->front().id(), first);
  EXPECT_EQ(archive->back().body(), "49");
}

TEST(InboxStoreTest, InterruptedArchivingResumesAfterRestart) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 100;
  o.run_archiver = false;  // as if the process died before the archiver ran
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 130; ++i) ASSERT_TRUE(store->Append(1, "", One(1, 6, "r")).ok());
    EXPECT_FALSE(store->WaitArchiverIdle(0));
    Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 6);
    ASSERT_TRUE(inbox.ok());
    EXPECT_EQ(inbox->size(), 130u);
  }
  o.run_archiver = true;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 6);
  ASSERT_TRUE(inbox.ok());
  EXPECT_EQ(inbox->size(), 100u);
  Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 6);
  ASSERT_TRUE(archive.ok());
  EXPECT_EQ(archive->size(), 30u);
}

// Envelopes of a device the user removed leave the inbox (the archiver purges them), and
// the inbox counter follows, so the cap keeps counting only what is there.
std::vector<v1::Envelope> Copies(uint64_t recipient, std::vector<uint32_t> devices,
                                 const std::string& body) {
  std::vector<v1::Envelope> out;
  for (uint32_t d : devices) {
    out.push_back(MakeEnvelope(1, recipient, body));
    out.back().set_recipient_device(d);
  }
  return out;
}

Status ListDevices(InboxStore& store, uint64_t user, DeviceMask listed, DeviceMask removed) {
  return store
      .UpdateSettings(user,
                      [&](UserSettings& s) {
                        s.device_list = "a list (opaque to the store)";
                        s.devices = listed;
                        s.removed_devices |= removed;
                        return Status::Ok();
                      })
      .status();
}

TEST(InboxStoreTest, EnvelopesOfARemovedDeviceAreDroppedAndTheCapFollows) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 50;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  const DeviceMask one_two = DeviceBit(1) | DeviceBit(2);
  ASSERT_TRUE(ListDevices(*store, 7, one_two | DeviceBit(3), 0).ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(store->Append(1, "", Copies(7, {1, 2, 3}, "m" + std::to_string(i))).ok());
  }
  // Group messages are for every device (recipient_device 0): they stay.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store->Append(1, "", {MakeEnvelope(1, 7, "group", 99)}).ok());
  }
  ASSERT_TRUE(ListDevices(*store, 7, one_two, DeviceBit(3)).ok());
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 7);
  ASSERT_TRUE(inbox.ok());
  ASSERT_EQ(inbox->size(), 25u) << "10 for each of devices 1 and 2, 5 for every device";
  for (const v1::Envelope& e : *inbox) EXPECT_NE(e.recipient_device(), 3u);
  EXPECT_EQ(store->Stats().purged, 10u);
  // 25 left + 30 = 55: the archiver moves 5 (it would move 15 with the 10 purged counted).
  for (int i = 0; i < 15; ++i) ASSERT_TRUE(store->Append(1, "", Copies(7, {1, 2}, "more")).ok());
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  inbox = ScanAll(*store, 7);
  ASSERT_TRUE(inbox.ok());
  EXPECT_EQ(inbox->size(), 50u);
  Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 7);
  ASSERT_TRUE(archive.ok());
  EXPECT_EQ(archive->size(), 5u);
}

TEST(InboxStoreTest, InterruptedDevicePurgeResumesAfterRestart) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.run_archiver = false;  // as if the process died before the purge ran
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(ListDevices(*store, 8, DeviceBit(1) | DeviceBit(2), 0).ok());
    for (int i = 0; i < 4500; ++i) ASSERT_TRUE(store->Append(1, "", Copies(8, {1, 2}, "p")).ok());
    ASSERT_TRUE(ListDevices(*store, 8, DeviceBit(1), DeviceBit(2)).ok());
  }
  o.run_archiver = true;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 8);
  ASSERT_TRUE(inbox.ok());
  ASSERT_EQ(inbox->size(), 4500u) << "4,500 purged, in passes of at most 4,096";
  for (const v1::Envelope& e : *inbox) EXPECT_EQ(e.recipient_device(), 1u);
}

// An inbox over the cap whose user also removed a device: both resume at open, and the
// purge goes first (a move read alongside it could name envelopes the purge deletes).
TEST(InboxStoreTest, APurgeAndAnArchiveMoveOfOneInboxDoNotOverlap) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 20;
  o.run_archiver = false;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(ListDevices(*store, 9, DeviceBit(1) | DeviceBit(2) | DeviceBit(3), 0).ok());
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(store->Append(1, "", Copies(9, {1, 2, 3}, "c")).ok());
    ASSERT_TRUE(ListDevices(*store, 9, DeviceBit(1) | DeviceBit(2), DeviceBit(3)).ok());
  }
  o.run_archiver = true;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  // 30 envelopes, 10 of them device 3's: 20 left, which is the cap, so nothing moves.
  Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 9);
  ASSERT_TRUE(inbox.ok());
  EXPECT_EQ(inbox->size(), 20u);
  for (const v1::Envelope& e : *inbox) EXPECT_NE(e.recipient_device(), 3u);
  Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 9);
  ASSERT_TRUE(archive.ok());
  EXPECT_EQ(archive->size(), 0u);
  // And the count is right: 2 more envelopes make 22, so exactly 2 move.
  ASSERT_TRUE(store->Append(1, "", Copies(9, {1, 2}, "d")).ok());
  ASSERT_TRUE(store->WaitArchiverIdle(30'000));
  archive = HistoryAll(*store, 9);
  ASSERT_TRUE(archive.ok());
  EXPECT_EQ(archive->size(), 2u);
}

TEST(InboxStoreTest, CountersSurviveRestartsBetweenPersists) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 100;
  // 70 appends: the counters were last written after 64, the other 6 are recounted on load.
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 70; ++i) ASSERT_TRUE(store->Append(1, "", One(1, 4, "a")).ok());
  }
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 40; ++i) ASSERT_TRUE(store->Append(1, "", One(1, 4, "b")).ok());
    ASSERT_TRUE(store->WaitArchiverIdle(30'000));
    Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 4);
    ASSERT_TRUE(inbox.ok());
    EXPECT_EQ(inbox->size(), 100u);
    Result<std::vector<v1::Envelope>> archive = HistoryAll(*store, 4);
    ASSERT_TRUE(archive.ok());
    EXPECT_EQ(archive->size(), 10u);
  }
}

}  // namespace
}  // namespace iris::store
