#include "histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace iris::bench {

LatencyHistogram::LatencyHistogram() : counts_(kBuckets, 0) {}

size_t LatencyHistogram::BucketIndex(uint64_t v) {
  if (v < 128) return static_cast<size_t>(v);
  const int msb = 63 - std::countl_zero(v);  // >= 7
  const int shift = msb - 6;                 // keep the top 7 bits: 64..127
  return 128 + static_cast<size_t>(shift - 1) * 64 + static_cast<size_t>((v >> shift) - 64);
}

uint64_t LatencyHistogram::BucketLowerBound(size_t index) {
  if (index < 128) return index;
  const size_t shift = (index - 128) / 64 + 1;
  const uint64_t mantissa = 64 + (index - 128) % 64;
  return mantissa << shift;
}

void LatencyHistogram::Record(int64_t value) {
  if (value < 0) value = 0;
  ++counts_[BucketIndex(static_cast<uint64_t>(value))];
  if (count_ == 0 || value < min_) min_ = value;
  if (value > max_) max_ = value;
  ++count_;
  sum_ += static_cast<double>(value);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
  sum_ += other.sum_;
}

int64_t LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank of the value at quantile q (1-based), as "nearest rank".
  const uint64_t rank =
      std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_))));
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      const uint64_t lo = BucketLowerBound(i);
      const uint64_t hi = i + 1 < kBuckets ? BucketLowerBound(i + 1) : lo;
      const auto mid = static_cast<int64_t>(lo + (hi - lo) / 2);
      return std::clamp(mid, min_, max_);
    }
  }
  return max_;
}

nlohmann::json LatencyHistogram::ToJson() const {
  nlohmann::json b = nlohmann::json::array();
  for (size_t i = 0; i < kBuckets; ++i) {
    if (counts_[i] != 0) b.push_back({i, counts_[i]});
  }
  return {{"n", count_}, {"sum", sum_}, {"min", min()}, {"max", max_}, {"b", b}};
}

LatencyHistogram LatencyHistogram::FromJson(const nlohmann::json& j) {
  LatencyHistogram h;
  h.count_ = j.value("n", uint64_t{0});
  h.sum_ = j.value("sum", 0.0);
  h.min_ = j.value("min", int64_t{0});
  h.max_ = j.value("max", int64_t{0});
  if (j.contains("b")) {
    for (const auto& e : j["b"]) {
      const size_t i = e[0].get<size_t>();
      if (i < kBuckets) h.counts_[i] = e[1].get<uint64_t>();
    }
  }
  return h;
}

}  // namespace iris::bench
