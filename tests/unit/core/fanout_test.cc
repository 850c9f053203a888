// FanOutWorker (src/core/fanout.h) on a real store: every member but the sender gets the
// message once, the remote share goes through `remote` with a key that is the same when a
// failed batch is retried, and a job found in the store at Start resumes after its
// recorded progress.

#include "core/fanout.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>

#include "support/wait_for.h"
#include "unit/store/store_test_util.h"

namespace iris::core {
namespace {

using store::InboxStore;
using store::testing::TempDir;
using store::testing::TestOptions;

constexpr uint64_t kGroup = 77;
constexpr uint64_t kOwner = 1;

std::unique_ptr<InboxStore> OpenWithGroup(const TempDir& dir, uint64_t members) {
  auto st = InboxStore::Open(TestOptions(dir.path()));
  EXPECT_TRUE(st.ok()) << st.status().ToString();
  v1::GroupInfo g;
  g.set_group_id(kGroup);
  g.set_kind(v1::BROADCAST);
  g.set_owner(kOwner);
  for (uint64_t u = 1; u <= members; ++u) g.add_members(u);
  g.set_version(1);
  EXPECT_TRUE((*st)->PutGroup(g).ok());
  return std::move(st).value();
}

InboxStore::FanOutJob NewJob(InboxStore& store, const std::string& key) {
  v1::Envelope m;
  m.set_sender(kOwner);
  m.set_group_id(kGroup);
  m.set_kind(v1::MESSAGE);
  m.set_body("hello all");
  std::promise<Result<store::AppendOutcome>> p;
  store.AppendFanOutJob(kOwner, key, m,
                        [&p](Result<store::AppendOutcome> r) { p.set_value(std::move(r)); });
  auto r = p.get_future().get();
  EXPECT_TRUE(r.ok());
  InboxStore::FanOutJob job;
  job.group_id = kGroup;
  job.job_id = r->message_id;
  job.message = m;
  job.message.set_id(r->message_id);
  return job;
}

size_t Copies(const InboxStore& store, uint64_t user) {
  auto page = store.Scan(user, 0, 100, 1u << 20);
  EXPECT_TRUE(page.ok());
  size_t n = 0;
  for (const v1::Envelope& e : page->messages) n += e.body() == "hello all" ? 1 : 0;
  return n;
}

TEST(FanOutWorkerTest, EveryMemberOnceLocalAndRemoteWithRetriedRemoteBatch) {
  TempDir dir;
  auto store = OpenWithGroup(dir, 600);
  InboxStore::FanOutJob job = NewJob(*store, "key-1");
  // The job is one durable record; a retried send is a duplicate that stores nothing.
  {
    std::promise<Result<store::AppendOutcome>> p;
    store->AppendFanOutJob(kOwner, "key-1", job.message,
                           [&p](Result<store::AppendOutcome> r) { p.set_value(std::move(r)); });
    auto again = p.get_future().get();
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(again->duplicate);
    EXPECT_EQ(again->message_id, job.job_id);
  }
  ASSERT_EQ(store->LoadFanOutJobs()->size(), 1u);

  std::mutex mu;
  std::map<uint64_t, int> remote_got;  // even members live "on another node"
  std::vector<std::string> keys;       // one per remote call
  bool failed_once = false;
  FanOutWorker worker(*store, SystemClock::Instance(), FanOutWorker::Options{100'000, 0});
  worker.set_remote([&](const std::string& key, std::vector<v1::Envelope>* envelopes,
                        std::function<void(Status)> done) {
    std::lock_guard<std::mutex> l(mu);
    keys.push_back(key);
    if (!failed_once) {
      failed_once = true;
      return done(Unavailable("owner busy"));  // the batch is retried with the same key
    }
    std::vector<v1::Envelope> local;
    for (v1::Envelope& e : *envelopes) {
      if (e.recipient() % 2 == 0) {
        ++remote_got[e.recipient()];
      } else {
        local.push_back(std::move(e));
      }
    }
    *envelopes = std::move(local);
    done(Status::Ok());
  });
  ASSERT_TRUE(worker.Start().ok());  // loads the job from the store
  worker.Add(job, 599);              // and the sender's path adds it too: queued once
  ASSERT_TRUE(testing::PollUntil(
      [&] { return worker.backlog() == 0 && store->LoadFanOutJobs()->empty(); }, 20'000));
  worker.Stop();
  EXPECT_EQ(Copies(*store, kOwner), 0u);
  for (uint64_t u = 3; u <= 599; u += 2) ASSERT_EQ(Copies(*store, u), 1u) << u;
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(remote_got.size(), 300u);
  for (const auto& entry : remote_got) EXPECT_EQ(entry.second, 1) << entry.first;
  ASSERT_GE(keys.size(), 2u);
  EXPECT_EQ(keys[0], keys[1]);  // the retried batch
  EXPECT_EQ(keys[0], "iris.fanout/" + std::to_string(job.job_id) + "/2");
}

TEST(FanOutWorkerTest, StartResumesAJobAfterItsRecordedProgress) {
  TempDir dir;
  auto store = OpenWithGroup(dir, 500);
  InboxStore::FanOutJob job = NewJob(*store, "key-2");
  // A previous run wrote members 2..300 (here: only the progress), then stopped.
  std::promise<Result<store::AppendOutcome>> p;
  store->AppendFanOutBatch(job, 300, false, {},
                           [&p](Result<store::AppendOutcome> r) { p.set_value(std::move(r)); });
  ASSERT_TRUE(p.get_future().get().ok());
  auto jobs = store->LoadFanOutJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].done_through, 300u);
  EXPECT_EQ((*jobs)[0].message.body(), "hello all");

  FanOutWorker worker(*store, SystemClock::Instance(), FanOutWorker::Options{100'000, 0});
  ASSERT_TRUE(worker.Start().ok());
  ASSERT_TRUE(testing::PollUntil([&] { return store->LoadFanOutJobs()->empty(); }, 20'000));
  worker.Stop();
  for (uint64_t u = 2; u <= 300; ++u) ASSERT_EQ(Copies(*store, u), 0u) << u;
  for (uint64_t u = 301; u <= 500; ++u) ASSERT_EQ(Copies(*store, u), 1u) << u;
}

// Replicated cluster: a job whose batch the store refuses as UNAVAILABLE (another node leads
// the group's shard) is taken off the queue instead of being retried forever in front of
// the others; it stays in the store, and a reload (take-over) runs it to the end.
TEST(FanOutWorkerTest, RefusedJobIsLeftInTheStoreAndRunsAfterAReload) {
  TempDir dir;
  std::atomic<bool> refusing{false};
  std::atomic<uint64_t> lsn{0};
  InboxStore* raw = nullptr;
  store::StoreOptions o = TestOptions(dir.path());
  // A one-replica stand-in for the shard's replication: applies at once, or refuses.
  o.replicate = [&](uint32_t shard, std::string payload, uint64_t hlc,
                    std::function<void(Status)> done) {
    if (refusing.load()) return done(Unavailable("not the primary of this shard"));
    done(raw->ApplyReplicated(shard, ++lsn, {payload}, hlc));
  };
  auto opened = InboxStore::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<InboxStore> store = std::move(opened).value();
  raw = store.get();
  v1::GroupInfo g;
  g.set_group_id(kGroup);
  g.set_kind(v1::BROADCAST);
  g.set_owner(kOwner);
  for (uint64_t u = 1; u <= 300; ++u) g.add_members(u);
  g.set_version(1);
  ASSERT_TRUE(store->PutGroup(g).ok());
  InboxStore::FanOutJob job = NewJob(*store, "key-3");

  FanOutWorker::Options wo{100'000, 0};
  wo.drop_refused = true;
  wo.reload_after_drop_ms = 600'000;  // only the explicit reload below
  FanOutWorker worker(*store, SystemClock::Instance(), wo);
  refusing = true;
  ASSERT_TRUE(worker.Start().ok());  // loads the job; its first batch is refused
  ASSERT_TRUE(testing::PollUntil([&] { return worker.backlog() == 0; }, 20'000))
      << "the refused job stayed queued";
  EXPECT_EQ(store->LoadFanOutJobs()->size(), 1u);
  for (uint64_t u = 2; u <= 300; ++u) ASSERT_EQ(Copies(*store, u), 0u) << u;

  refusing = false;
  worker.RequestReload();
  ASSERT_TRUE(testing::PollUntil([&] { return store->LoadFanOutJobs()->empty(); }, 20'000));
  worker.Stop();
  for (uint64_t u = 2; u <= 300; ++u) ASSERT_EQ(Copies(*store, u), 1u) << u;
}

}  // namespace
}  // namespace iris::core
