// Crash test with real processes (RFC-001 §13.3 "Node kill (SIGKILL): zero ACKed message
// loss"; STYLE.md: a crash driver that kills real processes and checks against a model;
// docs/reliability.md, "Store crash test").
//
// Each cycle starts iris_store_crash_child on the same store directory, which the previous
// child left crashed (SIGKILLed, possibly in the middle of its own Open and WAL recovery):
// the child recovers it. The child first re-sends every key that was in flight when an
// earlier child was killed (same idempotency key, sender, inbox and body: each must end up
// stored exactly once) and a few acknowledged keys (which must deduplicate to their first
// id), then appends from several threads, reporting each key before it hands it to the
// store (S) and each acknowledgement (A, R). The parent kills it only after the child said it
// runs (OPENING, a pipe handshake), in one of four ways, drawn from the seed:
//   - during Open: at a seeded delay after OPENING drawn over the Open times seen so far, so
//     that most land inside Open (WAL replay, the recovery flush, MANIFEST and OPTIONS
//     writes); counted when the child never reported READY;
//   - during WAL replay: the parent follows the store's RocksDB LOG (inotify) and kills after
//     recovery_started and a seeded number (0-4) of recovery flushes, or at
//     recovery_finished;
//   - while running: after a seeded number of acknowledgements; the small memtable (RocksDB's
//     64 KiB floor) and 512-byte bodies make flushes and level-0 compactions run all the
//     time, and the child's RocksDB LOG (EVENT_LOG_v1 *_started without *_finished) tells
//     which kills landed during a flush or a compaction;
//   - not at all: the child appends a few messages and exits by itself.
// Every child must die of our SIGKILL, or exit 0 by itself, with nothing on stderr. Then the
// crashed directory is copied and the copy opened (never the directory itself, so the next
// child recovers the crash) and checked against the model over inbox + archive of every
// user: every acknowledged message is present with its acknowledged id and inbox, every
// stored message is one that was submitted, with exactly the content it was sent with, none
// is stored twice, ids are strictly increasing per inbox, and the HLC high-water mark covers
// every acknowledged id. After the last cycle a child re-sends whatever is still in flight
// and exits; then every submitted key must be stored exactly once.
//
// CI runs 50 cycles; IRIS_CRASH_CYCLES=N (or IRIS_CHAOS_CYCLES=N) overrides, IRIS_CHAOS_LONG=1
// runs 1,000. A fresh seed is drawn per run and printed; IRIS_CRASH_SEED=S (or
// IRIS_CHAOS_SEED=S) replays it (the schedule, not the threads' timing). Every failure prints
// the replay command. IRIS_CRASH_CHILD_MUTATION (crash_child.cc) plants bugs in the child to
// show that the checks bite; CrashTest.PlantedBugsAreCaught runs each of them.
#include <gtest/gtest.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "chaos/store/child_process.h"
#include "chaos/store/crash_protocol.h"
#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::ChildProcess;
using testing::CrashBodyOf;
using testing::CrashChildPath;
using testing::CrashKeyOfBody;
using testing::CrashRecipientOf;
using testing::CrashSenderOf;
using testing::HistoryAll;
using testing::ParseCrashKey;
using testing::ScanAll;
using testing::TempDir;

constexpr int kThreads = 4;
constexpr int kWindow = 8;
constexpr int kUsers = 8;
constexpr int kCap = 200;
constexpr size_t kWriteBuffer = 64u << 10;  // RocksDB's floor: flushes all the time
constexpr size_t kBodyBytes = 512;
constexpr int kResendAcked = 5;          // acknowledged keys re-sent per cycle (dedup)
constexpr int kMaxAcksBeforeKill = 600;  // a running child is killed after 0..599 acks
constexpr int64_t kReadTimeoutMs = 120'000;

using Clock = std::chrono::steady_clock;

// Parses a decimal environment variable; nullopt when unset, a test failure when malformed.
std::optional<uint64_t> EnvNumber(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  char* end = nullptr;
  const uint64_t n = std::strtoull(v, &end, 10);
  if (end == nullptr || *end != '\0') {
    ADD_FAILURE() << name << " must be a decimal integer, got \"" << v << "\"";
    return std::nullopt;
  }
  return n;
}

uint64_t CrashSeed() {
  if (auto s = EnvNumber("IRIS_CRASH_SEED")) return *s;
  if (auto s = EnvNumber("IRIS_CHAOS_SEED")) return *s;
  return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
}

uint64_t CrashCycles() {
  if (auto c = EnvNumber("IRIS_CRASH_CYCLES")) return *c;
  if (auto c = EnvNumber("IRIS_CHAOS_CYCLES")) return *c;
  const char* l = std::getenv("IRIS_CHAOS_LONG");
  return l != nullptr && std::string(l) == "1" ? 1000 : 50;
}

std::string SelfPath() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "iris_store_chaos_test";
}

struct Acked {
  uint64_t recipient;
  uint64_t id;
};

// What the children were told and what they reported, over the whole run.
struct Model {
  std::map<std::string, Acked> acked;
  std::vector<std::string> acked_order;  // for the seeded choice of acknowledged re-sends
  std::set<std::string> in_flight;       // submitted (S), never acknowledged
  uint64_t max_id = 0;
};

// One child's reports.
struct ChildReport {
  bool opening = false;
  bool ready = false;
  bool done = false;
  std::set<std::string> resend;       // the keys it was asked to re-send first
  std::set<std::string> resend_left;  // of which no R line yet
  int acks = 0;                       // A lines
  int resent_in_flight = 0;           // R lines of keys that were in flight
  int survived_unacked = 0;           // of which the store already had (duplicate = 1)
};

// Applies one report line of the child to the model. Returns an error text or "".
std::string Apply(const std::string& line, Model* m, ChildReport* c) {
  std::istringstream in(line);
  std::string kind, key;
  in >> kind;
  if (kind == "OPENING") {
    c->opening = true;
    return "";
  }
  if (!c->opening) return "a line before OPENING: " + line;
  if (kind == "READY") {
    c->ready = true;
    return "";
  }
  if (kind == "DONE") {
    c->done = true;
    return "";
  }
  if (!c->ready) return "a line before READY: " + line;
  in >> key;
  if (!in) return "unparseable line: " + line;
  if (kind == "S") {
    if (c->resend.count(key) == 0 && !c->resend_left.empty()) {
      return "new append " + key + " started before every key in flight at the last kill was " +
             "re-sent (" + std::to_string(c->resend_left.size()) + " left, e.g. " +
             *c->resend_left.begin() + ")";
    }
    if (m->acked.count(key) == 0) m->in_flight.insert(key);
    return "";
  }
  uint64_t to = 0, id = 0, ms = 0;
  int dup = 0;
  in >> to >> id >> dup >> ms;
  if (!in) return "unparseable line: " + line;
  int thread = 0;
  long seq = 0;
  if (!ParseCrashKey(key, &thread, &seq)) return "malformed key: " + line;
  if (to != CrashRecipientOf(kUsers, thread, seq)) return "wrong recipient: " + line;
  auto it = m->acked.find(key);
  if (kind == "A") {
    ++c->acks;
    if (m->in_flight.count(key) == 0) {
      return it != m->acked.end() ? "key acknowledged twice: " + line
                                  : "acknowledged without being submitted (no S line): " + line;
    }
    if (dup != 0) return "fresh key reported as duplicate: " + line;
    if (!c->resend_left.empty()) return "new append acknowledged before the re-sends: " + line;
    m->in_flight.erase(key);
    m->acked.emplace(key, Acked{to, id});
    m->acked_order.push_back(key);
    m->max_id = std::max(m->max_id, id);
    return "";
  }
  if (kind == "R") {
    if (c->resend_left.erase(key) == 0) return "re-send of a key not asked for, or twice: " + line;
    if (it != m->acked.end()) {
      if (dup != 1 || it->second.id != id) {
        return "re-send of an acknowledged key was not deduplicated to its first id: " + line +
               " (first id " + std::to_string(it->second.id) + ")";
      }
      return "";
    }
    if (m->in_flight.erase(key) == 0) return "re-send of a key never submitted: " + line;
    ++c->resent_in_flight;
    if (dup != 0) ++c->survived_unacked;
    m->acked.emplace(key, Acked{to, id});
    m->acked_order.push_back(key);
    m->max_id = std::max(m->max_id, id);
    return "";
  }
  return "unknown line: " + line;
}

// Opens the store at `dir` and compares it with the model. `final`: nothing may be in flight
// any more and exactly the acknowledged keys are stored. Returns an error text or "".
std::string Verify(const std::string& dir, const Model& m, bool final) {
  StoreOptions o = testing::TestOptions(dir);
  o.inbox_cap = kCap;
  o.run_archiver = false;  // a stable view: nothing moves while inbox and archive are read
  Result<std::unique_ptr<InboxStore>> opened = InboxStore::Open(o);
  if (!opened.ok()) return "the crashed store did not open: " + opened.status().ToString();
  const InboxStore& store = **opened;
  std::map<std::string, Acked> stored;
  for (uint64_t user = 1; user <= kUsers; ++user) {
    Result<std::vector<v1::Envelope>> archived = HistoryAll(store, user);
    Result<std::vector<v1::Envelope>> inbox = ScanAll(store, user);
    if (!archived.ok())
      return "archive of user " + std::to_string(user) + ": " + archived.status().ToString();
    if (!inbox.ok())
      return "inbox of user " + std::to_string(user) + ": " + inbox.status().ToString();
    std::vector<v1::Envelope> all = std::move(archived).value();
    for (v1::Envelope& e : *inbox) all.push_back(std::move(e));
    for (size_t i = 0; i < all.size(); ++i) {
      const v1::Envelope& e = all[i];
      const std::string where =
          " (id " + std::to_string(e.id()) + ", inbox " + std::to_string(user) + ")";
      if (i > 0 && all[i - 1].id() >= e.id()) return "ids not increasing" + where;
      const std::string key = CrashKeyOfBody(e.body());
      int thread = 0;
      long seq = 0;
      if (!ParseCrashKey(key, &thread, &seq)) return "a stored message no child sent" + where;
      if (e.recipient() != user || user != CrashRecipientOf(kUsers, thread, seq) ||
          e.sender() != CrashSenderOf(thread) || e.body() != CrashBodyOf(key, kBodyBytes)) {
        return "message " + key + " stored with other content than it was sent with" + where;
      }
      if (!stored.emplace(key, Acked{user, e.id()}).second) {
        return "message " + key + " stored twice" + where;
      }
      if (m.acked.count(key) == 0 && m.in_flight.count(key) == 0) {
        return "message " + key + " stored but never submitted" + where;
      }
    }
  }
  for (const auto& entry : m.acked) {
    auto it = stored.find(entry.first);
    if (it == stored.end()) {
      return "acknowledged message " + entry.first + " (id " + std::to_string(entry.second.id) +
             ") lost";
    }
    if (it->second.id != entry.second.id || it->second.recipient != entry.second.recipient) {
      return "acknowledged message " + entry.first + " stored as id " +
             std::to_string(it->second.id) + " in inbox " + std::to_string(it->second.recipient) +
             ", acknowledged as id " + std::to_string(entry.second.id) + " in inbox " +
             std::to_string(entry.second.recipient);
    }
  }
  if (store.LastId() < m.max_id) {
    return "HLC high-water mark " + std::to_string(store.LastId()) + " below an acknowledged id " +
           std::to_string(m.max_id);
  }
  if (final) {
    if (!m.in_flight.empty()) {
      return std::to_string(m.in_flight.size()) + " keys still in flight after the last " +
             "re-send, e.g. " + *m.in_flight.begin();
    }
    if (stored.size() != m.acked.size()) {
      return std::to_string(stored.size()) + " messages stored, " + std::to_string(m.acked.size()) +
             " acknowledged";
    }
  }
  return "";
}

// Where the child's RocksDB info LOG stood before it started (the parent reads what the
// child appended: the LOG is appended to by every open, rotated to LOG.old at 4 MiB).
struct LogMark {
  bool exists = false;
  ino_t ino = 0;
  off_t size = 0;
};

LogMark MarkLog(const std::string& db) {
  LogMark m;
  struct stat st {};
  if (stat((db + "/LOG").c_str(), &st) == 0) {
    m.exists = true;
    m.ino = st.st_ino;
    m.size = st.st_size;
  }
  return m;
}

std::string ReadFrom(const std::string& path, off_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(offset);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string LogSince(const std::string& db, const LogMark& mark) {
  const std::string log = db + "/LOG";
  struct stat st {};
  if (!mark.exists || stat(log.c_str(), &st) != 0) return ReadFrom(log, 0);
  if (st.st_ino == mark.ino) return ReadFrom(log, mark.size);
  return ReadFrom(log + ".old", mark.size) + ReadFrom(log, 0);  // rotated once meanwhile
}

// Follows the LOG from an offset, line by line (for the kills inside WAL replay).
class LogFollower {
 public:
  LogFollower(std::string path, off_t offset) : path_(std::move(path)), offset_(offset) {}
  // The complete lines appended since the last call.
  std::vector<std::string> NewLines() {
    std::vector<std::string> lines;
    const std::string text = ReadFrom(path_, offset_);
    offset_ += static_cast<off_t>(text.size());
    partial_ += text;
    size_t start = 0;
    for (size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
      lines.push_back(partial_.substr(start, nl - start));
    }
    partial_.erase(0, start);
    return lines;
  }

 private:
  std::string path_;
  off_t offset_;
  std::string partial_;
};

// A directory for the verification copies: on /dev/shm when there is one (the copy's Open
// then costs no fsyncs; where the copy lives does not matter), else under `fallback`.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& fallback) {
    char tmpl[] = "/dev/shm/iris-crash-copy-XXXXXX";
    if (access("/dev/shm", W_OK) == 0 && mkdtemp(tmpl) != nullptr) {
      path_ = tmpl;
      owned_ = true;
    } else {
      path_ = fallback;
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    if (owned_) std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool owned_ = false;
};

// What RocksDB was doing when the child died, from its EVENT_LOG_v1 lines.
struct LogFacts {
  int flushes = 0;      // finished
  int compactions = 0;  // finished
  std::set<long> open_flushes, open_compactions;
  bool recovering = false;  // recovery_started (WAL replay and its flush), not finished
};

LogFacts ParseLog(const std::string& text) {
  LogFacts f;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find("EVENT_LOG_v1") == std::string::npos) continue;
    const size_t ev = line.find("\"event\": \"");
    if (ev == std::string::npos) continue;
    const size_t ev_begin = ev + 10;
    const std::string event = line.substr(ev_begin, line.find('"', ev_begin) - ev_begin);
    long job = -1;
    const size_t jb = line.find("\"job\": ");
    if (jb != std::string::npos) job = std::strtol(line.c_str() + jb + 7, nullptr, 10);
    if (event == "flush_started") {
      f.open_flushes.insert(job);
    } else if (event == "flush_finished") {
      if (f.open_flushes.erase(job) > 0) ++f.flushes;
    } else if (event == "compaction_started") {
      f.open_compactions.insert(job);
    } else if (event == "compaction_finished") {
      if (f.open_compactions.erase(job) > 0) ++f.compactions;
    } else if (event == "recovery_started") {
      f.recovering = true;
    } else if (event == "recovery_finished") {
      f.recovering = false;
    }
  }
  return f;
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// Why the child stopped reporting: kills it if it still runs, then its exit and stderr.
std::string Stopped(ChildProcess& child) {
  const bool timed_out = child.timed_out();
  child.Kill();
  const int status = child.Wait();
  return std::string(timed_out ? "the child stopped reporting (timeout)"
                               : "the child exited by itself before it was killed") +
         ": it " + DescribeStatus(status) + "; stderr: \"" + child.StderrText() + "\"";
}

struct Totals {
  uint64_t cycles = 0;
  uint64_t killed_running = 0;
  uint64_t killed_during_open = 0;    // no READY: inside Open (and its WAL recovery)
  uint64_t killed_during_replay = 0;  // of which inside RocksDB's WAL replay / recovery flush
  uint64_t killed_during_flush = 0;   // a flush_started without flush_finished
  uint64_t killed_during_compaction = 0;
  uint64_t clean_exits = 0;
  uint64_t flushes = 0;  // finished in children that were then killed or exited
  uint64_t compactions = 0;
  uint64_t acks = 0;              // A lines (new appends acknowledged)
  uint64_t acknowledged = 0;      // distinct keys acknowledged (A, or R of a key in flight)
  uint64_t resent_in_flight = 0;  // keys in flight at a kill, re-sent by the next child
  uint64_t survived_unacked = 0;  // of which the store already had
  uint64_t resent_acked = 0;      // acknowledged keys re-sent (deduplicated)
};

struct RunConfig {
  uint64_t seed = 0;
  uint64_t cycles = 0;
  std::vector<std::string> child_env;  // e.g. a planted bug
  bool print_cycles = false;
  // Every cycle kills a running child after 100..399 acks (the planted-bug test: each
  // cycle then has keys in flight).
  bool only_running = false;
};

// How a cycle ends: a kill at a seeded delay into Open, a kill at a seeded point of RocksDB's
// WAL replay (watched in its LOG), a kill after a seeded number of acks, or no kill.
enum class Mode { kDuringOpen, kDuringReplay, kRunning, kClean };

// Runs the cycles and the final re-send; returns the first error ("" when none).
std::string RunCrashCycles(const RunConfig& cfg, Totals* t) {
  std::mt19937_64 rng(cfg.seed);
  TempDir dir;
  const std::string db = dir.Sub("db");
  ScratchDir scratch(dir.path());
  const std::string copy = scratch.path() + "/copy";
  const std::string resend_file = dir.Sub("resend");
  const std::string stderr_file = dir.Sub("stderr");
  Model m;
  double open_ms_estimate = 200;  // refined from every Open seen whole
  // Watches the store directory (the LOG) for the kills inside WAL replay.
  std::error_code mkdir_ec;
  std::filesystem::create_directories(db, mkdir_ec);
  const int inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (inotify_fd < 0 || inotify_add_watch(inotify_fd, db.c_str(), IN_MODIFY | IN_CREATE) < 0) {
    return "inotify on " + db + ": " + std::strerror(errno);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } inotify_closer{inotify_fd};

  for (uint64_t cycle = 0; cycle <= cfg.cycles; ++cycle) {
    const bool last = cycle == cfg.cycles;  // the final re-send
    const uint64_t roll = rng() % 100;
    const Mode mode = last               ? Mode::kClean
                      : cfg.only_running ? Mode::kRunning
                      : roll < 15        ? Mode::kDuringOpen
                      : roll < 30        ? Mode::kDuringReplay
                      : roll < 34        ? Mode::kClean
                                         : Mode::kRunning;
    const double open_fraction = static_cast<double>(rng() % 1000) / 1000.0;
    const int replay_flushes = static_cast<int>(rng() % 5);  // recovery SSTs before the kill
    const int kill_after = cfg.only_running ? 100 + static_cast<int>(rng() % 300)
                                            : static_cast<int>(rng() % kMaxAcksBeforeKill);
    const long clean_max = last ? 0 : 1 + static_cast<long>(rng() % 40);
    const std::string at = "cycle " + std::to_string(cycle) + ": ";

    // The re-sends: every key in flight, then a few acknowledged keys.
    ChildReport report;
    {
      std::ofstream out(resend_file, std::ios::trunc);
      for (const std::string& k : m.in_flight) out << k << "\n";
      for (int i = 0; i < kResendAcked && !m.acked_order.empty(); ++i) {
        const std::string& k = m.acked_order[rng() % m.acked_order.size()];
        if (report.resend.count(k) == 0) out << k << "\n";
        report.resend.insert(k);
      }
      if (!out) return at + "cannot write " + resend_file;
    }
    for (const std::string& k : m.in_flight) report.resend.insert(k);
    report.resend_left = report.resend;
    const size_t resent_acked = report.resend.size() - m.in_flight.size();

    std::vector<std::string> argv = {CrashChildPath(),
                                     "--dir=" + db,
                                     "--cycle=" + std::to_string(cycle),
                                     "--threads=" + std::to_string(kThreads),
                                     "--window=" + std::to_string(kWindow),
                                     "--users=" + std::to_string(kUsers),
                                     "--cap=" + std::to_string(kCap),
                                     "--write-buffer=" + std::to_string(kWriteBuffer),
                                     "--body-bytes=" + std::to_string(kBodyBytes),
                                     "--resend-file=" + resend_file,
                                     "--report-open",
                                     "--report-submits"};
    if (mode == Mode::kClean) argv.push_back("--max=" + std::to_string(clean_max));
    const LogMark log_mark = MarkLog(db);
    ChildProcess child(argv, cfg.child_env, stderr_file);
    auto apply = [&](const std::string& line) { return Apply(line, &m, &report); };

    // The handshake: nothing is killed before the child runs.
    std::optional<std::string> first = child.ReadLine(kReadTimeoutMs);
    if (!first || first->rfind("OPENING", 0) != 0) {
      return at + "no OPENING from the child (" + (first ? *first : Stopped(child)) + ")";
    }
    if (std::string e = apply(*first); !e.empty()) return at + e;
    const Clock::time_point opening_at = Clock::now();

    if (mode == Mode::kClean) {
      while (std::optional<std::string> line = child.ReadLine(kReadTimeoutMs)) {
        if (std::string e = apply(*line); !e.empty()) return at + e;
      }
      if (child.timed_out()) return at + Stopped(child);
      const int status = child.Wait();
      const std::string err = child.StderrText();
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !err.empty() || !report.done) {
        return at +
               "a child that exits by itself must exit 0 after DONE with nothing on "
               "stderr; it " +
               DescribeStatus(status) + (report.done ? "" : " without DONE") + ", stderr: \"" +
               err + "\"";
      }
      if (!report.resend_left.empty()) {
        return at + "the child exited without re-sending " +
               std::to_string(report.resend_left.size()) + " keys, e.g. " +
               *report.resend_left.begin();
      }
      ++t->clean_exits;
    } else {
      if (mode == Mode::kDuringOpen) {
        // Kill at a seeded point of an Open as long as the ones seen so far.
        const auto deadline = opening_at + std::chrono::microseconds(static_cast<int64_t>(
                                               open_fraction * 1.25 * open_ms_estimate * 1000));
        for (;;) {
          const int64_t left =
              std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())
                  .count();
          if (left <= 0) break;
          std::optional<std::string> line = child.ReadLine(left);
          if (!line) {
            if (child.timed_out()) break;  // the deadline: kill now
            return at + Stopped(child);
          }
          if (std::string e = apply(*line); !e.empty()) return at + e;
        }
      } else if (mode == Mode::kDuringReplay) {
        // Kill after RocksDB logged recovery_started and then `replay_flushes` recovery
        // SSTs (table_file_creation), or recovery_finished, whichever comes first; or, when
        // the child reports READY first, at once.
        LogFollower follower(db + "/LOG", log_mark.exists ? log_mark.size : 0);
        bool replaying = false;
        int created = 0;
        bool kill_now = false;
        while (!kill_now && !report.ready) {
          bool log_changed = false;
          std::optional<std::string> line =
              child.ReadLineOr(inotify_fd, kReadTimeoutMs, &log_changed);
          if (line) {
            if (std::string e = apply(*line); !e.empty()) return at + e;
            continue;
          }
          if (!log_changed) return at + Stopped(child);
          char events[4096];
          while (read(inotify_fd, events, sizeof events) > 0) {
          }
          for (const std::string& l : follower.NewLines()) {
            if (l.find("EVENT_LOG_v1") == std::string::npos) continue;
            if (l.find("\"event\": \"recovery_started\"") != std::string::npos) replaying = true;
            if (!replaying) continue;
            if (l.find("\"event\": \"table_file_creation\"") != std::string::npos) ++created;
            if (l.find("\"event\": \"recovery_finished\"") != std::string::npos ||
                created >= replay_flushes) {
              kill_now = true;
              break;
            }
          }
        }
      } else {
        while (!(report.ready && report.acks >= kill_after)) {
          std::optional<std::string> line = child.ReadLine(kReadTimeoutMs);
          if (!line) return at + Stopped(child);
          if (std::string e = apply(*line); !e.empty()) return at + e;
          if (line->rfind("READY", 0) == 0) {
            const double ms =
                std::chrono::duration<double, std::milli>(Clock::now() - opening_at).count();
            open_ms_estimate = 0.7 * open_ms_estimate + 0.3 * ms;
          }
        }
      }
      child.Kill();
      const int status = child.Wait();
      if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
        return at + "the child did not die of our SIGKILL: it " + DescribeStatus(status) +
               "; stderr: \"" + child.StderrText() + "\"";
      }
      // Reports written before the kill are acknowledgements too.
      while (std::optional<std::string> line = child.ReadLine(kReadTimeoutMs)) {
        if (std::string e = apply(*line); !e.empty()) return at + e;
      }
      if (const std::string err = child.StderrText(); !err.empty()) {
        return at + "the child wrote to stderr before it was killed: \"" + err + "\"";
      }
      if (report.ready) {
        ++t->killed_running;
      } else {
        ++t->killed_during_open;
      }
    }

    const LogFacts log = ParseLog(LogSince(db, log_mark));
    const bool killed = mode != Mode::kClean;
    if (killed && !report.ready && log.recovering) ++t->killed_during_replay;
    if (killed && !log.open_flushes.empty()) ++t->killed_during_flush;
    if (killed && !log.open_compactions.empty()) ++t->killed_during_compaction;
    t->flushes += static_cast<uint64_t>(log.flushes);
    t->compactions += static_cast<uint64_t>(log.compactions);
    t->acks += static_cast<uint64_t>(report.acks);
    t->acknowledged = m.acked.size();
    t->resent_in_flight += static_cast<uint64_t>(report.resent_in_flight);
    t->survived_unacked += static_cast<uint64_t>(report.survived_unacked);
    if (report.ready && report.resend_left.empty()) t->resent_acked += resent_acked;
    if (!last) ++t->cycles;
    if (cfg.print_cycles) {
      std::printf("cycle %llu: %s%s, %d acks, %d re-sent in flight%s%s%s\n",
                  static_cast<unsigned long long>(cycle),
                  mode == Mode::kClean ? "exited"
                  : report.ready       ? "killed running"
                                       : "killed during Open",
                  killed && !report.ready && log.recovering ? " (WAL replay)" : "", report.acks,
                  report.resent_in_flight,
                  killed && !log.open_flushes.empty() ? ", during a flush" : "",
                  killed && !log.open_compactions.empty() ? ", during a compaction" : "",
                  last ? " (final re-send)" : "");
    }

    // Check a copy: the next child recovers the crashed directory itself.
    std::error_code ec;
    std::filesystem::remove_all(copy, ec);
    std::filesystem::copy(db, copy, std::filesystem::copy_options::recursive, ec);
    if (ec) return at + "cannot copy " + db + ": " + ec.message();
    if (std::string e = Verify(copy, m, last); !e.empty()) return at + e;
  }
  return "";
}

// The run as JSON in $IRIS_CHAOS_REPORT_DIR/chaos-store-crash.json (when set), for the
// summary table of `make chaos` (tests/chaos/harness/chaos_summary.py).
void WriteReport(const RunConfig& cfg, const Totals& t, const std::string& error) {
  const char* dir = std::getenv("IRIS_CHAOS_REPORT_DIR");
  if (dir == nullptr || *dir == '\0') return;
  const std::string path = std::string(dir) + "/chaos-store-crash.json";
  std::ofstream out(path);
  const char* n = error.empty() ? "0" : "null";  // unknown after the first failure
  out << "{\"test\":\"store-crash\",\"seed\":" << cfg.seed << ",\"cycles\":" << t.cycles
      << ",\"acknowledged\":" << t.acknowledged << ",\"lost\":" << n << ",\"duplicated\":" << n
      << ",\"reordered\":" << n << ",\"unexpected\":" << n
      << ",\"valid\":" << (error.empty() ? "true" : "false")
      << ",\"killed_running\":" << t.killed_running
      << ",\"killed_during_open\":" << t.killed_during_open
      << ",\"killed_during_wal_replay\":" << t.killed_during_replay
      << ",\"killed_during_flush\":" << t.killed_during_flush
      << ",\"killed_during_compaction\":" << t.killed_during_compaction
      << ",\"clean_exits\":" << t.clean_exits << ",\"resent_in_flight\":" << t.resent_in_flight
      << ",\"survived_unacked\":" << t.survived_unacked << "}\n";
  if (!out) ADD_FAILURE() << "cannot write the chaos report " << path;
}

TEST(CrashTest, AcknowledgedMessagesSurviveSigkillExactlyOnce) {
  RunConfig cfg;
  cfg.seed = CrashSeed();
  cfg.cycles = CrashCycles();
  cfg.print_cycles = std::getenv("IRIS_CRASH_VERBOSE") != nullptr;
  const std::string replay = "IRIS_CRASH_SEED=" + std::to_string(cfg.seed) +
                             " IRIS_CRASH_CYCLES=" + std::to_string(cfg.cycles) + " " + SelfPath() +
                             " --gtest_filter=CrashTest.AcknowledgedMessages*";
  std::printf("crash test: seed=%llu cycles=%llu child=%s\nreplay: %s\n",
              static_cast<unsigned long long>(cfg.seed),
              static_cast<unsigned long long>(cfg.cycles), CrashChildPath().c_str(),
              replay.c_str());
  std::fflush(stdout);
  SCOPED_TRACE("replay: " + replay);
  Totals t;
  const std::string error = RunCrashCycles(cfg, &t);
  std::printf(
      "crash test: %llu cycles: %llu kills while running, %llu during Open (%llu in WAL "
      "replay), %llu clean exits; %llu kills during a flush, %llu during a compaction (of "
      "%llu flushes, %llu compactions finished); %llu keys acknowledged, %llu in flight at a "
      "kill re-sent (%llu had survived), %llu acknowledged keys re-sent; %s\n",
      static_cast<unsigned long long>(t.cycles), static_cast<unsigned long long>(t.killed_running),
      static_cast<unsigned long long>(t.killed_during_open),
      static_cast<unsigned long long>(t.killed_during_replay),
      static_cast<unsigned long long>(t.clean_exits),
      static_cast<unsigned long long>(t.killed_during_flush),
      static_cast<unsigned long long>(t.killed_during_compaction),
      static_cast<unsigned long long>(t.flushes), static_cast<unsigned long long>(t.compactions),
      static_cast<unsigned long long>(t.acknowledged),
      static_cast<unsigned long long>(t.resent_in_flight),
      static_cast<unsigned long long>(t.survived_unacked),
      static_cast<unsigned long long>(t.resent_acked),
      error.empty() ? "lost 0, duplicated 0, unexpected 0" : "FAILED");
  WriteReport(cfg, t, error);
  ASSERT_TRUE(error.empty()) << error;
  // The run really crashed where it should.
  EXPECT_GE(t.killed_during_open, std::max<uint64_t>(1, t.cycles / 20))
      << "too few kills landed inside Open / recovery";
  EXPECT_GT(t.killed_during_flush + t.killed_during_compaction, 0u)
      << "no kill landed during a flush or a compaction";
  EXPECT_GT(t.resent_in_flight, 0u) << "no key in flight at a kill was re-sent";
  EXPECT_GT(t.acks, t.cycles * 10) << "the test did not append under fire";
}

// Tests of the test: a bug planted in the child (IRIS_CRASH_CHILD_MUTATION, crash_child.cc)
// must make the run fail with the check that is meant to catch it.
TEST(CrashTest, PlantedBugsAreCaught) {
  struct Planted {
    const char* mutation;
    uint64_t cycles;                     // the run stops at the first error
    std::vector<const char*> caught_by;  // any of these in the error
  };
  const std::vector<Planted> planted = {
      {"silent-open", 2, {"no OPENING from the child"}},
      {"bad-open", 2, {"it exited with status 1; stderr: \"open: "}},
      {"exit-early",
       2,
       {"did not die of our SIGKILL: it exited with status 0",
        "exited by itself before it was killed: it exited with status 0"}},
      {"stderr", 2, {"the child wrote to stderr before it was killed: \"warning"}},
      {"stderr-at-exit", 2, {"with nothing on stderr; it exited with status 0, stderr: \"warning"}},
      {"skip-resend", 2, {"before every key in flight at the last kill was re-sent"}},
      {"resend-new-key", 2, {"not deduplicated to its first id", "stored twice"}},
      // Caught only once a re-sent key had not survived the kill (else it deduplicates).
      {"resend-other-body", 8, {"stored with other content than it was sent with"}},
  };
  const uint64_t seed = CrashSeed();
  std::printf("planted bugs: seed=%llu (IRIS_CRASH_SEED replays)\n",
              static_cast<unsigned long long>(seed));
  for (const Planted& p : planted) {
    RunConfig cfg;
    cfg.seed = seed;
    cfg.cycles = p.cycles;
    cfg.only_running = true;
    cfg.print_cycles = std::getenv("IRIS_CRASH_VERBOSE") != nullptr;
    cfg.child_env = {std::string("IRIS_CRASH_CHILD_MUTATION=") + p.mutation};
    Totals t;
    const std::string error = RunCrashCycles(cfg, &t);
    std::printf("planted bug %s: %s\n", p.mutation, error.empty() ? "NOT CAUGHT" : error.c_str());
    bool caught = false;
    for (const char* c : p.caught_by) caught = caught || error.find(c) != std::string::npos;
    EXPECT_TRUE(caught) << "planted bug " << p.mutation << " was not caught as expected (seed "
                        << seed << "): \"" << error << "\"";
  }
}

}  // namespace
}  // namespace iris::store
