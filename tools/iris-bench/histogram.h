#pragma once
// LatencyHistogram: a log-linear histogram of non-negative integer values (nanoseconds in
// iris-bench), in the manner of HdrHistogram: values below 128 are counted exactly, above
// that every power of two is split into 64 buckets, so any reported percentile is within
// 1.6% of the true value. Fixed size (3,776 counters), mergeable across loops and
// processes, serialisable to a sparse JSON form.
//
// Thread-safety: none; one histogram per loop thread, merged after the threads stop.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace iris::bench {

class LatencyHistogram {
 public:
  LatencyHistogram();

  void Record(int64_t value);
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  int64_t min() const { return count_ == 0 ? 0 : min_; }
  int64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : sum_ / static_cast<double>(count_); }
  // The value at quantile q in [0, 1] (the middle of its bucket, clamped to [min, max]);
  // 0 when empty.
  int64_t Percentile(double q) const;

  // {"n":..,"sum":..,"min":..,"max":..,"b":[[index,count],...]} and back.
  nlohmann::json ToJson() const;
  static LatencyHistogram FromJson(const nlohmann::json& j);

  static size_t BucketIndex(uint64_t v);
  static uint64_t BucketLowerBound(size_t index);
  static constexpr size_t kBuckets = 128 + 56 * 64 + 64;

 private:
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  double sum_ = 0;
  int64_t min_ = 0;
  int64_t max_ = 0;
};

}  // namespace iris::bench
