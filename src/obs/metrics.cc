#include "obs/metrics.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <limits>

#include "common/assert.h"
#include "obs/prometheus_text.h"

namespace iris::obs {

namespace internal {
size_t AssignThreadShard() {
  static std::atomic<size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) & (kMetricShards - 1);
}
}  // namespace internal

static_assert((kMetricShards & (kMetricShards - 1)) == 0, "kMetricShards: a power of two");

// ---------------------------------------------------------------------------------------
// Counter

uint64_t Counter::Value() const {
  uint64_t total = 0;
  for (const auto& c : cells_) total += c.value.load(std::memory_order_relaxed);
  return total;
}

// ---------------------------------------------------------------------------------------
// Buckets

namespace {

double RoundToSignificant(double v, int digits) {
  if (v == 0 || !std::isfinite(v)) return v;
  const double magnitude = std::pow(10.0, digits - 1 - static_cast<int>(std::floor(std::log10(v))));
  return std::round(v * magnitude) / magnitude;
}

}  // namespace

std::vector<double> ExponentialBuckets(double start, double factor, double max) {
  IRIS_RELEASE_ASSERT(start > 0 && factor > 1 && max >= start);
  std::vector<double> out;
  double raw = start;
  while (true) {
    const double b = RoundToSignificant(raw, 3);
    if (out.empty() || b > out.back()) out.push_back(b);
    if (b >= max) break;
    raw *= factor;
  }
  return out;
}

const std::vector<double>& DefaultLatencyBuckets() {
  static const std::vector<double>* buckets =
      new std::vector<double>(ExponentialBuckets(50e-6, 1.25, 10.0));
  return *buckets;
}

// ---------------------------------------------------------------------------------------
// Histogram

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    IRIS_RELEASE_ASSERT(std::isfinite(bounds_[i]));
    IRIS_RELEASE_ASSERT(i == 0 || bounds_[i - 1] < bounds_[i]);
  }
  const size_t cells = bounds_.size() + 2;  // buckets, +Inf, sum
  lines_per_shard_ = (cells + 7) / 8;
  lines_ = std::make_unique<CacheLine[]>(lines_per_shard_ * kMetricShards);
}

void Histogram::AddToSum(size_t shard, double value) {
  std::atomic<uint64_t>& cell = Cell(shard, bounds_.size() + 1);
  uint64_t old_bits = cell.load(std::memory_order_relaxed);
  // Only threads mapped to this shard write it, so the loop almost never retries.
  while (!cell.compare_exchange_weak(
      old_bits, std::bit_cast<uint64_t>(std::bit_cast<double>(old_bits) + value),
      std::memory_order_relaxed)) {
  }
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  const size_t shard = internal::ThisThreadShard();
  Cell(shard, bucket).fetch_add(1, std::memory_order_relaxed);
  AddToSum(shard, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.counts.assign(bounds_.size() + 1, 0);
  for (size_t shard = 0; shard < kMetricShards; ++shard) {
    for (size_t b = 0; b < s.counts.size(); ++b) {
      s.counts[b] += Cell(shard, b).load(std::memory_order_relaxed);
    }
    s.sum += std::bit_cast<double>(Cell(shard, bounds_.size() + 1).load(std::memory_order_relaxed));
  }
  return s;
}

uint64_t Histogram::Snapshot::Count() const {
  uint64_t total = 0;
  for (uint64_t c : counts) total += c;
  return total;
}

uint64_t Histogram::Count() const { return Read().Count(); }
double Histogram::Sum() const { return Read().sum; }
double Histogram::Quantile(double q) const { return BucketQuantile(bounds_, Read().counts, q); }

double BucketQuantile(const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
                      double q) {
  // Mirrors bucketQuantile() in Prometheus' promql/quantile.go.
  if (std::isnan(q)) return std::numeric_limits<double>::quiet_NaN();
  if (q < 0) return -std::numeric_limits<double>::infinity();
  if (q > 1) return std::numeric_limits<double>::infinity();
  if (counts.size() != bounds.size() + 1 || bounds.empty()) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  std::vector<double> cumulative(counts.size());
  double running = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    running += static_cast<double>(counts[i]);
    cumulative[i] = running;
  }
  const double observations = cumulative.back();
  if (observations == 0) return std::numeric_limits<double>::quiet_NaN();
  double rank = q * observations;
  size_t b = 0;
  while (b < bounds.size() && cumulative[b] < rank) ++b;
  if (b == bounds.size()) return bounds.back();  // the +Inf bucket
  if (b == 0 && bounds[0] <= 0) return bounds[0];
  double bucket_start = 0;
  const double bucket_end = bounds[b];
  double count = cumulative[b];
  if (b > 0) {
    bucket_start = bounds[b - 1];
    count -= cumulative[b - 1];
    rank -= cumulative[b - 1];
  }
  return bucket_start + (bucket_end - bucket_start) * (rank / count);
}

// ---------------------------------------------------------------------------------------
// Registry

struct Registry::Series {
  Labels labels;  // sorted by name
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
  std::function<double()> callback;  // guarded by callback_mu_
};

struct Registry::Family {
  std::string name;
  std::string help;
  Type type;
  std::vector<std::string> label_names;  // sorted
  std::vector<double> buckets;           // histograms only
  // Keyed by the label values in label_names order.
  std::map<std::vector<std::string>, std::unique_ptr<Series>> series;
};

namespace {

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

Labels SortedLabels(const Labels& labels) {
  Labels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    IRIS_RELEASE_ASSERT(IsValidLabelName(sorted[i].first));
    IRIS_RELEASE_ASSERT(i == 0 || sorted[i - 1].first != sorted[i].first);  // no duplicates
    IRIS_RELEASE_ASSERT(sorted[i].first != "le" && sorted[i].first != "quantile");
  }
  return sorted;
}


void AppendUint(std::string& out, uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, end);
}

void AppendInt(std::string& out, int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, end);
}

// `name{a="x",b="y"[,le="..."]} ` (no braces when there are no labels).
void AppendSeriesName(std::string& out, std::string_view name, std::string_view suffix,
                      const Labels& labels, std::string_view le = {}) {
  out += name;
  out += suffix;
  if (!labels.empty() || !le.empty()) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out += ',';
      first = false;
      out += k;
      out += "=\"";
      AppendPromEscaped(out, v, /*escape_quote=*/true);
      out += '"';
    }
    if (!le.empty()) {
      if (!first) out += ',';
      out += "le=\"";
      out += le;
      out += '"';
    }
    out += '}';
  }
  out += ' ';
}

std::string_view TypeName(bool counter, bool histogram) {
  if (histogram) return "histogram";
  return counter ? "counter" : "gauge";
}

constexpr std::string_view kOverflowValue = "overflow";

}  // namespace

Registry::Registry() = default;
Registry::~Registry() = default;

Registry& Registry::Default() {
  static Registry* registry = new Registry();
  return *registry;
}

Registry::Family& Registry::FamilyFor(const std::string& name, const std::string& help, Type type,
                                      const Labels& sorted_labels) {
  // Caller holds mu_.
  auto it = families_.find(name);
  if (it == families_.end()) {
    IRIS_RELEASE_ASSERT(IsValidMetricName(name));
    const bool counter = type == Type::kCounter || type == Type::kCallbackCounter;
    // Prometheus conventions: counters end in _total; nothing else does; the histogram
    // suffixes are reserved.
    IRIS_RELEASE_ASSERT(counter == name.ends_with("_total"));
    IRIS_RELEASE_ASSERT(!name.ends_with("_bucket") && !name.ends_with("_sum") &&
                        !name.ends_with("_count"));
    auto family = std::make_unique<Family>();
    family->name = name;
    family->help = help;
    family->type = type;
    for (const auto& [k, v] : sorted_labels) family->label_names.push_back(k);
    it = families_.emplace(name, std::move(family)).first;
  }
  Family& family = *it->second;
  IRIS_RELEASE_ASSERT(family.type == type);
  IRIS_RELEASE_ASSERT(family.label_names.size() == sorted_labels.size());
  for (size_t i = 0; i < sorted_labels.size(); ++i) {
    IRIS_RELEASE_ASSERT(family.label_names[i] == sorted_labels[i].first);
  }
  return family;
}

Registry::Series& Registry::SeriesFor(Family& family, Labels sorted_labels) {
  // Caller holds mu_.
  std::vector<std::string> key;
  key.reserve(sorted_labels.size());
  for (const auto& [k, v] : sorted_labels) key.push_back(v);
  auto it = family.series.find(key);
  if (it != family.series.end()) return *it->second;
  if (family.series.size() >= kMaxSeriesPerFamily) {
    for (auto& v : key) v = kOverflowValue;
    for (auto& [k, v] : sorted_labels) v = kOverflowValue;
    it = family.series.find(key);
    if (it != family.series.end()) return *it->second;
  }
  auto series = std::make_unique<Series>();
  series->labels = std::move(sorted_labels);
  switch (family.type) {
    case Type::kCounter: series->counter = std::make_unique<Counter>(); break;
    case Type::kGauge: series->gauge = std::make_unique<Gauge>(); break;
    case Type::kHistogram: series->histogram = std::make_unique<Histogram>(family.buckets); break;
    case Type::kCallbackGauge:
    case Type::kCallbackCounter: break;
  }
  return *family.series.emplace(std::move(key), std::move(series)).first->second;
}

Counter& Registry::GetCounter(const std::string& name, const std::string& help,
                              const Labels& labels) {
  Labels sorted = SortedLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& family = FamilyFor(name, help, Type::kCounter, sorted);
  return *SeriesFor(family, std::move(sorted)).counter;
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  Labels sorted = SortedLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& family = FamilyFor(name, help, Type::kGauge, sorted);
  return *SeriesFor(family, std::move(sorted)).gauge;
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const Labels& labels, std::vector<double> buckets) {
  Labels sorted = SortedLabels(labels);
  std::lock_guard<std::mutex> lock(mu_);
  Family& family = FamilyFor(name, help, Type::kHistogram, sorted);
  if (family.series.empty() && family.buckets.empty()) family.buckets = std::move(buckets);
  return *SeriesFor(family, std::move(sorted)).histogram;
}

void Registry::AddCallback(const std::string& name, const std::string& help, Type type,
                           std::function<double()> fn, const Labels& labels) {
  Labels sorted = SortedLabels(labels);
  std::lock_guard<std::mutex> callback_lock(callback_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  Family& family = FamilyFor(name, help, type, sorted);
  SeriesFor(family, std::move(sorted)).callback = std::move(fn);
}

void Registry::AddCallbackGauge(const std::string& name, const std::string& help,
                                std::function<double()> fn, const Labels& labels) {
  AddCallback(name, help, Type::kCallbackGauge, std::move(fn), labels);
}

void Registry::AddCallbackCounter(const std::string& name, const std::string& help,
                                  std::function<double()> fn, const Labels& labels) {
  AddCallback(name, help, Type::kCallbackCounter, std::move(fn), labels);
}

void Registry::RemoveCallback(const std::string& name, const Labels& labels) {
  Labels sorted = SortedLabels(labels);
  std::lock_guard<std::mutex> callback_lock(callback_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  Family& family = *it->second;
  if (family.type != Type::kCallbackGauge && family.type != Type::kCallbackCounter) return;
  std::vector<std::string> key;
  for (const auto& [k, v] : sorted) key.push_back(v);
  family.series.erase(key);
}

std::string Registry::ExposePrometheus() const {
  // Callbacks run under callback_mu_ (so RemoveCallback can promise they are done) but not
  // under mu_, so a callback may look metrics up. Families and non-callback series are never
  // removed, and callback series only under callback_mu_, so the pointers stay valid.
  std::lock_guard<std::mutex> callback_lock(callback_mu_);
  std::vector<std::pair<const Family*, std::vector<const Series*>>> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot.reserve(families_.size());
    for (const auto& [name, family] : families_) {
      std::vector<const Series*> series;
      series.reserve(family->series.size());
      for (const auto& [key, s] : family->series) series.push_back(s.get());
      snapshot.emplace_back(family.get(), std::move(series));
    }
  }

  std::string out;
  out.reserve(4096);
  for (const auto& [family, series] : snapshot) {
    if (series.empty()) continue;
    const bool counter = family->type == Type::kCounter || family->type == Type::kCallbackCounter;
    const bool histogram = family->type == Type::kHistogram;
    out += "# HELP ";
    out += family->name;
    out += ' ';
    AppendPromEscaped(out, family->help, /*escape_quote=*/false);
    out += "\n# TYPE ";
    out += family->name;
    out += ' ';
    out += TypeName(counter, histogram);
    out += '\n';
    for (const Series* s : series) {
      switch (family->type) {
        case Type::kCounter:
          AppendSeriesName(out, family->name, "", s->labels);
          AppendUint(out, s->counter->Value());
          out += '\n';
          break;
        case Type::kGauge:
          AppendSeriesName(out, family->name, "", s->labels);
          AppendInt(out, s->gauge->Value());
          out += '\n';
          break;
        case Type::kCallbackGauge:
        case Type::kCallbackCounter:
          AppendSeriesName(out, family->name, "", s->labels);
          AppendPromValue(out, s->callback ? s->callback() : std::nan(""));
          out += '\n';
          break;
        case Type::kHistogram: {
          const Histogram::Snapshot snap = s->histogram->Read();
          const std::vector<double>& bounds = s->histogram->bounds();
          uint64_t cumulative = 0;
          std::string le;
          for (size_t b = 0; b < snap.counts.size(); ++b) {
            cumulative += snap.counts[b];
            le.clear();
            if (b < bounds.size()) {
              AppendPromValue(le, bounds[b]);
            } else {
              le = "+Inf";
            }
            AppendSeriesName(out, family->name, "_bucket", s->labels, le);
            AppendUint(out, cumulative);
            out += '\n';
          }
          AppendSeriesName(out, family->name, "_sum", s->labels);
          AppendPromValue(out, snap.sum);
          out += '\n';
          AppendSeriesName(out, family->name, "_count", s->labels);
          AppendUint(out, cumulative);
          out += '\n';
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace iris::obs
