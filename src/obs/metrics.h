#pragma once
// Metrics: counters, gauges and latency histograms, exposed in the Prometheus text format
// 0.0.4 (PROTOCOL.md section 10, DESIGN.md section 8).
//
// Hot path. Counter::Inc and Histogram::Observe take no lock: each metric keeps
// kMetricShards cache-line-padded shards of relaxed atomics, every thread writes the shard
// picked by its own thread index, and readers (Value(), Count(), the scrape) add the shards
// up. An increment is one uncontended atomic add on a line no other thread writes (as long
// as no more than kMetricShards threads record), so it costs a few nanoseconds. Reads are
// not a consistent snapshot across shards; the scrape reads each histogram's buckets once
// and derives `_count` from the same numbers, so `_count` always equals the +Inf bucket.
//
// Registration. Registry::Get* looks a series up by (name, labels) under a mutex and
// returns a reference that stays valid for the registry's lifetime: call it once at start-up
// (or construction of the owning object) and keep the reference; do not call it per event.
// Label values must come from a bounded set known up front (opcode names, error code names,
// reasons) -- never a user id, address or anything taken from network input. As a safety
// net a family holds at most kMaxSeriesPerFamily label sets; further new label sets all
// share one overflow series whose label values are "overflow".
//
// Misuse by the programmer (an invalid metric or label name, a counter not ending in
// `_total`, one name registered with two types, or with two different sets of label names)
// aborts with IRIS_RELEASE_ASSERT at registration: it is caught by the first test that
// registers the metric, and never depends on input.
//
// Thread-safety: every member function of every class here may be called concurrently.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iris::obs {

// Label names and values of one series, e.g. {{"opcode", "SEND"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

// Shards per counter / histogram. A power of two.
inline constexpr size_t kMetricShards = 16;
// Cap on label sets per family (see the file comment).
inline constexpr size_t kMaxSeriesPerFamily = 512;
// The Content-Type of ExposePrometheus()'s output.
inline constexpr std::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

namespace internal {
size_t AssignThreadShard();
// The shard the calling thread writes: a per-thread index assigned on first use.
inline size_t ThisThreadShard() {
  thread_local size_t shard = kMetricShards;  // constant-initialised: no TLS guard
  if (shard == kMetricShards) [[unlikely]] {
    shard = AssignThreadShard();
  }
  return shard;
}

struct alignas(64) PaddedCounterCell {
  std::atomic<uint64_t> value{0};
};
}  // namespace internal

// A monotonically increasing count. Name ends in `_total`.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Inc(uint64_t n = 1) {
    cells_[internal::ThisThreadShard()].value.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t Value() const;

 private:
  internal::PaddedCounterCell cells_[kMetricShards];
};

// A value that goes up and down (queue depth, connections open, degradation level).
class alignas(64) Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Upper bounds start, start*factor, ... until the first bound >= max (inclusive), each
// rounded to 3 significant digits so that the exposition's `le` labels read cleanly.
// Preconditions: start > 0, factor > 1, max >= start.
std::vector<double> ExponentialBuckets(double start, double factor, double max);

// The default latency buckets in seconds: 50 us to 10 s, factor 1.25 (56 buckets). Relative
// error of a quantile read with linear interpolation is below 25%, typically a few percent.
const std::vector<double>& DefaultLatencyBuckets();

// A distribution of observations (latencies in seconds, sizes in bytes), as a Prometheus
// histogram: cumulative `_bucket{le=...}` counts, `_sum` and `_count`.
class Histogram {
 public:
  // `bounds`: strictly increasing finite upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Records one observation. NaN is ignored. A value lands in the first bucket whose upper
  // bound is >= value (Prometheus' `le`: less than or equal).
  void Observe(double value);

  uint64_t Count() const;
  double Sum() const;
  // The q-quantile (0 <= q <= 1) estimated as Prometheus' histogram_quantile() does: find the
  // bucket holding rank q*Count() and interpolate linearly inside it (the lowest bucket
  // starts at 0). Ranks falling in the +Inf bucket answer the highest finite bound. NaN when
  // there are no observations; -Inf for q < 0 and +Inf for q > 1 (as Prometheus).
  double Quantile(double q) const;

  const std::vector<double>& bounds() const { return bounds_; }

  // A point-in-time read: per-bucket (non-cumulative) counts, the last one for +Inf.
  struct Snapshot {
    std::vector<uint64_t> counts;
    double sum = 0;
    uint64_t Count() const;
  };
  Snapshot Read() const;

 private:
  void AddToSum(size_t shard, double value);

  // Per shard: one cell per bucket (bounds_.size() + 1 including +Inf), then the sum (the
  // bits of a double), rounded up to whole cache lines so shards never share a line.
  struct alignas(64) CacheLine {
    std::atomic<uint64_t> cell[8];
  };
  std::atomic<uint64_t>& Cell(size_t shard, size_t index) const {
    return lines_[shard * lines_per_shard_ + index / 8].cell[index % 8];
  }

  std::vector<double> bounds_;
  size_t lines_per_shard_ = 0;
  std::unique_ptr<CacheLine[]> lines_;
};

// Estimates the q-quantile from cumulative-free bucket counts (last = +Inf) as
// histogram_quantile() does. Exposed for tools (irisctl stats) that parse a scrape.
double BucketQuantile(const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
                      double q);

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // The process-wide registry the server exposes on /metrics. Never destroyed.
  static Registry& Default();

  // The series (name, labels); created on first use. The same name and label set (in any
  // order) returns the same object. `help` is taken from the first registration.
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // `buckets` applies on first registration of the family; later calls share the family's.
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          const Labels& labels = {},
                          std::vector<double> buckets = DefaultLatencyBuckets());

  // A gauge (or counter) whose value `fn` computes at scrape time (connections open, RSS).
  // Adding the same name and labels again replaces the function. `fn` runs on the scraping
  // thread, must be thread-safe and must not call Add/RemoveCallback* itself.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> fn, const Labels& labels = {});
  void AddCallbackCounter(const std::string& name, const std::string& help,
                          std::function<double()> fn, const Labels& labels = {});
  // Removes a callback series. When this returns the function is not running and will not
  // be called again, so an object it captured may be destroyed.
  void RemoveCallback(const std::string& name, const Labels& labels = {});

  // The whole registry in the Prometheus text format 0.0.4 (kPrometheusContentType):
  // families sorted by name, each with # HELP and # TYPE, series sorted by label values.
  std::string ExposePrometheus() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram, kCallbackGauge, kCallbackCounter };
  struct Series;
  struct Family;

  Family& FamilyFor(const std::string& name, const std::string& help, Type type,
                    const Labels& sorted_labels);
  Series& SeriesFor(Family& family, Labels sorted_labels);
  void AddCallback(const std::string& name, const std::string& help, Type type,
                   std::function<double()> fn, const Labels& labels);

  mutable std::mutex mu_;  // guards families_ and the series maps in them
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
  // Held while callbacks run and while they are replaced or removed (RemoveCallback's
  // guarantee). Lock order: callback_mu_ before mu_.
  mutable std::mutex callback_mu_;
};

}  // namespace iris::obs
