// Clock skew (RFC-001 §13.3 "Clock skew (±30s): HLC ordering maintained"): real processes
// appending under libfaketime.
//
//  1. `faketime -f '+30s' iris_store_crash_child ...`: the clock 30 s ahead;
//  2. `faketime -f '-30s' ...` on the same store: the clock a minute behind run 1;
//  3. one process whose clock the test steps back and forth by up to 30 s while it appends
//     (libfaketime reading FAKETIME_TIMESTAMP_FILE on every call).
// CLOCK_MONOTONIC is left alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as on a real machine
// whose NTP steps the wall clock. Checks: every inbox's ids strictly increase in commit
// order within and across runs, all ids are unique, the store holds exactly what was
// acknowledged, and the child really saw the skew (its READY wall time, and accept times
// going backwards while ids go forwards).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "chaos/store/child_process.h"
#include "common/clock.h"
#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::ChildProcess;
using testing::CrashChildPath;
using testing::ScanAll;
using testing::TempDir;

constexpr int kUsers = 4;
constexpr int kThreads = 4;

std::string FindLibFaketime() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                        "/usr/lib/faketime/libfaketime.so.1"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "";
}

struct Ack {
  uint64_t recipient;
  uint64_t id;
  int64_t accepted_ms;
};

// Reads the child's reports until DONE; `on_ack` sees each acknowledgement.
struct RunResult {
  int64_t ready_wall_ms = 0;
  std::vector<Ack> acks;
};

template <typename OnAck>
void ReadRun(ChildProcess& child, RunResult* out, OnAck on_ack) {
  for (;;) {
    std::optional<std::string> line = child.ReadLine(120'000);
    ASSERT_TRUE(line.has_value()) << "child stopped reporting"
                                  << (child.timed_out() ? " (timeout)" : " (exited)");
    std::istringstream in(*line);
    std::string kind;
    in >> kind;
    if (kind == "DONE") break;
    if (kind == "READY") {
      in >> out->ready_wall_ms;
      continue;
    }
    ASSERT_EQ(kind, "A") << *line;
    std::string key;
    Ack a{};
    int dup = 0;
    in >> key >> a.recipient >> a.id >> dup >> a.accepted_ms;
    ASSERT_TRUE(in) << *line;
    ASSERT_EQ(dup, 0) << *line;
    out->acks.push_back(a);
    on_ack(out->acks.size());
  }
  const int status = child.Wait();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

std::vector<std::string> ChildArgs(const std::string& db, int cycle, int per_thread) {
  return {CrashChildPath(),
          "--dir=" + db,
          "--cycle=" + std::to_string(cycle),
          "--threads=" + std::to_string(kThreads),
          "--window=4",
          "--users=" + std::to_string(kUsers),
          "--max=" + std::to_string(per_thread)};
}

TEST(ClockSkewTest, IdsStayStrictlyIncreasingWhileTheClockStepsBy30Seconds) {
  const std::string libfaketime = FindLibFaketime();
  ASSERT_FALSE(libfaketime.empty()) << "libfaketime is missing: run scripts/install-deps";
  const uint64_t seed = 0x5ce3;
  std::printf("clock skew test: seed=%llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  TempDir dir;
  const std::string db = dir.Sub("db");
  const std::vector<std::string> no_fake_mono = {"FAKETIME_DONT_FAKE_MONOTONIC=1"};
  std::vector<RunResult> runs;
  const int64_t tolerance_ms = 10'000;

  // Run 1: 30 s ahead.
  {
    std::vector<std::string> argv = {"faketime", "-f", "+30s"};
    for (std::string& a : ChildArgs(db, 0, 150)) argv.push_back(std::move(a));
    const int64_t before = SystemClock::Instance().WallMillis();
    ChildProcess child(argv, no_fake_mono);
    RunResult r;
    ReadRun(child, &r, [](size_t) {});
    if (HasFatalFailure()) return;
    EXPECT_NEAR(static_cast<double>(r.ready_wall_ms - before), 30'000.0, tolerance_ms)
        << "faketime did not move the child's clock ahead";
    runs.push_back(std::move(r));
  }
  // Run 2: 30 s behind, i.e. a minute behind the ids already in the store.
  {
    std::vector<std::string> argv = {"faketime", "-f", "-30s"};
    for (std::string& a : ChildArgs(db, 1, 150)) argv.push_back(std::move(a));
    const int64_t before = SystemClock::Instance().WallMillis();
    ChildProcess child(argv, no_fake_mono);
    RunResult r;
    ReadRun(child, &r, [](size_t) {});
    if (HasFatalFailure()) return;
    EXPECT_NEAR(static_cast<double>(r.ready_wall_ms - before), -30'000.0, tolerance_ms)
        << "faketime did not move the child's clock back";
    runs.push_back(std::move(r));
  }
  // Run 3: stepped back and forth while appending.
  {
    const std::string rc = dir.Sub("faketime.rc");
    auto set_offset = [&](int seconds) {
      std::ofstream out(rc, std::ios::trunc);
      out << (seconds >= 0 ? "+" : "") << seconds << "\n";
    };
    set_offset(0);
    ChildProcess child(ChildArgs(db, 2, 400),
                       {"LD_PRELOAD=" + libfaketime, "FAKETIME_TIMESTAMP_FILE=" + rc,
                        "FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1"});
    // Every 100 acks a new offset: a full swing first (+30 s then -30 s), then random ones.
    std::vector<int> steps = {30, -30};
    for (int i = 0; i < 14; ++i) steps.push_back(static_cast<int>(rng() % 61) - 30);
    size_t next_step = 0;
    RunResult r;
    ReadRun(child, &r, [&](size_t acks) {
      if (acks % 100 == 0 && next_step < steps.size()) set_offset(steps[next_step++]);
    });
    if (HasFatalFailure()) return;
    EXPECT_GE(next_step, 2u);
    // The child's wall clock really went backwards (by ~60 s) while it kept acknowledging.
    int64_t max_seen = 0;
    int64_t biggest_drop = 0;
    for (const Ack& a : r.acks) {
      max_seen = std::max(max_seen, a.accepted_ms);
      biggest_drop = std::max(biggest_drop, max_seen - a.accepted_ms);
    }
    EXPECT_GE(biggest_drop, 40'000) << "the clock steps did not reach the child";
    runs.push_back(std::move(r));
  }

  // Per inbox, acknowledgements come in commit order: ids strictly increase within and
  // across runs; ids are unique over the whole store.
  std::map<uint64_t, uint64_t> last_by_inbox;
  std::set<uint64_t> all_ids;
  size_t total = 0;
  for (size_t run = 0; run < runs.size(); ++run) {
    for (const Ack& a : runs[run].acks) {
      uint64_t& last = last_by_inbox[a.recipient];
      ASSERT_GT(a.id, last) << "run " << run << ": inbox " << a.recipient << " id went backwards";
      last = a.id;
      ASSERT_TRUE(all_ids.insert(a.id).second) << "id " << a.id << " issued twice";
      ++total;
    }
  }
  ASSERT_EQ(total, size_t{150 * kThreads * 2 + 400 * kThreads});

  Result<std::unique_ptr<InboxStore>> opened = InboxStore::Open(testing::TestOptions(db));
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::set<uint64_t> stored;
  for (uint64_t user = 1; user <= kUsers; ++user) {
    Result<std::vector<v1::Envelope>> inbox = ScanAll(**opened, user);
    ASSERT_TRUE(inbox.ok());
    for (size_t i = 0; i < inbox->size(); ++i) {
      if (i > 0) {
        ASSERT_LT((*inbox)[i - 1].id(), (*inbox)[i].id());
      }
      stored.insert((*inbox)[i].id());
    }
  }
  EXPECT_EQ(stored, all_ids);
}

}  // namespace
}  // namespace iris::store
