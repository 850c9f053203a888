// iris_store_crash_child: a real process that appends to an InboxStore from several threads
// and reports every acknowledged append on stdout, for the crash, power-loss and clock-skew
// tests.
//
//   iris_store_crash_child --dir=D [--cycle=N] [--threads=T] [--window=W] [--users=U]
//                          [--cap=C] [--resend=R] [--max=M] [--write-buffer=B]
//                          [--body-bytes=L] [--resend-file=F] [--report-open]
//                          [--report-submits]
//
// Output, one line per event (each line is one write(2) of < PIPE_BUF bytes, so lines from
// different threads never interleave):
//   OPENING <pid>                            before Open (--report-open): the child runs
//   READY <wall ms> <last id>                after Open
//   S <key>                                  before the append of `key` is handed to the
//                                            store (--report-submits): from here until its
//                                            R or A line the key is "in flight"
//   R <key> <recipient> <id> <dup> <ms>      a re-send: first every key of --resend-file (in
//                                            the file's order, all in flight at once), then
//                                            key "c<N-1>-t<t>-s<s>", s < R, one at a time
//   A <key> <recipient> <id> <dup> <ms>      an acknowledged append of key "c<N>-t<t>-s<s>"
//   DONE                                     after M appends per thread (then exits 0)
// Each thread keeps W appends in flight. The message of key "c<n>-t<t>-s<s>" comes from
// sender t + 1, goes to inbox 1 + (t + s) % U and its body is CrashBodyOf(key, L)
// (crash_protocol.h): the key, then, when L exceeds it, '|' and filler derived from the key
// up to L bytes. A re-send is the
// same append again: same sender, idempotency key, inbox and body. Without --max it runs
// until killed. Exits when stdout is closed (EPIPE). --write-buffer sets
// StoreOptions::write_buffer_bytes (default 1 MiB; RocksDB's floor is 64 KiB).
//
// IRIS_CRASH_CHILD_MUTATION (tests of the tests, docs/reliability.md "Store crash test")
// plants one bug: skip-resend (the --resend-file keys are not re-sent), resend-new-key (they
// are re-sent under a new idempotency key), resend-other-body (with another body),
// exit-early (exits 0 by itself after 50 acknowledgements), stderr (writes a warning to
// stderr after READY), stderr-at-exit (before DONE), bad-open (Open fails: invalid options),
// silent-open (no OPENING line).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "crash_protocol.h"
#include "store/inbox_store.h"

namespace {

struct Args {
  std::string dir;
  int cycle = 0;
  int threads = 4;
  int window = 8;
  int users = 8;
  uint32_t cap = 10000;
  int resend = 0;
  long max = -1;
  size_t write_buffer = 1u << 20;
  size_t body_bytes = 0;
  std::string resend_file;
  bool report_open = false;
  bool report_submits = false;
};

bool Flag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (Flag(argv[i], "--dir", &v)) {
      a.dir = v;
    } else if (Flag(argv[i], "--cycle", &v)) {
      a.cycle = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--threads", &v)) {
      a.threads = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--window", &v)) {
      a.window = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--users", &v)) {
      a.users = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--cap", &v)) {
      a.cap = static_cast<uint32_t>(std::atoi(v.c_str()));
    } else if (Flag(argv[i], "--resend", &v)) {
      a.resend = std::atoi(v.c_str());
    } else if (Flag(argv[i], "--max", &v)) {
      a.max = std::atol(v.c_str());
    } else if (Flag(argv[i], "--write-buffer", &v)) {
      a.write_buffer = std::strtoull(v.c_str(), nullptr, 10);
    } else if (Flag(argv[i], "--body-bytes", &v)) {
      a.body_bytes = std::strtoull(v.c_str(), nullptr, 10);
    } else if (Flag(argv[i], "--resend-file", &v)) {
      a.resend_file = v;
    } else if (std::strcmp(argv[i], "--report-open") == 0) {
      a.report_open = true;
    } else if (std::strcmp(argv[i], "--report-submits") == 0) {
      a.report_submits = true;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      std::exit(2);
    }
  }
  if (a.dir.empty()) {
    std::fprintf(stderr, "--dir is required\n");
    std::exit(2);
  }
  if (a.users <= 0 || a.threads <= 0 || a.window <= 0) {
    std::fprintf(stderr, "--users, --threads and --window must be positive\n");
    std::exit(2);
  }
  return a;
}

std::string Mutation() {
  const char* m = std::getenv("IRIS_CRASH_CHILD_MUTATION");
  return m != nullptr ? m : "";
}

void Emit(const std::string& line) {
  const std::string l = line + "\n";
  if (::write(STDOUT_FILENO, l.data(), l.size()) != static_cast<ssize_t>(l.size())) {
    std::_Exit(3);  // the parent went away
  }
}

using iris::store::testing::CrashBodyOf;
using iris::store::testing::CrashKeyOf;
using iris::store::testing::ParseCrashKey;

uint64_t RecipientOf(const Args& a, int thread, long seq) {
  return iris::store::testing::CrashRecipientOf(a.users, thread, seq);
}

std::vector<iris::v1::Envelope> EnvelopeFor(uint64_t recipient, const std::string& body,
                                            uint64_t sender) {
  std::vector<iris::v1::Envelope> v(1);
  v[0].set_sender(sender);
  v[0].set_recipient(recipient);
  v[0].set_body(body);
  return v;
}

std::string Report(char kind, const std::string& key, uint64_t recipient,
                   const iris::store::AppendOutcome& o) {
  return std::string(1, kind) + " " + key + " " + std::to_string(recipient) + " " +
         std::to_string(o.message_id) + " " + (o.duplicate ? "1" : "0") + " " +
         std::to_string(o.accepted_at_ms);
}

// Re-sends every key of `path` at once (AppendAsync: they are in flight together, as they
// were when the previous child was killed) and waits for all of them.
bool ResendFile(iris::store::InboxStore& store, const Args& args, const std::string& mutation) {
  std::ifstream in(args.resend_file);
  if (!in) {
    std::fprintf(stderr, "cannot read --resend-file %s\n", args.resend_file.c_str());
    return false;
  }
  std::vector<std::string> keys;
  for (std::string key; std::getline(in, key);) {
    if (!key.empty()) keys.push_back(key);
  }
  if (mutation == "skip-resend") return true;
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  bool failed = false;
  for (const std::string& key : keys) {
    int t = 0;
    long s = 0;
    if (!ParseCrashKey(key, &t, &s)) {
      std::fprintf(stderr, "--resend-file: bad key \"%s\"\n", key.c_str());
      return false;
    }
    const uint64_t to = RecipientOf(args, t, s);
    std::string body = CrashBodyOf(key, args.body_bytes);
    if (mutation == "resend-other-body") body += "~";
    const std::string idem = mutation == "resend-new-key" ? key + "'" : key;
    if (args.report_submits) Emit("S " + key);
    store.AppendAsync(static_cast<uint64_t>(t) + 1, idem, EnvelopeFor(to, body, t + 1),
                      [&, key, to](iris::Result<iris::store::AppendOutcome> r) {
                        if (r.ok()) {
                          Emit(Report('R', key, to, *r));
                        } else {
                          std::fprintf(stderr, "resend %s: %s\n", key.c_str(),
                                       r.status().ToString().c_str());
                        }
                        std::lock_guard<std::mutex> lock(mu);
                        if (!r.ok()) failed = true;
                        ++done;
                        cv.notify_all();
                      });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == keys.size(); });
  return !failed;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const Args args = Parse(argc, argv);
  const std::string mutation = Mutation();
  if (args.report_open && mutation != "silent-open") Emit("OPENING " + std::to_string(getpid()));
  iris::store::StoreOptions o;
  o.path = args.dir;
  o.inbox_cap = args.cap;
  o.write_buffer_bytes = args.write_buffer;
  o.block_cache_bytes = 4u << 20;
  o.dedup_bloom_keys_per_day = 100'000;
  o.archive_chunk = 64;
  if (mutation == "bad-open") o.vnodes = 0;
  auto opened = iris::store::InboxStore::Open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<iris::store::InboxStore> store = std::move(opened).value();
  Emit("READY " + std::to_string(iris::SystemClock::Instance().WallMillis()) + " " +
       std::to_string(store->LastId()));

  if (mutation == "stderr") std::fprintf(stderr, "warning: planted by the stderr mutation\n");

  // The keys in flight when the previous child was killed, first.
  if (!args.resend_file.empty() && !ResendFile(*store, args, mutation)) return 1;

  // Re-sends of the previous cycle's first keys: deduplicated against what survived.
  for (int t = 0; t < args.threads && args.cycle > 0; ++t) {
    for (long s = 0; s < args.resend; ++s) {
      const std::string key = CrashKeyOf(args.cycle - 1, t, s);
      const uint64_t to = RecipientOf(args, t, s);
      if (args.report_submits) Emit("S " + key);
      auto r = store->Append(static_cast<uint64_t>(t) + 1, key,
                             EnvelopeFor(to, CrashBodyOf(key, args.body_bytes), t + 1));
      if (!r.ok()) {
        std::fprintf(stderr, "resend: %s\n", r.status().ToString().c_str());
        return 1;
      }
      Emit(Report('R', key, to, *r));
    }
  }

  std::atomic<long> acks{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < args.threads; ++t) {
    threads.emplace_back([&, t] {
      std::mutex mu;
      std::condition_variable cv;
      int in_flight = 0;
      bool failed = false;
      for (long s = 0; args.max < 0 || s < args.max; ++s) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return in_flight < args.window || failed; });
          if (failed) std::_Exit(1);
          ++in_flight;
        }
        const std::string key = CrashKeyOf(args.cycle, t, s);
        const uint64_t to = RecipientOf(args, t, s);
        if (args.report_submits) Emit("S " + key);
        store->AppendAsync(static_cast<uint64_t>(t) + 1, key,
                           EnvelopeFor(to, CrashBodyOf(key, args.body_bytes), t + 1),
                           [&, key, to](iris::Result<iris::store::AppendOutcome> r) {
                             if (r.ok()) {
                               Emit(Report('A', key, to, *r));
                               if (mutation == "exit-early" && ++acks == 50) std::_Exit(0);
                             } else {
                               std::fprintf(stderr, "append %s: %s\n", key.c_str(),
                                            r.status().ToString().c_str());
                             }
                             std::lock_guard<std::mutex> lock(mu);
                             if (!r.ok()) failed = true;
                             --in_flight;
                             cv.notify_all();
                           });
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return in_flight == 0; });
    });
  }
  for (auto& th : threads) th.join();
  store->Stop();
  if (mutation == "stderr-at-exit") {
    std::fprintf(stderr, "warning: planted by the stderr-at-exit mutation\n");
  }
  Emit("DONE");
  return 0;
}
