// Power loss under the store (issue 17): iris_store_crash_child appends to an InboxStore on
// iris_lossyfs from several threads and reports every acknowledged append; at a seeded
// random moment (during Open and WAL recovery, or after a random number of acks) the power
// goes out: everything not fsynced is dropped, the child is SIGKILLed, the file system is
// remounted and the store reopened. Every acknowledged append must be there, exactly once,
// with its acknowledged id. The next cycle recovers the crashed directory itself.
//
// The mutation test runs the same cycle with WAL syncs turned into no-ops (an LD_PRELOAD
// library, nowalsync.cc: "acknowledge before the WAL is durable") and asserts that the loss
// is detected: the file system bites.
//
// CI: 10 power losses. IRIS_POWERLOSS_CYCLES=N, or IRIS_CHAOS_LONG=1 for 100.
// IRIS_CHAOS_SEED=S replays a run (the seed is printed).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>

#include "chaos/powerloss/lossy_mount.h"
#include "chaos/store/child_process.h"
#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::powerloss {
namespace {

using store::testing::ChildProcess;
using store::testing::CrashChildPath;
using store::testing::TempDir;

constexpr int kThreads = 4;
constexpr int kUsers = 8;
constexpr int kCap = 200;
constexpr int kResend = 5;
constexpr int64_t kReadTimeoutMs = 60'000;

struct Acked {
  uint64_t recipient;
  uint64_t id;
};

// Applies one report line of the child to the model (as tests/chaos/store/crash_test.cc).
// Returns an error text or "".
std::string Apply(const std::string& line, std::map<std::string, Acked>* acked, int* acks) {
  std::istringstream in(line);
  std::string kind, key;
  uint64_t to = 0, id = 0, ms = 0;
  int dup = 0;
  in >> kind;
  if (kind == "READY" || kind == "DONE") return "";
  in >> key >> to >> id >> dup >> ms;
  if (!in) return "unparseable line: " + line;
  auto it = acked->find(key);
  if (kind == "A") {
    ++*acks;
    if (dup != 0) return "fresh key reported as duplicate: " + line;
    if (it != acked->end()) return "key acknowledged twice: " + line;
    acked->emplace(key, Acked{to, id});
    return "";
  }
  if (kind == "R") {
    if (it != acked->end()) {
      if (dup != 1 || it->second.id != id) {
        return "re-send of an acknowledged key was not deduplicated to its first id: " + line;
      }
      return "";
    }
    acked->emplace(key, Acked{to, id});
    return "";
  }
  return "unknown line: " + line;
}

struct Check {
  std::string error;              // the store did not open, or a structural violation
  std::vector<std::string> lost;  // acknowledged keys missing or with another id/inbox
};

// Opens the store on the remounted file system and compares it with the model.
Check Verify(const std::string& db, const std::map<std::string, Acked>& acked) {
  Check c;
  store::StoreOptions o = store::testing::TestOptions(db);
  o.inbox_cap = kCap;
  o.run_archiver = false;
  Result<std::unique_ptr<store::InboxStore>> opened = store::InboxStore::Open(o);
  if (!opened.ok()) {
    c.error = "reopen failed: " + opened.status().ToString();
    return c;
  }
  const store::InboxStore& s = **opened;
  std::map<std::string, Acked> stored;
  for (uint64_t user = 1; user <= kUsers; ++user) {
    Result<std::vector<v1::Envelope>> archived = store::testing::HistoryAll(s, user);
    Result<std::vector<v1::Envelope>> inbox = store::testing::ScanAll(s, user);
    if (!archived.ok() || !inbox.ok()) {
      c.error = "read of user " + std::to_string(user) + " failed";
      return c;
    }
    std::vector<v1::Envelope> all = std::move(archived).value();
    for (v1::Envelope& e : *inbox) all.push_back(std::move(e));
    for (size_t i = 0; i < all.size(); ++i) {
      if (i > 0 && all[i - 1].id() >= all[i].id()) {
        c.error = "ids not increasing in inbox " + std::to_string(user);
      }
      if (!stored.emplace(all[i].body(), Acked{user, all[i].id()}).second) {
        c.error = "message " + all[i].body() + " stored twice";
      }
    }
  }
  for (const auto& [key, a] : acked) {
    auto it = stored.find(key);
    if (it == stored.end() || it->second.id != a.id || it->second.recipient != a.recipient) {
      c.lost.push_back(key);
    }
  }
  return c;
}

struct Totals {
  uint64_t cycles = 0;
  uint64_t crashes_before_ready = 0;
  uint64_t acks = 0;
  uint64_t lost = 0;
  uint64_t sst_files = 0;  // at the end: flushes and compactions happened under the crashes
  std::string first_error;
};

// Runs `cycles` power losses; stops early at the first loss when `stop_at_loss`.
void RunCycles(uint64_t seed, uint64_t cycles, const std::vector<std::string>& child_env,
               bool stop_at_loss, Totals* t) {
  std::mt19937_64 rng(seed);
  TempDir tmp;
  LossyMount mount(tmp.Sub("backing"), tmp.Sub("mnt"));
  std::string err;
  ASSERT_TRUE(mount.Mount(&err)) << err;
  const std::string db = mount.mountpoint() + "/db";
  std::map<std::string, Acked> acked;
  for (uint64_t cycle = 0; cycle < cycles; ++cycle) {
    const int mode = static_cast<int>(rng() % 10);
    // -1: the power goes out during exec, Open or WAL recovery.
    const int crash_after = mode == 0 ? -1 : static_cast<int>(50 + rng() % 400);
    ChildProcess child(
        {CrashChildPath(), "--dir=" + db, "--cycle=" + std::to_string(cycle),
         "--threads=" + std::to_string(kThreads), "--window=8", "--users=" + std::to_string(kUsers),
         "--cap=" + std::to_string(kCap), "--resend=" + std::to_string(kResend)},
        child_env);
    int acks = 0;
    if (crash_after < 0) {
      ++t->crashes_before_ready;
    } else {
      bool ready = false;
      while (!(ready && acks >= crash_after)) {
        std::optional<std::string> line = child.ReadLine(kReadTimeoutMs);
        ASSERT_TRUE(line.has_value()) << "cycle " << cycle << ": child stopped reporting"
                                      << (child.timed_out() ? " (timeout)" : " (exited)");
        if (line->rfind("READY", 0) == 0) ready = true;
        const std::string e = Apply(*line, &acked, &acks);
        ASSERT_TRUE(e.empty()) << "cycle " << cycle << ": " << e;
      }
    }
    ASSERT_TRUE(mount.Crash()) << "cycle " << cycle << ": the control file refused 'crash'";
    child.Kill();
    const int status = child.Wait();
    // Acks written before the kill count: their fsync returned before the power went out
    // (every fsync after it fails with EIO).
    while (std::optional<std::string> line = child.ReadLine(kReadTimeoutMs)) {
      const std::string e = Apply(*line, &acked, &acks);
      ASSERT_TRUE(e.empty()) << "cycle " << cycle << ": " << e;
    }
    // Killed by us, or exited 1 after an append failed with EIO once the power was out.
    ASSERT_TRUE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
                (WIFEXITED(status) && WEXITSTATUS(status) == 1))
        << "cycle " << cycle << ": child wait status " << status;
    t->acks += static_cast<uint64_t>(acks);
    ++t->cycles;
    mount.Unmount();
    ASSERT_TRUE(mount.Mount(&err)) << "cycle " << cycle << ": " << err;
    Check c = Verify(db, acked);
    if (!c.error.empty() && t->first_error.empty()) {
      t->first_error = "cycle " + std::to_string(cycle) + ": " + c.error;
    }
    t->lost += c.lost.size();
    if (!c.lost.empty()) {
      std::printf("store power loss: cycle %llu: %zu acknowledged appends lost (first %s)\n",
                  static_cast<unsigned long long>(cycle), c.lost.size(), c.lost[0].c_str());
      if (stop_at_loss) return;
      for (const std::string& k : c.lost) acked.erase(k);  // report each loss once
    }
    if (!c.error.empty() && stop_at_loss) return;
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(db, ec)) {
    if (e.path().extension() == ".sst") ++t->sst_files;
  }
}

TEST(StorePowerLoss, AcknowledgedAppendsSurvivePowerLoss) {
  const uint64_t seed = Seed();
  const uint64_t cycles = Cycles(10);
  std::printf("store power loss: seed=%llu cycles=%llu (IRIS_CHAOS_SEED replays)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(cycles));
  std::fflush(stdout);
  Totals t;
  RunCycles(seed, cycles, {}, false, &t);
  std::printf(
      "store power loss: %llu power losses (%llu during Open), %llu acknowledged, "
      "%llu lost; %llu SST files at the end\n",
      static_cast<unsigned long long>(t.cycles),
      static_cast<unsigned long long>(t.crashes_before_ready),
      static_cast<unsigned long long>(t.acks), static_cast<unsigned long long>(t.lost),
      static_cast<unsigned long long>(t.sst_files));
  EXPECT_TRUE(t.first_error.empty()) << t.first_error;
  EXPECT_EQ(t.lost, 0u) << "seed " << seed;
  EXPECT_EQ(t.cycles, cycles);
  EXPECT_GT(t.acks, 0u);
}

// The mutation: the WAL is never really synced, so acknowledged appends sit in the volatile
// layer and the power loss must take some of them.
TEST(StorePowerLoss, AckBeforeFsyncIsCaught) {
  const uint64_t seed = Seed();
  std::printf("store power loss (mutation: WAL not synced): seed=%llu\n",
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  Totals t;
  RunCycles(seed, 3, {"LD_PRELOAD=" + NoWalSyncPath()}, true, &t);
  std::printf("store power loss (mutation): %llu power losses, %llu acknowledged, %llu lost%s\n",
              static_cast<unsigned long long>(t.cycles), static_cast<unsigned long long>(t.acks),
              static_cast<unsigned long long>(t.lost),
              t.first_error.empty() ? "" : (" (" + t.first_error + ")").c_str());
  // Caught either way: acknowledged appends are missing, or the store refused to open
  // because its durability mark shows writes the WAL no longer holds.
  const bool refused = t.first_error.find("the write-ahead log was truncated or lost") !=
                       std::string::npos;
  EXPECT_TRUE(t.lost > 0 || refused)
      << "acknowledging before the WAL is durable went unnoticed: the power loss did not drop "
         "unsynced data ("
      << t.first_error << ")";
}

}  // namespace
}  // namespace iris::powerloss
