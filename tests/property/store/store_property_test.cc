// Property tests of the storage engine (issue 3), seeded through RC_PARAMS (CMakeLists.txt):
//  - dedup never drops a distinct key and never stores a duplicate within the window, over
//    random mixes of senders, keys, clock moves, bursts that share a batch, and restarts;
//  - retention keeps exactly the newest `inbox_cap` messages in `inbox` and loses nothing
//    into the archive (every message exactly once, in id order, across both);
//  - ids stay strictly increasing per inbox while the wall clock moves back and forth by up
//    to 30 s, across restarts;
//  - inbox keys sort as (user, id);
//  - the dedup hot tier's table answers exactly like a plain map plus an insertion-order
//    queue, under hash collisions, long keys, growth and the wrap of its sequence numbers.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "common/clock.h"
#include "store/hot_dedup_table.h"
#include "store/inbox_store.h"
#include "store/store_keys.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::HistoryAll;
using testing::MakeEnvelope;
using testing::ScanAll;
using testing::TempDir;

constexpr int64_t kT0 = 1'800'000'000'000;

std::unique_ptr<InboxStore> MustOpen(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  RC_ASSERT(s.ok());
  return std::move(s).value();
}

// Appends submitted back to back (so they usually share a batch); results in order.
std::vector<Result<AppendOutcome>> Burst(
    InboxStore& store, std::vector<std::tuple<uint64_t, std::string, v1::Envelope>> appends) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<Result<AppendOutcome>>> results(appends.size());
  size_t done = 0;
  for (size_t i = 0; i < appends.size(); ++i) {
    auto& [sender, key, envelope] = appends[i];
    std::vector<v1::Envelope> v;
    v.push_back(std::move(envelope));
    store.AppendAsync(sender, key, std::move(v), [&, i](Result<AppendOutcome> r) {
      std::lock_guard<std::mutex> lock(mu);
      results[i] = std::move(r);
      ++done;
      cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait_for(lock, std::chrono::seconds(60), [&] { return done == appends.size(); });
  std::vector<Result<AppendOutcome>> out;
  for (auto& r : results) {
    out.push_back(r.has_value() ? std::move(*r) : Result<AppendOutcome>(Internal("timeout")));
  }
  return out;
}

struct DedupOp {
  int kind;                                  // 0: burst of appends, 1: advance clock, 2: restart
  std::vector<std::pair<int, int>> appends;  // (sender 1..3, key index -1..5; -1 = no key)
  int64_t advance_ms;
};

RC_GTEST_PROP(StorePropertyTest, DedupNeverDropsADistinctKeyNorStoresADuplicate, ()) {
  const int64_t window = *rc::gen::element<int64_t>(2'000, 10'000, 60'000);
  const int64_t hot_window = *rc::gen::element<int64_t>(500, 5 * 60 * 1000);
  const auto ops = *rc::gen::container<std::vector<DedupOp>>(
      *rc::gen::inRange(1, 25),
      rc::gen::construct<DedupOp>(
          rc::gen::weightedElement<int>({{8, 0}, {3, 1}, {1, 2}}),
          rc::gen::container<std::vector<std::pair<int, int>>>(
              *rc::gen::inRange(1, 5),
              rc::gen::pair(rc::gen::inRange(1, 4), rc::gen::inRange(-1, 6))),
          rc::gen::inRange<int64_t>(0, 2 * window)));

  TempDir dir;
  ManualClock clock(kT0);
  StoreOptions o = testing::TestOptions(dir.path());
  o.clock = &clock;
  o.dedup_window_ms = window;
  o.dedup_hot_window_ms = hot_window;
  auto store = MustOpen(o);

  struct First {
    uint64_t id;
    int64_t accepted_ms;
  };
  std::map<std::pair<int, int>, First> model;
  std::map<uint64_t, std::string> expected;  // id -> body of every message that must exist
  int seq = 0;
  for (const DedupOp& op : ops) {
    if (op.kind == 1) {
      clock.AdvanceMillis(op.advance_ms);
      continue;
    }
    if (op.kind == 2) {
      store.reset();
      store = MustOpen(o);
      if (op.advance_ms % 2 == 0) RC_ASSERT(store->WaitDedupFiltersReady(30'000));
      continue;
    }
    std::vector<std::tuple<uint64_t, std::string, v1::Envelope>> burst;
    std::vector<std::string> bodies;
    for (const auto& [sender, key] : op.appends) {
      const std::string body = "m" + std::to_string(seq++);
      bodies.push_back(body);
      const std::string k = key < 0 ? "" : "key-" + std::to_string(key);
      burst.emplace_back(sender, k, MakeEnvelope(sender, 100 + sender, body));
    }
    std::vector<Result<AppendOutcome>> results = Burst(*store, std::move(burst));
    const int64_t now = clock.WallMillis();
    for (size_t i = 0; i < results.size(); ++i) {
      RC_ASSERT(results[i].ok());
      const AppendOutcome& got = *results[i];
      const auto& [sender, key] = op.appends[i];
      auto it = key < 0 ? model.end() : model.find({sender, key});
      const bool live = it != model.end() && it->second.accepted_ms + window > now;
      if (live) {
        // A retry within the window: the first id, nothing stored.
        RC_ASSERT(got.duplicate);
        RC_ASSERT(got.message_id == it->second.id);
        RC_ASSERT(got.accepted_at_ms == static_cast<uint64_t>(it->second.accepted_ms));
      } else {
        // A distinct (or expired) key: never dropped.
        RC_ASSERT(!got.duplicate);
        RC_ASSERT(expected.emplace(got.message_id, bodies[i]).second);
        if (key >= 0) model[{sender, key}] = First{got.message_id, now};
      }
    }
  }
  std::map<uint64_t, std::string> stored;
  for (uint64_t user = 101; user <= 103; ++user) {
    Result<std::vector<v1::Envelope>> all = ScanAll(*store, user);
    RC_ASSERT(all.ok());
    for (const v1::Envelope& e : *all) RC_ASSERT(stored.emplace(e.id(), e.body()).second);
  }
  RC_ASSERT(stored == expected);
}

struct RetentionOp {
  bool restart;
  std::vector<int> recipients;  // one envelope per entry, users 1..3
};

RC_GTEST_PROP(StorePropertyTest, RetentionKeepsExactlyTheNewestCapAndLosesNothing, ()) {
  const uint32_t cap = *rc::gen::inRange<uint32_t>(1, 40);
  const uint32_t chunk = *rc::gen::inRange<uint32_t>(1, 8);
  const auto ops = *rc::gen::container<std::vector<RetentionOp>>(
      *rc::gen::inRange(1, 30),
      rc::gen::construct<RetentionOp>(
          rc::gen::weightedElement<bool>({{1, true}, {12, false}}),
          rc::gen::container<std::vector<int>>(*rc::gen::inRange(1, 6), rc::gen::inRange(1, 4))));

  TempDir dir;
  StoreOptions o = testing::TestOptions(dir.path());
  o.inbox_cap = cap;
  o.archive_chunk = chunk;
  auto store = MustOpen(o);
  std::map<uint64_t, std::vector<std::pair<uint64_t, std::string>>> appended;  // user -> ids
  int seq = 0;
  for (const RetentionOp& op : ops) {
    if (op.restart) {
      store.reset();  // may interrupt the archiver mid-way
      store = MustOpen(o);
      continue;
    }
    std::vector<v1::Envelope> envs;
    for (int r : op.recipients) envs.push_back(MakeEnvelope(9, r, "r" + std::to_string(seq++)));
    std::vector<v1::Envelope> copy = envs;
    Result<AppendOutcome> res = store->Append(9, "", std::move(envs));
    RC_ASSERT(res.ok());
    // The ids are consecutive HLC ids from message_id, one per envelope in order: recover
    // them from the inbox scans below; remember the bodies per user here.
    for (const v1::Envelope& e : copy) appended[e.recipient()].emplace_back(0, e.body());
  }
  RC_ASSERT(store->WaitArchiverIdle(60'000));
  for (auto& [user, msgs] : appended) {
    Result<std::vector<v1::Envelope>> archived = HistoryAll(*store, user);
    Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, user);
    RC_ASSERT(archived.ok());
    RC_ASSERT(inbox.ok());
    const size_t n = msgs.size();
    const size_t keep = std::min<size_t>(n, cap);
    RC_ASSERT(inbox->size() == keep);
    RC_ASSERT(archived->size() == n - keep);
    // Together: every message exactly once, in send order, ids strictly increasing.
    std::vector<v1::Envelope> all = std::move(archived).value();
    for (v1::Envelope& e : *inbox) all.push_back(std::move(e));
    for (size_t i = 0; i < n; ++i) {
      RC_ASSERT(all[i].body() == msgs[i].second);
      if (i > 0) RC_ASSERT(all[i - 1].id() < all[i].id());
    }
    Result<ScanPage> from_start = store->Scan(user, 0, 1000, 1u << 20);
    RC_ASSERT(from_start.ok());
    RC_ASSERT(from_start->gap == (n > keep));
    if (n > keep) {
      // A cursor at the newest archived message is exactly caught up with the inbox.
      Result<ScanPage> edge = store->Scan(user, all[n - keep - 1].id(), 1000, 1u << 20);
      RC_ASSERT(edge.ok());
      RC_ASSERT(!edge->gap);
      RC_ASSERT(edge->messages.size() == keep);
    }
  }
}

RC_GTEST_PROP(StorePropertyTest, IdsStrictlyIncreasePerInboxUnderClockSteps, ()) {
  const auto steps = *rc::gen::container<std::vector<std::pair<int64_t, int>>>(
      *rc::gen::inRange(1, 30),
      rc::gen::pair(rc::gen::inRange<int64_t>(-30'000, 30'001), rc::gen::inRange(0, 4)));
  TempDir dir;
  ManualClock clock(kT0);
  StoreOptions o = testing::TestOptions(dir.path());
  o.clock = &clock;
  auto store = MustOpen(o);
  std::map<uint64_t, uint64_t> last;
  for (const auto& [step, action] : steps) {
    clock.SetWallMillis(kT0 + step);  // anywhere within +-30 s of the start
    if (action == 0) {
      store.reset();
      store = MustOpen(o);
      continue;
    }
    std::vector<v1::Envelope> envs;
    for (int i = 0; i < action; ++i) envs.push_back(MakeEnvelope(1, 1 + (i % 2), "x"));
    std::vector<uint64_t> recipients;
    for (const auto& e : envs) recipients.push_back(e.recipient());
    Result<AppendOutcome> r = store->Append(1, "", std::move(envs));
    RC_ASSERT(r.ok());
    RC_ASSERT(store->LastId() >= r->message_id);
  }
  std::set<uint64_t> ids;
  for (uint64_t user = 1; user <= 2; ++user) {
    Result<std::vector<v1::Envelope>> all = ScanAll(*store, user);
    RC_ASSERT(all.ok());
    for (size_t i = 0; i < all->size(); ++i) {
      if (i > 0) RC_ASSERT((*all)[i - 1].id() < (*all)[i].id());
      RC_ASSERT(ids.insert((*all)[i].id()).second);
    }
  }
}

RC_GTEST_PROP(StorePropertyTest, InboxKeysSortAsVnodeThenUserThenId,
              (uint64_t user_a, uint64_t id_a, uint64_t user_b, uint64_t id_b)) {
  const int32_t vnode_a = *rc::gen::inRange<int32_t>(0, kMaxVnodes);
  const int32_t vnode_b = *rc::gen::element(vnode_a, *rc::gen::inRange<int32_t>(0, kMaxVnodes));
  const bool less = std::make_tuple(vnode_a, user_a, id_a) < std::make_tuple(vnode_b, user_b, id_b);
  RC_ASSERT((InboxKey(vnode_a, user_a, id_a) < InboxKey(vnode_b, user_b, id_b)) == less);
  RC_ASSERT(InboxKey(vnode_a, user_a, id_a) < InboxUpperBound(vnode_a, user_a));
  RC_ASSERT(VnodePrefix(vnode_a) <= InboxKey(vnode_a, user_a, id_a));
  RC_ASSERT(InboxUpperBound(vnode_a, user_a) < VnodePrefix(vnode_a + 1));
  const std::optional<InboxKeyParts> p = ParseInboxKey(InboxKey(vnode_a, user_a, id_a));
  RC_ASSERT(p.has_value());
  RC_ASSERT(p->vnode == vnode_a);
  RC_ASSERT(p->user == user_a);
  RC_ASSERT(p->id == id_a);
}

RC_GTEST_PROP(StorePropertyTest, HotDedupTableAnswersLikeAMapWithAnEvictionQueue, ()) {
  // Few distinct keys and a handful of hash values: most probes collide, on tags and homes.
  const size_t expected = *rc::gen::inRange<size_t>(1, 40);
  const uint64_t first_seq =
      *rc::gen::element<uint64_t>(0, (uint64_t{1} << 32) - 20, (uint64_t{1} << 33) - 3);
  HotDedupTable table(expected, first_seq);
  struct ModelEntry {
    std::string key;
    uint64_t hash;
    HotDedupTable::Value value;
    bool live;
  };
  std::deque<ModelEntry> model;  // oldest first, as the table's ring
  auto hash_of = [](const std::string& key) {
    // Deliberately poor: 8 tags (the hash's top bits), several at the ends of small tables
    // so probe runs wrap, and two full hashes per tag.
    static constexpr uint64_t kTags[] = {0, 1, 14, 15, 31, 63, 16, 1};
    const size_t h = std::hash<std::string>{}(key);
    return (kTags[h % 8] << 33) | ((h >> 3) & 1);
  };
  auto key_of = [](int k) {
    // Short keys stay inline in the slot; every third one is longer than kInlineKeyBytes.
    std::string key = "k" + std::to_string(k);
    if (k % 3 == 0) key.append(HotDedupTable::kInlineKeyBytes, static_cast<char>('a' + k % 26));
    return key;
  };
  int64_t now = 0;
  const int steps = *rc::gen::inRange(1, 400);
  for (int step = 0; step < steps; ++step) {
    const int op = *rc::gen::inRange(0, 10);
    const std::string key = key_of(*rc::gen::inRange(0, 30));
    const uint64_t hash = hash_of(key);
    if (op < 6) {
      const HotDedupTable::Value v{DedupEntry{static_cast<uint64_t>(step) + 1, now},
                                   static_cast<uint64_t>(step), now};
      table.Insert(key, hash, v);
      for (ModelEntry& m : model) {
        if (m.key == key) m.live = false;
      }
      model.push_back(ModelEntry{key, hash, v, true});
    } else if (op < 7) {
      table.Forget(key, hash);
      for (ModelEntry& m : model) {
        if (m.key == key) m.live = false;
      }
    } else if (op < 9) {
      now += *rc::gen::inRange<int64_t>(0, 5);
      const int64_t through = now - *rc::gen::inRange<int64_t>(0, 10);
      const size_t max_entries = *rc::gen::inRange<size_t>(0, 50);
      table.Evict(through, max_entries);
      while (!model.empty() &&
             (model.front().value.inserted_mono_ms <= through || model.size() > max_entries)) {
        model.pop_front();
      }
    }
    // Every key answers as the model does.
    for (int k = 0; k < 30; ++k) {
      const std::string probe = key_of(k);
      const HotDedupTable::Value* got = table.Find(probe, hash_of(probe));
      const ModelEntry* want = nullptr;
      for (const ModelEntry& m : model) {
        if (m.live && m.key == probe) want = &m;
      }
      RC_ASSERT((got != nullptr) == (want != nullptr));
      if (got != nullptr) {
        RC_ASSERT(got->entry.first_id == want->value.entry.first_id);
        RC_ASSERT(got->batch_seq == want->value.batch_seq);
        RC_ASSERT(got->inserted_mono_ms == want->value.inserted_mono_ms);
      }
    }
    RC_ASSERT(table.size() == model.size());
    size_t live = 0;
    for (const ModelEntry& m : model) live += m.live ? 1 : 0;
    RC_ASSERT(table.live() == live);
    RC_ASSERT(table.size() * 10 <= table.index_cells() * 7);
  }
}

}  // namespace
}  // namespace iris::store
