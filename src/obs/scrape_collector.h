#pragma once
// The node's view of the metrics of its other processes (`irisd --edge-processes N`): a
// background thread scrapes each edge process's /metrics over loopback HTTP and keeps the
// latest merged result, so that the core process's /metrics handler -- which runs on the
// admin server's poll thread and must never wait on the network -- only merges what is
// cached with its own registry (ExposeMerged).
//
// Freshness: every slot is scraped every `interval` (500 ms by default), and Poke() asks
// for a cycle as soon as the previous one is `min_interval` old, without waiting for it.
// So what a process counted is visible on the node's /metrics within about one interval.
//
// Processes come and go (the core process restarts an edge process that dies). A slot is
// identified by its index; its target names the process instance (its pid), and a scrape
// counts for that instance only if the target still names it afterwards (so a target must
// go away before a replacement can answer on the same port, and name the replacement only
// once it does -- as the edge port files do). When the
// instance changes, the counters and histograms last scraped from the old one are carried
// into the slot's totals, so the node's counters do not go backwards when one edge process
// restarts (what the old instance counted after its last scrape, at most one interval, is
// lost). A slot that cannot be scraped contributes the counters and histograms it last had
// and no gauges (a process that does not answer has no connections to count).
//
// Thread-safety: Start() and Stop() from one controlling thread; Latest(), ExposeMerged(),
// Poke() and failures() from any thread.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "obs/metrics.h"
#include "obs/prometheus_text.h"

namespace iris::obs {

// Where slot i's process serves its metrics, and which process instance that is.
struct ScrapeTarget {
  std::string host;  // numeric IPv4 or IPv6 (no brackets)
  uint16_t port = 0;
  int64_t instance = 0;  // changes when the process is replaced (its pid)
};

struct ScrapeCollectorOptions {
  size_t slots = 0;
  // Slot i's target, or nullopt while it has none (not started yet). Called on the
  // collector thread; must not block for long (reading a small local file is fine).
  std::function<std::optional<ScrapeTarget>(size_t slot)> target;
  std::string path = "/metrics";
  std::chrono::milliseconds interval{500};
  std::chrono::milliseconds min_interval{100};
  // Connect, send and read, per target.
  std::chrono::milliseconds timeout{500};
  size_t max_response_bytes = 16 << 20;
  // Incremented for each failed scrape of a slot that has a target (may be null).
  Counter* failures = nullptr;
};

class ScrapeCollector {
 public:
  explicit ScrapeCollector(ScrapeCollectorOptions options);
  // Calls Stop().
  ~ScrapeCollector();
  ScrapeCollector(const ScrapeCollector&) = delete;
  ScrapeCollector& operator=(const ScrapeCollector&) = delete;

  // Starts the thread (the first cycle runs at once).
  void Start();
  // Wakes and joins the thread (an in-flight scrape ends within `timeout`). Idempotent.
  void Stop();

  // Every slot's families merged (MergeFamilies), as of the last cycle; empty before it.
  std::shared_ptr<const std::vector<PromFamily>> Latest() const;
  // `own` (this process's exposition) merged with Latest(), in the text format. Does not
  // block on the network; also Poke()s. When `own` does not parse, it is returned as is.
  std::string ExposeMerged(std::string_view own);
  // Asks for a cycle soon; does not wait for it.
  void Poke();
  // Completed cycles (tests and diagnostics).
  uint64_t cycles() const { return cycles_.load(std::memory_order_acquire); }
  // Waits until more than `after` cycles have completed, at most `timeout`; false on
  // timeout. Pokes first, so the wait is about one scrape, not one interval.
  bool WaitForCycle(uint64_t after, std::chrono::milliseconds timeout);

 private:
  struct Slot {
    int64_t instance = 0;
    bool seen = false;                // scraped at least once
    bool live = false;                // the last attempt succeeded
    std::vector<PromFamily> last;     // the last successful scrape
    std::vector<PromFamily> carried;  // cumulative families of earlier instances
  };

  void Run();
  void Cycle();

  const ScrapeCollectorOptions options_;
  std::vector<Slot> slots_;  // owned by the collector thread

  mutable std::mutex mu_;               // guards latest_, poked_, stopping_
  std::condition_variable wake_;        // the collector thread waits here
  std::condition_variable cycle_done_;  // WaitForCycle() waits here
  std::shared_ptr<const std::vector<PromFamily>> latest_;
  bool poked_ = false;
  bool stopping_ = false;
  std::atomic<uint64_t> cycles_{0};
  std::thread thread_;
};

// GET `path` from http://host:port with Connection: close, everything (connect, send,
// read to the end) within `timeout`; the body of a 200 answer. Errors: kUnavailable (cannot
// connect, timed out, connection lost, not 200), kBadRequest (bad host, answer over
// `max_bytes` or not HTTP).
Result<std::string> HttpGet(const std::string& host, uint16_t port, std::string_view path,
                            std::chrono::milliseconds timeout, size_t max_bytes);

}  // namespace iris::obs
