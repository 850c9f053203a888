// The node-wide limiter table (edge/shared_table.h): the open-addressing index against a
// model, the bound, the layout check on attach, and processes sharing one mapping.

#include "edge/shared_table.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "edge/rate_limit.h"

namespace iris::edge::internal {
namespace {

constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kT0 = 1'000 * kSec;

// An entry that is "full" (forgettable) from full_at on.
struct FakeEntry {
  int64_t full_at = 0;
  int64_t value = 0;
  bool IsFull(int64_t now) const { return full_at <= now; }
  int64_t FullAtNanos() const { return full_at; }
};

// Every key in shard 0 with homes in a few slots: long probe chains that wrap around.
struct CollidingHash {
  uint64_t seed = 0;
  size_t operator()(uint64_t key) const { return ((key % 5) * 7 + 13) * SharedRegion::kShards; }
};

using FakeTable = SharedTable<uint64_t, FakeEntry, CollidingHash>;

std::shared_ptr<SharedRegion> MakeRegion(size_t max_entries,
                                         SharedRegion::Mode mode = SharedRegion::Mode::kPrivate) {
  auto r = SharedRegion::Create({FakeTable::Spec(max_entries)}, mode, 7);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return *r;
}

std::optional<FakeEntry> Get(const FakeTable& t, uint64_t key) {
  return t.Read(key, [](const FakeEntry* e) -> std::optional<FakeEntry> {
    return e ? std::optional<FakeEntry>(*e) : std::nullopt;
  });
}

// Every key in shard 0, homes spread over the shard's slots (so sweeps cross many blocks).
struct SpreadHash {
  uint64_t seed = 0;
  size_t operator()(uint64_t key) const {
    return ((key + 1) * 0x9E3779B97F4A7C15ULL) & ~uint64_t{SharedRegion::kShards - 1};
  }
};

// Random inserts, updates, erases, sweeps and time steps on a table whose keys all land in
// shard 0 (per_shard_cap = max_entries / 16), checked against a std::map after every step.
template <typename Hash>
void RunAgainstModel(size_t max_entries, uint64_t keys, int steps, uint64_t seed) {
  using Table = SharedTable<uint64_t, FakeEntry, Hash>;
  auto region = SharedRegion::Create({Table::Spec(max_entries)}, SharedRegion::Mode::kPrivate, 7);
  ASSERT_TRUE(region.ok());
  Table t(*region, 0, 0);
  const size_t cap = max_entries / SharedRegion::kShards;
  std::map<uint64_t, FakeEntry> model;
  std::mt19937_64 rng(seed);
  int64_t now = kT0;
  auto get = [&t](uint64_t key) {
    return t.Read(key, [](const FakeEntry* e) -> std::optional<FakeEntry> {
      return e ? std::optional<FakeEntry>(*e) : std::nullopt;
    });
  };
  for (int step = 0; step < steps; ++step) {
    const uint64_t key = rng() % keys;
    switch (rng() % 8) {
      case 0:
      case 1:
      case 2:
      case 3: {  // insert or update (only while the shard has room: the bound is tested below)
        if (!model.count(key) && model.size() >= cap) break;
        const int64_t full_at = now + static_cast<int64_t>(rng() % 100) * kSec;
        int64_t retry = 0;
        ASSERT_TRUE(t.Update(
            key, now, [] { return FakeEntry{}; },
            [&](FakeEntry& e) {
              e.full_at = full_at;
              ++e.value;
            },
            &retry));
        FakeEntry& m = model[key];
        m.full_at = full_at;
        ++m.value;
        break;
      }
      case 4: ASSERT_EQ(t.Erase(key), model.erase(key) == 1) << "step " << step; break;
      case 5: now += static_cast<int64_t>(rng() % 20) * kSec; break;
      case 6:
        t.Sweep(now);
        std::erase_if(model, [now](const auto& kv) { return kv.second.IsFull(now); });
        break;
      default: break;
    }
    ASSERT_EQ(t.size(), model.size()) << "step " << step;
    if (step % 64 == 0) {
      for (uint64_t k = 0; k < keys; ++k) {
        auto got = get(k);
        auto it = model.find(k);
        ASSERT_EQ(got.has_value(), it != model.end()) << "key " << k << " step " << step;
        if (got) {
          ASSERT_EQ(got->full_at, it->second.full_at);
          ASSERT_EQ(got->value, it->second.value);
        }
      }
    }
  }
}

TEST(SharedTableTest, MatchesAModelUnderInsertUpdateEraseAndSweep) {
  // 32 entries per shard in 64 slots, homes in 5 slots: long chains that wrap around.
  ASSERT_NO_FATAL_FAILURE(RunAgainstModel<CollidingHash>(512, 48, 20'000, 20261205));
  // 1024 entries per shard in 2048 slots, 4 slots per sweep block.
  ASSERT_NO_FATAL_FAILURE(RunAgainstModel<SpreadHash>(16 * 1024, 1500, 40'000, 14));
}

TEST(SharedTableTest, BackwardShiftKeepsEveryChainReachable) {
  FakeTable t(MakeRegion(512), 0, 0);
  int64_t retry = 0;
  for (uint64_t k = 0; k < 30; ++k) {
    ASSERT_TRUE(t.Update(
        k, kT0,
        [] {
          return FakeEntry{kT0 + kSec, 0};
        },
        [](FakeEntry&) {}, &retry));
  }
  // Erase from the middle of the chains, then every other key must still be found.
  for (uint64_t k = 0; k < 30; k += 3) ASSERT_TRUE(t.Erase(k));
  for (uint64_t k = 0; k < 30; ++k) EXPECT_EQ(Get(t, k).has_value(), k % 3 != 0) << k;
  EXPECT_EQ(t.size(), 20u);
}

TEST(SharedTableTest, AFullShardOfLimitedKeysRefusesNewKeysUntilSomeAreFull) {
  FakeTable t(MakeRegion(16 * 4), 0, 0);  // 4 entries per shard
  int64_t retry = 0;
  for (uint64_t k = 0; k < 4; ++k) {
    ASSERT_TRUE(t.Update(
        k, kT0,
        [k] {
          return FakeEntry{kT0 + static_cast<int64_t>(k + 1) * kSec, 0};
        },
        [](FakeEntry&) {}, &retry));
  }
  bool called = false;
  EXPECT_FALSE(t.Update(
      99, kT0, [] { return FakeEntry{}; }, [&](FakeEntry&) { called = true; }, &retry));
  EXPECT_FALSE(called);
  EXPECT_GT(retry, 0);
  EXPECT_EQ(t.size(), 4u) << "a limited key was forgotten";
  // Key 0 is full from kT0 + 1 s: the next insert sweeps it and takes its place.
  EXPECT_TRUE(t.Update(
      99, kT0 + kSec,
      [] {
        return FakeEntry{kT0 + 9 * kSec, 0};
      },
      [](FakeEntry&) {}, &retry));
  EXPECT_FALSE(Get(t, 0).has_value());
  EXPECT_TRUE(Get(t, 99).has_value());
  EXPECT_EQ(t.size(), 4u);
}

TEST(SharedRegionTest, AttachChecksTheLayout) {
  auto r = MakeRegion(512, SharedRegion::Mode::kShared);
  ASSERT_GE(r->fd(), 0);
  auto same = SharedRegion::Attach(dup(r->fd()), {FakeTable::Spec(512)});
  ASSERT_TRUE(same.ok()) << same.status().ToString();
  EXPECT_EQ((*same)->seed(), r->seed());
  auto other = SharedRegion::Attach(dup(r->fd()), {FakeTable::Spec(1024)});
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("same binary"), std::string::npos)
      << other.status().ToString();
  auto bad = SharedRegion::Attach(-1, {FakeTable::Spec(512)});
  EXPECT_FALSE(bad.ok());
}

TEST(SharedRegionTest, AttachedTablesSeeTheSameEntries) {
  auto r = MakeRegion(512, SharedRegion::Mode::kShared);
  auto a = SharedRegion::Attach(dup(r->fd()), {FakeTable::Spec(512)});
  ASSERT_TRUE(a.ok());
  FakeTable t1(r, 0, 0);
  FakeTable t2(*a, 0, 0);
  int64_t retry = 0;
  ASSERT_TRUE(t1.Update(
      5, kT0,
      [] {
        return FakeEntry{kT0 + kSec, 41};
      },
      [](FakeEntry& e) { ++e.value; }, &retry));
  auto got = Get(t2, 5);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->value, 42);
}

// Runs fn in a child process; returns what it wrote to the pipe as an int64.
pid_t Spawn(int* read_fd, const std::function<int64_t()>& fn) {
  int p[2];
  if (pipe(p) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    const int64_t v = fn();
    (void)!write(p[1], &v, sizeof(v));
    _exit(0);
  }
  close(p[1]);
  *read_fd = p[0];
  return pid;
}

int64_t Collect(pid_t pid, int fd) {
  int64_t v = -1;
  if (read(fd, &v, sizeof(v)) != sizeof(v)) v = -1;
  close(fd);
  int status = 0;
  waitpid(pid, &status, 0);
  return v;
}

// Two processes taking tokens from the same keys at the same instant (no refill) through
// the node's region: together they get exactly what one process alone would.
TEST(SharedRegionTest, TwoProcessesNeverGetMoreThanOneBudget) {
  ConnectionLimitConfig cc;
  FailedLoginConfig fc;
  cc.max_entries = 1024;
  fc.max_entries = 1024;
  auto region = LimiterTables::Create(cc, fc, SharedRegion::Mode::kShared, 99);
  ASSERT_TRUE(region.ok()) << region.status().ToString();
  constexpr uint64_t kUsers = 8;
  auto hammer = [&] {
    KeyedSendLimiter l(SendRateConfig{}, *region);
    int64_t granted = 0;
    for (int round = 0; round < 400; ++round) {
      for (uint64_t u = 1; u <= kUsers; ++u) granted += l.TryTake(u, kT0).ok() ? 1 : 0;
    }
    return granted;
  };
  // Alone: the peak bucket (20) bounds a burst at one instant.
  KeyedSendLimiter alone(SendRateConfig{}, 1024, 1);
  int64_t one_process = 0;
  for (int round = 0; round < 400; ++round) {
    for (uint64_t u = 1; u <= kUsers; ++u) one_process += alone.TryTake(u, kT0).ok() ? 1 : 0;
  }
  ASSERT_EQ(one_process, static_cast<int64_t>(kUsers * 20));

  int fa = -1, fb = -1;
  const pid_t a = Spawn(&fa, hammer);
  const pid_t b = Spawn(&fb, hammer);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  const int64_t ga = Collect(a, fa);
  const int64_t gb = Collect(b, fb);
  ASSERT_GE(ga, 0);
  ASSERT_GE(gb, 0);
  EXPECT_EQ(ga + gb, one_process) << "process a got " << ga << ", process b " << gb;
  // And the parent, attached to the same tables, finds every budget spent.
  KeyedSendLimiter parent(SendRateConfig{}, *region);
  EXPECT_EQ(parent.TryTake(1, kT0).code(), StatusCode::kRateLimited);
}

// A process SIGKILLed while it holds shard locks does not wedge the others: the robust
// mutex hands the lock on with EOWNERDEAD and the table repairs the shard.
TEST(SharedRegionTest, AProcessKilledHoldingShardLocksDoesNotWedgeTheOthers) {
  auto region = MakeRegion(512, SharedRegion::Mode::kShared);
  FakeTable t(region, 0, 0);
  int64_t retry = 0;
  for (uint64_t k = 0; k < 10; ++k) {
    ASSERT_TRUE(t.Update(
        k, kT0,
        [] {
          return FakeEntry{kT0 + kSec, 0};
        },
        [](FakeEntry&) {}, &retry));
  }
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  if (child == 0) {
    for (size_t s = 0; s < SharedRegion::kShards; ++s) {
      pthread_mutex_lock(&region->shard(0, s).mu);
    }
    // Half-way through a backward shift: a key copied into the next slot, not yet cleared.
    auto* slots = reinterpret_cast<FakeTable::Slot*>(region->slots(0, 0));
    for (size_t i = 0; i < 63; ++i) {
      if (slots[i].used && !slots[i + 1].used) {
        slots[i + 1] = slots[i];
        ++region->shard(0, 0).count;
        // 64 slots per shard: one slot per sweep block.
        region->shard(0, 0).blocks[0] |= uint64_t{1} << (i + 1);
        break;
      }
    }
    const char c = 1;
    (void)!write(ready[1], &c, 1);
    for (;;) pause();
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);  // the child holds every lock
  close(ready[0]);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  // Would block forever with a non-robust mutex.
  EXPECT_TRUE(t.Update(
      42, kT0,
      [] {
        return FakeEntry{kT0 + kSec, 0};
      },
      [](FakeEntry&) {}, &retry));
  EXPECT_EQ(t.size(), 11u) << "the repair did not drop the duplicate";
  for (uint64_t k = 0; k < 10; ++k) {
    EXPECT_TRUE(t.Erase(k)) << k;
    EXPECT_FALSE(Get(t, k).has_value()) << "key " << k << " was left twice";
  }
}

}  // namespace
}  // namespace iris::edge::internal
