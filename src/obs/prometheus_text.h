#pragma once
// Reading the Prometheus text format 0.0.4 back (what Registry::ExposePrometheus and any
// Prometheus client serve): samples with their labels, families with their # TYPE, and
// histograms regrouped per series so that quantiles can be computed exactly as PromQL's
// histogram_quantile() does (BucketQuantile). Used by `irisctl stats`.
//
// Thread-safety: pure functions.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "obs/metrics.h"

namespace iris::obs {

struct PromSample {
  std::string name;
  Labels labels;  // in the order written
  double value = 0;
};

struct PromFamily {
  std::string name;
  std::string type;  // counter, gauge, histogram, summary, untyped ("" without # TYPE)
  std::string help;
  std::vector<PromSample> samples;
};

// Parses a whole exposition. A sample belongs to the family of the last # TYPE line when
// its name is that family's (or, for histograms and summaries, the family's _bucket, _sum,
// _count); otherwise it forms an untyped family of its own. Timestamps are accepted and
// ignored. Errors: BAD_REQUEST naming the line.
Result<std::vector<PromFamily>> ParsePrometheusText(std::string_view text);

// One series of a histogram family: its labels without `le`, the finite bucket bounds,
// NON-cumulative counts (the last one for +Inf, as Histogram::Snapshot), _sum and _count.
struct HistogramSeries {
  std::string name;  // the family name (without _bucket)
  Labels labels;
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  double sum = 0;
  uint64_t count = 0;

  // histogram_quantile(q, ...) over this series (NaN without observations).
  double Quantile(double q) const { return BucketQuantile(bounds, counts, q); }
};

// Every histogram series of `families`. Series whose buckets are not increasing in `le`,
// not cumulative, or lack +Inf are skipped.
std::vector<HistogramSeries> HistogramsOf(const std::vector<PromFamily>& families);

// Writing the format: appends `s` escaped as a label value (escape_quote) or HELP text
// (backslash and newline only), and a sample value ("NaN", "+Inf", "-Inf" or the shortest
// round-tripping decimal).
void AppendPromEscaped(std::string& out, std::string_view s, bool escape_quote);
void AppendPromValue(std::string& out, double v);

// "a=\"x\",b=\"y\"" (empty for no labels), for display.
std::string FormatLabels(const Labels& labels);

}  // namespace iris::obs
