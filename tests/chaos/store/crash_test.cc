// Crash test with real processes (RFC-001 §13.3 "Node kill (SIGKILL): zero ACKed message
// loss"; STYLE.md: a crash driver that kills real processes and checks against a model).
//
// Each cycle starts iris_store_crash_child on the same store directory; it re-sends some
// keys of the previous cycle (which must deduplicate against whatever survived) and then
// appends from several threads, reporting every acknowledged append. The parent SIGKILLs it
// at a seeded random moment (before Open finished, right after Open, or after a random
// number of acks), reopens the store itself and checks, over inbox + archive of every user:
// every acknowledged message is present exactly once with its acknowledged id and inbox,
// no message is stored twice, ids are strictly increasing per inbox, and the HLC high-water
// mark covers every acknowledged id.
//
// CI runs 50 cycles; IRIS_CRASH_CYCLES=N overrides, IRIS_CHAOS_LONG=1 runs 500.
// IRIS_CRASH_SEED=S replays a run (the seed is printed).
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>
#include <sstream>

#include "chaos/store/child_process.h"
#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::ChildProcess;
using testing::CrashChildPath;
using testing::HistoryAll;
using testing::ScanAll;
using testing::TempDir;

constexpr int kThreads = 4;
constexpr int kUsers = 8;
constexpr int kCap = 200;
constexpr int kResend = 5;
constexpr int64_t kReadTimeoutMs = 120'000;

struct Acked {
  uint64_t recipient;
  uint64_t id;
};

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// Applies one report line of the child to the model. Returns an error text or "".
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
        return "re-send of an acknowledged key was not deduplicated to its first id: " + line +
               " (first id " + std::to_string(it->second.id) + ")";
      }
      return "";
    }
    // Never acknowledged before: it either survived unacknowledged (dup) or is new now.
    acked->emplace(key, Acked{to, id});
    return "";
  }
  return "unknown line: " + line;
}

void Verify(const std::string& dir, const std::map<std::string, Acked>& acked, uint64_t max_id,
            int cycle) {
  StoreOptions o = testing::TestOptions(dir);
  o.inbox_cap = kCap;
  o.run_archiver = false;  // a stable view: nothing moves while inbox and archive are read
  Result<std::unique_ptr<InboxStore>> opened = InboxStore::Open(o);
  ASSERT_TRUE(opened.ok()) << "cycle " << cycle << ": " << opened.status().ToString();
  const InboxStore& store = **opened;
  std::map<std::string, Acked> stored;
  for (uint64_t user = 1; user <= kUsers; ++user) {
    Result<std::vector<v1::Envelope>> archived = HistoryAll(store, user);
    Result<std::vector<v1::Envelope>> inbox = ScanAll(store, user);
    ASSERT_TRUE(archived.ok() && inbox.ok()) << "cycle " << cycle;
    std::vector<v1::Envelope> all = std::move(archived).value();
    for (v1::Envelope& e : *inbox) all.push_back(std::move(e));
    for (size_t i = 0; i < all.size(); ++i) {
      const v1::Envelope& e = all[i];
      if (i > 0) {
        ASSERT_LT(all[i - 1].id(), e.id())
            << "cycle " << cycle << ": ids not increasing in inbox " << user;
      }
      ASSERT_EQ(e.recipient(), user);
      const bool fresh = stored.emplace(e.body(), Acked{user, e.id()}).second;
      ASSERT_TRUE(fresh) << "cycle " << cycle << ": message " << e.body() << " stored twice";
    }
  }
  for (const auto& [key, a] : acked) {
    auto it = stored.find(key);
    ASSERT_NE(it, stored.end()) << "cycle " << cycle << ": acknowledged message " << key << " (id "
                                << a.id << ") lost";
    ASSERT_EQ(it->second.id, a.id) << "cycle " << cycle << ": " << key;
    ASSERT_EQ(it->second.recipient, a.recipient) << "cycle " << cycle << ": " << key;
  }
  ASSERT_GE(store.LastId(), max_id) << "cycle " << cycle;
}

TEST(CrashTest, AcknowledgedMessagesSurviveSigkillExactlyOnce) {
  const uint64_t seed = EnvOr("IRIS_CRASH_SEED", 0x1215'2026);
  const uint64_t cycles = EnvOr("IRIS_CRASH_CYCLES", EnvOr("IRIS_CHAOS_LONG", 0) != 0 ? 500 : 50);
  std::printf("crash test: seed=%llu cycles=%llu child=%s\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(cycles), CrashChildPath().c_str());
  std::mt19937_64 rng(seed);
  TempDir dir;
  const std::string db = dir.Sub("db");
  std::map<std::string, Acked> acked;
  uint64_t max_id = 0;
  int total_acks = 0;
  int kills_before_ready = 0;

  for (uint64_t cycle = 0; cycle < cycles; ++cycle) {
    const int mode = static_cast<int>(rng() % 10);
    const int kill_after = mode == 0 ? -2 : mode == 1 ? -1 : static_cast<int>(rng() % 400);
    ChildProcess child({CrashChildPath(), "--dir=" + db, "--cycle=" + std::to_string(cycle),
                        "--threads=" + std::to_string(kThreads), "--window=8",
                        "--users=" + std::to_string(kUsers), "--cap=" + std::to_string(kCap),
                        "--resend=" + std::to_string(kResend)});
    int acks = 0;
    if (kill_after == -2) {
      child.Kill();  // during exec, Open or WAL recovery
      ++kills_before_ready;
    } else {
      bool ready = false;
      while (!(ready && acks >= kill_after)) {
        std::optional<std::string> line = child.ReadLine(kReadTimeoutMs);
        ASSERT_TRUE(line.has_value()) << "cycle " << cycle << ": child stopped reporting"
                                      << (child.timed_out() ? " (timeout)" : " (exited)");
        if (line->rfind("READY", 0) == 0) ready = true;
        const std::string err = Apply(*line, &acked, &acks);
        ASSERT_TRUE(err.empty()) << "cycle " << cycle << ": " << err;
      }
      child.Kill();
    }
    child.Wait();
    // Reports written before the kill are acknowledgements too.
    while (std::optional<std::string> line = child.ReadLine(kReadTimeoutMs)) {
      const std::string err = Apply(*line, &acked, &acks);
      ASSERT_TRUE(err.empty()) << "cycle " << cycle << ": " << err;
    }
    total_acks += acks;
    for (const auto& [k, a] : acked) max_id = std::max(max_id, a.id);
    Verify(db, acked, max_id, static_cast<int>(cycle));
    if (HasFatalFailure()) return;
  }
  std::printf("crash test: %llu kills (%d before Open finished), %d acks, %zu messages checked\n",
              static_cast<unsigned long long>(cycles), kills_before_ready, total_acks,
              acked.size());
  EXPECT_GT(acked.size(), cycles * 10);  // the test really appended under fire
}

}  // namespace
}  // namespace iris::store
