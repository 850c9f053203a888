// Storage engine benchmarks (issue 3; figures in docs/performance.md, "Storage").
//
//   fdatasync         the raw fdatasync rate of the disk under the bench directory: append
//                     200 bytes, fdatasync, repeat (the physical bound of durable writes)
//   RocksDbSyncPut    plain RocksDB Put of 200 bytes with sync=true, N threads (what the
//                     disk gives without the store's own batching)
//   DurableAppend     InboxStore::Append (blocking) of a 200-byte envelope with a 16-byte
//                     idempotency key, N writer threads, each waiting for its ack
//   PipelinedAppend   InboxStore::AppendAsync, N writers each keeping `window` appends in
//                     flight (a connection pipelining SENDs)
//   PacedAppend       open loop: N writers together offer `rate` appends/s on a fixed
//                     schedule (each wakes every 0.5 ms and issues what is due); latency is
//                     measured from the scheduled moment, so a store that falls behind pays
//                     for the backlog (no coordinated omission). This is "P99 of a single
//                     durable append at that load"; the closed-loop PipelinedAppend runs
//                     measure saturation, where latency is in-flight / throughput
//   Scan              reading a 10,000-message inbox in pages of 256
//   FdatasyncAfter    the fdatasync rate again, at the end (a shared disk changes)
//
// Every append benchmark reports appends/s, the P50/P99 latency from call to durable ack,
// appends per synced batch and the P50/P99 of the synced RocksDB write itself
// (db_write_latency). The directory is $IRIS_BENCH_DIR, else bench-data/ beside the binary
// (never /tmp, which may be a tmpfs where fdatasync costs nothing); its file system type is
// printed in the context. $IRIS_BENCH_SCALE multiplies the operation counts (default 1);
// $IRIS_BENCH_KEEP=1 keeps the databases afterwards.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "store/inbox_store.h"

namespace iris::store {
namespace {

using Clock = std::chrono::steady_clock;

std::string BenchRoot() {
  static const std::string root = [] {
    const char* env = std::getenv("IRIS_BENCH_DIR");
    std::string r;
    if (env != nullptr && *env != '\0') {
      r = env;
    } else {
      r = (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "bench-data").string();
    }
    std::filesystem::create_directories(r);
    return r;
  }();
  return root;
}

std::string FreshDir(const std::string& name) {
  const std::string d = BenchRoot() + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

double Scale() {
  const char* env = std::getenv("IRIS_BENCH_SCALE");
  return env != nullptr ? std::max(0.01, std::atof(env)) : 1.0;
}

std::string FsType(const std::string& path) {
  struct statfs s {};
  if (statfs(path.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0x01021994: return "tmpfs";
    case 0xEF53: return "ext2/3/4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x794c7630: return "overlayfs";
    default: return "0x" + std::to_string(static_cast<unsigned long>(s.f_type));
  }
}

double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]);
}

// 200 bytes that look like what the store really holds, ciphertext: incompressible. Drawn
// from 4,096 bodies generated once (seeded): generating 200 random bytes per append cost
// the load generator ~6 % of the machine's CPU at 100,000 appends/s, taken from the store.
std::string Body() {
  static const std::vector<std::string> pool = [] {
    std::mt19937_64 rng(0x1515);
    std::vector<std::string> bodies(4096, std::string(200, '\0'));
    for (std::string& b : bodies) {
      for (size_t i = 0; i < b.size(); i += 8) {
        const uint64_t r = rng();
        std::memcpy(b.data() + i, &r, std::min<size_t>(8, b.size() - i));
      }
    }
    return bodies;
  }();
  thread_local size_t next = 0;
  return pool[next++ % pool.size()];
}

// A 16-byte idempotency key that, like a UUIDv7, grows with time for one sender.
std::string Key(uint64_t writer, uint64_t seq) {
  std::string k(16, '\0');
  for (int i = 0; i < 8; ++i) {
    k[i] = static_cast<char>(seq >> (56 - 8 * i));
    k[8 + i] = static_cast<char>(writer >> (56 - 8 * i));
  }
  return k;
}

// Seconds of CPU time the hypervisor took from this machine's vCPUs so far (the `steal`
// column of /proc/stat), and seconds of CPU this process used so far.
double StealSeconds() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  double v[8] = {};
  stat >> cpu;
  for (double& x : v) stat >> x;
  return v[7] / static_cast<double>(sysconf(_SC_CLK_TCK));
}
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// CPU seconds used so far by this process's threads named `name` (from /proc).
double ThreadCpuSeconds(const std::string& name) {
  double total = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string c;
    std::getline(comm, c);
    if (c != name) continue;
    std::ifstream stat(task.path() / "stat");
    std::string line;
    std::getline(stat, line);
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    std::istringstream in(line.substr(line.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && in >> field; ++i) {
      if (i == 14 || i == 15) ticks += std::stod(field);
    }
    total += ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return total;
}

// Collects the db_write_latency samples of one run.
struct WriteLatencies {
  std::mutex mu;
  std::vector<int64_t> nanos;
};

std::unique_ptr<InboxStore> OpenStore(const std::string& dir, WriteLatencies* lat) {
  StoreOptions o;
  o.path = dir;
  if (const char* wb = std::getenv("IRIS_BENCH_WRITE_BUFFER_MB")) {
    o.write_buffer_bytes = static_cast<size_t>(std::atoi(wb)) << 20;
  }
  o.write_latency_observer = [lat](int64_t n) {
    std::lock_guard<std::mutex> lock(lat->mu);
    lat->nanos.push_back(n);
  };
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  if (!s.ok()) {
    std::fprintf(stderr, "open: %s\n", s.status().ToString().c_str());
    std::abort();
  }
  return std::move(s).value();
}

void ReportAppendRun(benchmark::State& state, const InboxStore& store, uint64_t total,
                     double seconds, std::vector<int64_t>& latencies, WriteLatencies& lat) {
  const StoreStats st = store.Stats();
  state.counters["appends_per_s"] = static_cast<double>(total) / seconds;
  state.counters["commit_cpu_us_per_append"] =
      ThreadCpuSeconds("iris-commit") * 1e6 / static_cast<double>(total);
  state.counters["p50_us"] = Percentile(latencies, 0.50) / 1000.0;
  state.counters["p99_us"] = Percentile(latencies, 0.99) / 1000.0;
  state.counters["appends_per_sync"] =
      st.batches == 0 ? 0 : static_cast<double>(st.appends) / static_cast<double>(st.batches);
  std::lock_guard<std::mutex> lock(lat.mu);
  state.counters["db_write_p50_us"] = Percentile(lat.nanos, 0.50) / 1000.0;
  state.counters["db_write_p99_us"] = Percentile(lat.nanos, 0.99) / 1000.0;
  state.SetItemsProcessed(static_cast<int64_t>(total));
}

void BM_Fdatasync(benchmark::State& state) {
  const std::string dir = FreshDir("fdatasync");
  const std::string file = dir + "/probe";
  const int fd = ::open(file.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_APPEND, 0644);
  if (fd < 0) {
    state.SkipWithError("cannot create the probe file");
    return;
  }
  const std::string record = Body();
  for (auto _ : state) {
    if (::write(fd, record.data(), record.size()) != static_cast<ssize_t>(record.size()) ||
        ::fdatasync(fd) != 0) {
      state.SkipWithError("write/fdatasync failed");
      break;
    }
  }
  ::close(fd);
  state.counters["fdatasync_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(FsType(dir));
}
BENCHMARK(BM_Fdatasync)->MinTime(2.0)->UseRealTime();

void BM_RocksDbSyncPut(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const uint64_t per_thread =
      static_cast<uint64_t>(Scale() * (threads == 1 ? 5000 : 40000) / threads) + 1;
  for (auto _ : state) {
    const std::string dir = FreshDir("rocksdb-sync");
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    if (!rocksdb::DB::Open(o, dir, &raw).ok()) {
      state.SkipWithError("rocksdb open failed");
      return;
    }
    std::unique_ptr<rocksdb::DB> db(raw);
    const auto start = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        rocksdb::WriteOptions wo;
        wo.sync = true;
        const std::string value = Body();
        for (uint64_t i = 0; i < per_thread; ++i) {
          db->Put(wo, Key(static_cast<uint64_t>(t), i), value).PermitUncheckedError();
        }
      });
    }
    for (auto& th : ts) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(s);
    state.counters["writes_per_s"] = static_cast<double>(per_thread * threads) / s;
  }
}
BENCHMARK(BM_RocksDbSyncPut)->Arg(1)->Arg(16)->Arg(32)->Iterations(1)->UseManualTime();

// N writer threads, each blocking on its own Append: at most N appends per sync.
void BM_DurableAppend(benchmark::State& state) {
  const int writers = static_cast<int>(state.range(0));
  const uint64_t per_writer =
      static_cast<uint64_t>(Scale() * (writers == 1 ? 4000 : 60000) / writers) + 1;
  for (auto _ : state) {
    WriteLatencies lat;
    auto store = OpenStore(FreshDir("durable-append"), &lat);
    std::vector<std::vector<int64_t>> per(writers);
    const auto start = Clock::now();
    std::vector<std::thread> ts;
    for (int w = 0; w < writers; ++w) {
      ts.emplace_back([&, w] {
        std::mt19937_64 rng(static_cast<uint64_t>(w) + 1);
        per[w].reserve(per_writer);
        for (uint64_t i = 0; i < per_writer; ++i) {
          std::vector<v1::Envelope> env(1);
          env[0].set_sender(static_cast<uint64_t>(w) + 1);
          env[0].set_recipient(1 + rng() % 10'000);
          env[0].set_body(Body());
          const auto t0 = Clock::now();
          Result<AppendOutcome> r = store->Append(static_cast<uint64_t>(w) + 1,
                                                  Key(static_cast<uint64_t>(w), i), std::move(env));
          per[w].push_back(
              std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
          if (!r.ok()) std::abort();
        }
      });
    }
    for (auto& th : ts) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(s);
    std::vector<int64_t> all;
    for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
    ReportAppendRun(state, *store, per_writer * writers, s, all, lat);
  }
}
BENCHMARK(BM_DurableAppend)
    ->ArgName("writers")
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Iterations(1)
    ->UseManualTime();

// N writers, each keeping `window` appends in flight (AppendAsync).
void BM_PipelinedAppend(benchmark::State& state) {
  const int writers = static_cast<int>(state.range(0));
  const int window = static_cast<int>(state.range(1));
  const uint64_t per_writer = static_cast<uint64_t>(Scale() * 200'000 / writers) + 1;
  for (auto _ : state) {
    WriteLatencies lat;
    auto store = OpenStore(FreshDir("pipelined-append"), &lat);
    std::vector<std::vector<int64_t>> per(writers);
    const auto start = Clock::now();
    std::vector<std::thread> ts;
    for (int w = 0; w < writers; ++w) {
      ts.emplace_back([&, w] {
        // The callback (on the store's commit thread) only records its latency in this
        // append's own slot and wakes the writer when it was blocked on a full window, so
        // the figure is the store's, not the harness's.
        std::mutex mu;
        std::condition_variable cv;
        std::atomic<int> in_flight{0};
        std::atomic<uint64_t> completed{0};
        std::atomic<bool> waiting{false};
        std::vector<int64_t>& mine = per[w];
        mine.assign(per_writer, 0);
        std::mt19937_64 rng(static_cast<uint64_t>(w) + 1);
        auto wait_until = [&](auto&& ready) {
          if (ready()) return;
          std::unique_lock<std::mutex> lock(mu);
          waiting.store(true);
          cv.wait(lock, ready);
          waiting.store(false);
        };
        for (uint64_t i = 0; i < per_writer; ++i) {
          wait_until([&] { return in_flight.load() < window; });
          in_flight.fetch_add(1);
          std::vector<v1::Envelope> env(1);
          env[0].set_sender(static_cast<uint64_t>(w) + 1);
          env[0].set_recipient(1 + rng() % 10'000);
          env[0].set_body(Body());
          const auto t0 = Clock::now();
          store->AppendAsync(
              static_cast<uint64_t>(w) + 1, Key(static_cast<uint64_t>(w), i), std::move(env),
              [&, t0, i](Result<AppendOutcome> r) {
                if (!r.ok()) std::abort();
                mine[i] =
                    std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
                in_flight.fetch_sub(1);
                completed.fetch_add(1);
                if (waiting.load()) {
                  std::lock_guard<std::mutex> lock(mu);
                  cv.notify_one();
                }
              });
        }
        wait_until([&] { return completed.load() == per_writer; });
      });
    }
    for (auto& th : ts) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(s);
    std::vector<int64_t> all;
    for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
    ReportAppendRun(state, *store, per_writer * writers, s, all, lat);
  }
}
BENCHMARK(BM_PipelinedAppend)
    ->ArgNames({"writers", "window"})
    ->Args({1, 32})
    ->Args({4, 8})
    ->Args({16, 4})
    ->Args({16, 8})
    ->Args({16, 16})
    ->Iterations(1)
    ->UseManualTime();

// N writers offering `rate` appends/s in all, on a fixed schedule (open loop).
void BM_PacedAppend(benchmark::State& state) {
  const int writers = static_cast<int>(state.range(0));
  const double rate = static_cast<double>(state.range(1));
  const uint64_t per_writer = static_cast<uint64_t>(Scale() * rate * 3.0 / writers) + 1;
  const auto interval = std::chrono::nanoseconds(static_cast<int64_t>(1e9 * writers / rate));
  for (auto _ : state) {
    WriteLatencies lat;
    auto store = OpenStore(FreshDir("paced-append"), &lat);
    const double steal0 = StealSeconds();
    const double cpu0 = ProcessCpuSeconds();
    std::vector<std::vector<int64_t>> per(writers);
    std::vector<std::vector<int64_t>> lag(writers);  // issue time - scheduled time
    std::atomic<uint64_t> completed{0};
    const auto start = Clock::now() + std::chrono::milliseconds(20);
    std::vector<std::thread> ts;
    for (int w = 0; w < writers; ++w) {
      ts.emplace_back([&, w] {
        std::vector<int64_t>& mine = per[w];
        mine.assign(per_writer, 0);
        lag[w].reserve(per_writer);
        std::mt19937_64 rng(static_cast<uint64_t>(w) + 1);
        // Writers are staggered across one interval.
        const auto first = start + interval * w / writers;
        uint64_t i = 0;
        while (i < per_writer) {
          const auto now = Clock::now();
          for (; i < per_writer && first + interval * static_cast<int64_t>(i) <= now; ++i) {
            const auto due = first + interval * static_cast<int64_t>(i);
            lag[w].push_back(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - due).count());
            std::vector<v1::Envelope> env(1);
            env[0].set_sender(static_cast<uint64_t>(w) + 1);
            env[0].set_recipient(1 + rng() % 10'000);
            env[0].set_body(Body());
            store->AppendAsync(static_cast<uint64_t>(w) + 1, Key(static_cast<uint64_t>(w), i),
                               std::move(env), [&, due, i](Result<AppendOutcome> r) {
                                 if (!r.ok()) std::abort();
                                 mine[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               Clock::now() - due)
                                               .count();
                                 completed.fetch_add(1, std::memory_order_release);
                               });
          }
          std::this_thread::sleep_for(std::chrono::microseconds(500));
        }
      });
    }
    for (auto& th : ts) th.join();
    const uint64_t total = per_writer * static_cast<uint64_t>(writers);
    while (completed.load(std::memory_order_acquire) < total) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(s);
    std::vector<int64_t> all;
    for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
    state.counters["p999_us"] = Percentile(all, 0.999) / 1000.0;
    std::vector<int64_t> lags;
    for (auto& v : lag) lags.insert(lags.end(), v.begin(), v.end());
    // How late the load generator itself issued (part of every latency above).
    state.counters["issue_lag_p99_us"] = Percentile(lags, 0.99) / 1000.0;
    // The whole process's CPU (load generator included) in cores, and the vCPU time the
    // hypervisor stole meanwhile, in ms per second (docs/performance.md: on this VM synced
    // I/O makes it steal, and every thread then stalls until a 100 ms period ends).
    state.counters["process_cores"] = (ProcessCpuSeconds() - cpu0) / s;
    state.counters["steal_ms_per_s"] = (StealSeconds() - steal0) * 1000.0 / s;
    ReportAppendRun(state, *store, total, s, all, lat);
  }
}
BENCHMARK(BM_PacedAppend)
    ->ArgNames({"writers", "rate"})
    ->Args({16, 20'000})
    ->Args({16, 50'000})
    ->Args({16, 100'000})
    ->Args({16, 120'000})
    ->Iterations(1)
    ->UseManualTime();

void BM_Scan(benchmark::State& state) {
  WriteLatencies lat;
  auto store = OpenStore(FreshDir("scan"), &lat);
  constexpr int kMessages = 10'000;
  for (int i = 0; i < kMessages; i += 100) {
    std::vector<v1::Envelope> envs(100);
    for (auto& e : envs) {
      e.set_sender(2);
      e.set_recipient(1);
      e.set_body(Body());
    }
    if (!store->Append(2, "", std::move(envs)).ok()) std::abort();
  }
  uint64_t messages = 0;
  uint64_t bytes = 0;
  for (auto _ : state) {
    uint64_t after = 0;
    for (;;) {
      Result<ScanPage> p = store->Scan(1, after, 256, 65'535);
      if (!p.ok()) std::abort();
      for (const v1::Envelope& e : p->messages) bytes += e.ByteSizeLong();
      messages += p->messages.size();
      if (!p->has_more) break;
      after = p->messages.back().id();
    }
  }
  state.counters["messages_per_s"] =
      benchmark::Counter(static_cast<double>(messages), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Scan)->Unit(benchmark::kMillisecond)->UseRealTime();

// The disk again at the end: on a shared machine the two fdatasync rates bracket the run.
void BM_FdatasyncAfter(benchmark::State& state) { BM_Fdatasync(state); }
BENCHMARK(BM_FdatasyncAfter)->MinTime(2.0)->UseRealTime();

}  // namespace
}  // namespace iris::store

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("bench_dir", iris::store::BenchRoot());
  benchmark::AddCustomContext("bench_fs", iris::store::FsType(iris::store::BenchRoot()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  // IRIS_BENCH_KEEP=1 keeps the databases (and RocksDB's LOG files) for a look afterwards.
  if (std::getenv("IRIS_BENCH_KEEP") == nullptr) std::filesystem::remove_all(iris::store::BenchRoot());
  return 0;
}
