// Shard batches (store/shard_batch.h): a store's writes split by shard and applied to other
// stores make those stores hold the same records, shard by shard — what a backup's store
// needs from its primary's (docs/replication.md).

#include "store/shard_batch.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>

#include "store/inbox_store.h"
#include "store_test_util.h"
#include "support/wait_for.h"

namespace iris::store {
namespace {

using testing::MakeEnvelope;
using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

constexpr int32_t kVnodes = 64;
constexpr uint32_t kShards = 3;

StoreOptions Options(const std::string& path) {
  StoreOptions o = TestOptions(path);
  o.vnodes = kVnodes;
  o.shard_of_vnode = [](int32_t vnode) { return static_cast<uint32_t>(vnode) % kShards; };
  o.inbox_cap = 5;  // archive moves are part of the batches too
  return o;
}

std::unique_ptr<InboxStore> Open(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? std::move(s).value() : nullptr;
}

// A primary's store whose observer keeps every shard batch, in order, per shard.
class ShardBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    primary_ = Open(Options(dir_.Sub("primary")));
    ASSERT_NE(primary_, nullptr);
    primary_->SetShardBatchObserver([this](const std::map<uint32_t, std::string>& parts) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& part : parts) batches_[part.first].push_back(part.second);
    });
  }

  // A mixture of every kind of write the store makes.
  void WriteEverything() {
    for (uint64_t user = 1; user <= 40; ++user) {
      for (int i = 0; i < 8; ++i) {
        ASSERT_TRUE(primary_
                        ->Append(100 + user, "k" + std::to_string(user) + "-" + std::to_string(i),
                                 One(100 + user, user, "m" + std::to_string(i)))
                        .ok());
      }
    }
    std::vector<v1::Envelope> fan;
    for (uint64_t member : {3, 4, 5, 6}) fan.push_back(MakeEnvelope(1, member, "g", 900));
    ASSERT_TRUE(primary_->Append(1, "group-send", std::move(fan)).ok());
    ASSERT_TRUE(primary_->PutSettings(7, UserSettings{false, true}).ok());
    ASSERT_TRUE(primary_->PutLastSeen(7, 1234).ok());
    v1::KeysUpload up;
    up.set_identity_key("identity");
    for (uint32_t id = 1; id <= 3; ++id) up.add_one_time_prekeys()->set_id(id);
    ASSERT_TRUE(primary_->UploadKeys(8, up).ok());
    v1::GroupInfo group;
    group.set_group_id(900);
    ASSERT_TRUE(primary_->PutGroup(group).ok());
    ASSERT_TRUE(primary_->DeleteUser(9).ok());                       // range deletions
    ASSERT_TRUE(primary_->DeleteVnode(primary_->VnodeOf(10)).ok());  // a whole vnode
    ASSERT_TRUE(primary_->WaitArchiverIdle(30'000));
  }

  std::vector<std::string> Batches(uint32_t shard) {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_[shard];
  }

  TempDir dir_;
  std::unique_ptr<InboxStore> primary_;
  std::mutex mu_;
  std::map<uint32_t, std::vector<std::string>> batches_;
};

TEST_F(ShardBatchTest, ABackupThatAppliesEveryShardBatchHoldsTheSameVnodes) {
  WriteEverything();
  auto backup = Open(Options(dir_.Sub("backup")));
  ASSERT_NE(backup, nullptr);
  size_t applied = 0;
  for (uint32_t shard = 0; shard < kShards; ++shard) {
    for (const std::string& b : Batches(shard)) {
      ASSERT_TRUE(backup->ApplyShardBatch(b).ok());
      ++applied;
    }
  }
  EXPECT_GT(applied, 300u);
  for (int32_t v = 0; v < kVnodes; ++v) {
    Result<uint64_t> a = primary_->VnodeChecksum(v);
    Result<uint64_t> b = backup->VnodeChecksum(v);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << "vnode " << v;
  }
  for (uint64_t user : {1u, 2u, 3u, 9u, 10u, 40u}) {
    Result<std::vector<v1::Envelope>> a = ScanAll(*primary_, user);
    Result<std::vector<v1::Envelope>> b = ScanAll(*backup, user);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->size(), b->size()) << "user " << user;
    for (size_t i = 0; i < a->size(); ++i)
      EXPECT_EQ((*a)[i].SerializeAsString(), (*b)[i].SerializeAsString());
  }
  // The backup's copy is readable through the store's own paths.
  Result<v1::KeysBundle> keys = backup->FetchKeys(8);
  ASSERT_TRUE(keys.ok()) << keys.status().message();
  EXPECT_EQ(keys->identity_key(), "identity");
}

TEST_F(ShardBatchTest, OneShardsBatchesTouchOnlyThatShardsVnodes) {
  WriteEverything();
  auto backup = Open(Options(dir_.Sub("backup")));
  ASSERT_NE(backup, nullptr);
  auto empty = Open(Options(dir_.Sub("empty")));
  ASSERT_NE(empty, nullptr);
  for (const std::string& b : Batches(1)) ASSERT_TRUE(backup->ApplyShardBatch(b).ok());
  for (int32_t v = 0; v < kVnodes; ++v) {
    const Result<uint64_t> got = backup->VnodeChecksum(v);
    const Result<uint64_t> want =
        v % kShards == 1 ? primary_->VnodeChecksum(v) : empty->VnodeChecksum(v);
    ASSERT_TRUE(got.ok() && want.ok());
    EXPECT_EQ(*got, *want) << "vnode " << v;
  }
}

TEST(ShardBatchCodecTest, OperationsRoundTripAndMalformedPayloadsAreRefused) {
  std::string payload;
  const std::vector<ShardOp> ops = {
      {'P', Cf::kInbox, std::string("\0\0\0\1key", 7), std::string(300, 'v')},
      {'D', Cf::kMeta, std::string("\0\0\0\2x", 5), ""},
      {'R', Cf::kKeys, std::string("\0\0\0\3", 4), std::string("\0\0\0\4", 4)}};
  for (const ShardOp& op : ops) AppendShardOp(op, &payload);
  Result<std::vector<ShardOp>> back = DecodeShardOps(payload);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, ops);
  for (size_t cut = 1; cut < payload.size(); ++cut) {
    Result<std::vector<ShardOp>> r = DecodeShardOps(std::string_view(payload).substr(0, cut));
    if (r.ok()) {
      EXPECT_LT(r->size(), ops.size()) << "cut at " << cut;  // only at an operation boundary
    } else {
      EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
    }
  }
  std::string bad = payload;
  bad[0] = 'X';
  EXPECT_EQ(DecodeShardOps(bad).status().code(), StatusCode::kBadRequest);
  bad = payload;
  bad[1] = 99;
  EXPECT_EQ(DecodeShardOps(bad).status().code(), StatusCode::kBadRequest);

  TempDir dir;
  auto store = Open(Options(dir.path()));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->ApplyShardBatch("Xgarbage").code(), StatusCode::kBadRequest);
}

TEST(ShardBatchCodecTest, KeysBelongToTheShardOfTheirVnodeOrToNone) {
  const std::vector<uint32_t> vnode_shard = {0, 1, 2, 0};
  EXPECT_EQ(ShardOfKey(Cf::kInbox, std::string("\0\0\0\2abc", 7), vnode_shard), 2u);
  EXPECT_EQ(ShardOfKey(Cf::kMeta, std::string("H\0\0\0\5", 5), vnode_shard), 5u);
  EXPECT_EQ(ShardOfKey(Cf::kMeta, "Jsome-jti", vnode_shard), std::nullopt);
  EXPECT_EQ(ShardOfKey(Cf::kMeta, "V", vnode_shard), std::nullopt);
  EXPECT_EQ(ShardOfKey(Cf::kInbox, std::string("\0\0\0\x09x", 5), vnode_shard), std::nullopt);
}

// Replicated mode: a batch whose part for one shard is refused (that shard's primary moved
// or failed over) while the other parts commit. The requests that wrote only to committed
// shards are answered OK and their messages pushed: they are durable on W replicas, and a
// retry would only find a duplicate, never pushed (a real run found 204 messages stored
// but never delivered live during replica moves). The others are refused, and a retry
// stores them.
TEST(ReplicatedBatchTest, APartlyRefusedBatchAnswersTheRequestsOfTheShardsThatCommitted) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.vnodes = kVnodes;
  o.shard_of_vnode = [](int32_t vnode) { return static_cast<uint32_t>(vnode) % 2; };
  std::mutex mu;
  std::condition_variable cv;
  bool hold = true;         // the first replicated part waits, so the next batch fills up
  bool refuse_one = false;  // shard 1 refuses
  uint64_t lsn[2] = {0, 0};
  InboxStore* raw = nullptr;
  o.replicate = [&](uint32_t shard, std::string payload, uint64_t hlc,
                    std::function<void(Status)> done) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !hold; });
      if (refuse_one && shard == 1) {
        lock.unlock();
        return done(Unavailable("moving a replica"));
      }
    }
    done(raw->ApplyReplicated(shard, ++lsn[shard], {payload}, hlc));
  };
  std::unique_ptr<InboxStore> store = Open(o);
  ASSERT_NE(store, nullptr);
  raw = store.get();
  std::vector<v1::Envelope> pushed;
  store->SetCommitListener([&](const std::vector<v1::Envelope>& es) {
    std::lock_guard<std::mutex> lock(mu);
    pushed.insert(pushed.end(), es.begin(), es.end());
  });
  const auto shard_of = [&](uint64_t user) {
    return static_cast<uint32_t>(store->VnodeOf(user)) % 2;
  };
  // The first append's batch waits in replication; 40 more queue behind it meanwhile.
  std::atomic<int> answered{0};
  store->AppendAsync(1, "k-first", One(1, 100, "first"),
                     [&](Result<AppendOutcome>) { ++answered; });
  std::map<uint64_t, Result<AppendOutcome>> results;
  for (uint64_t to = 200; to < 240; ++to) {
    store->AppendAsync(1, "k-" + std::to_string(to), One(1, to, "m" + std::to_string(to)),
                       [&, to](Result<AppendOutcome> r) {
                         std::lock_guard<std::mutex> lock(mu);
                         results.emplace(to, std::move(r));
                         ++answered;
                       });
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    hold = false;
    refuse_one = true;  // (the first batch's shard-1 part, if any, is refused too)
  }
  cv.notify_all();
  ASSERT_TRUE(iris::testing::PollUntil([&] { return answered.load() == 41; }, 20'000));
  int ok_in_0 = 0, refused_in_1 = 0;
  std::set<uint64_t> pushed_to;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const v1::Envelope& e : pushed) pushed_to.insert(e.recipient());
  }
  for (auto& [to, r] : results) {
    if (shard_of(to) == 0) {
      ASSERT_TRUE(r.ok()) << "recipient " << to
                          << " (shard 0, committed): " << r.status().message();
      EXPECT_FALSE(r->duplicate);
      EXPECT_EQ(pushed_to.count(to), 1u) << "recipient " << to << " not pushed";
      ++ok_in_0;
    } else {
      ASSERT_FALSE(r.ok()) << "recipient " << to << " (shard 1, refused)";
      EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
      EXPECT_EQ(pushed_to.count(to), 0u) << "recipient " << to << " pushed though refused";
      ++refused_in_1;
    }
  }
  EXPECT_GT(ok_in_0, 0);
  EXPECT_GT(refused_in_1, 0);
  // Retries: shard 0's are duplicates with the same ids; shard 1's are stored now.
  {
    std::lock_guard<std::mutex> lock(mu);
    refuse_one = false;
  }
  for (auto& [to, r] : results) {
    Result<AppendOutcome> again =
        store->Append(1, "k-" + std::to_string(to), One(1, to, "m" + std::to_string(to)));
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ(again->duplicate, shard_of(to) == 0) << "recipient " << to;
    if (r.ok()) {
      EXPECT_EQ(again->message_id, r->message_id);
    }
    Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, to);
    ASSERT_TRUE(inbox.ok());
    EXPECT_EQ(inbox->size(), 1u) << "recipient " << to;
  }
}

}  // namespace
}  // namespace iris::store
