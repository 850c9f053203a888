// iris_store_crash_child: a real process that appends to an InboxStore from several threads
// and reports every acknowledged append on stdout, for the crash and clock-skew tests.
//
//   iris_store_crash_child --dir=D [--cycle=N] [--threads=T] [--window=W] [--users=U]
//                          [--cap=C] [--resend=R] [--max=M]
//
// Output, one line per event (each line is one write(2) of < PIPE_BUF bytes, so lines from
// different threads never interleave):
//   READY <wall ms> <last id>                after Open
//   R <key> <recipient> <id> <dup> <ms>      a re-send of key "c<N-1>-t<t>-s<s>", s < R
//   A <key> <recipient> <id> <dup> <ms>      an acknowledged append of key "c<N>-t<t>-s<s>"
//   DONE                                     after M appends per thread (then exits 0)
// Each thread keeps W appends in flight; the message of key k goes to inbox
// 1 + (t + s) % U and its body is k. Without --max it runs until killed. Exits when stdout
// is closed (EPIPE).
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
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
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      std::exit(2);
    }
  }
  if (a.dir.empty()) {
    std::fprintf(stderr, "--dir is required\n");
    std::exit(2);
  }
  return a;
}

void Emit(const std::string& line) {
  const std::string l = line + "\n";
  if (::write(STDOUT_FILENO, l.data(), l.size()) != static_cast<ssize_t>(l.size())) {
    std::_Exit(3);  // the parent went away
  }
}

std::string KeyOf(int cycle, int thread, long seq) {
  return "c" + std::to_string(cycle) + "-t" + std::to_string(thread) + "-s" + std::to_string(seq);
}

uint64_t RecipientOf(const Args& a, int thread, long seq) {
  return 1 + static_cast<uint64_t>((thread + seq) % a.users);
}

std::vector<iris::v1::Envelope> EnvelopeFor(uint64_t recipient, const std::string& key,
                                            uint64_t sender) {
  std::vector<iris::v1::Envelope> v(1);
  v[0].set_sender(sender);
  v[0].set_recipient(recipient);
  v[0].set_body(key);
  return v;
}

std::string Report(char kind, const std::string& key, uint64_t recipient,
                   const iris::store::AppendOutcome& o) {
  return std::string(1, kind) + " " + key + " " + std::to_string(recipient) + " " +
         std::to_string(o.message_id) + " " + (o.duplicate ? "1" : "0") + " " +
         std::to_string(o.accepted_at_ms);
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const Args args = Parse(argc, argv);
  iris::store::StoreOptions o;
  o.path = args.dir;
  o.inbox_cap = args.cap;
  o.write_buffer_bytes = 1u << 20;
  o.block_cache_bytes = 4u << 20;
  o.dedup_bloom_keys_per_day = 100'000;
  o.archive_chunk = 64;
  auto opened = iris::store::InboxStore::Open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<iris::store::InboxStore> store = std::move(opened).value();
  Emit("READY " + std::to_string(iris::SystemClock::Instance().WallMillis()) + " " +
       std::to_string(store->LastId()));

  // Re-sends of the previous cycle's first keys: deduplicated against what survived.
  for (int t = 0; t < args.threads && args.cycle > 0; ++t) {
    for (long s = 0; s < args.resend; ++s) {
      const std::string key = KeyOf(args.cycle - 1, t, s);
      const uint64_t to = RecipientOf(args, t, s);
      auto r = store->Append(static_cast<uint64_t>(t) + 1, key, EnvelopeFor(to, key, t + 1));
      if (!r.ok()) {
        std::fprintf(stderr, "resend: %s\n", r.status().ToString().c_str());
        return 1;
      }
      Emit(Report('R', key, to, *r));
    }
  }

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
        const std::string key = KeyOf(args.cycle, t, s);
        const uint64_t to = RecipientOf(args, t, s);
        store->AppendAsync(static_cast<uint64_t>(t) + 1, key, EnvelopeFor(to, key, t + 1),
                           [&, key, to](iris::Result<iris::store::AppendOutcome> r) {
                             if (r.ok()) {
                               Emit(Report('A', key, to, *r));
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
  Emit("DONE");
  return 0;
}
