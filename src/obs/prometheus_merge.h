#pragma once
// Merging the Prometheus expositions of the processes of one node into the one exposition
// the node serves (`irisd --edge-processes N`: the core process and N edge processes), so
// that every series means what it means when one process does everything.
//
// The rule, per family type (a family is identified by its name; series by their labels,
// whatever their order):
//   counter    the values are summed (events counted by any process happened on the node).
//   histogram  summed bucket by bucket (`le`), and `_sum` and `_count` summed: the merged
//              histogram is the one a single process observing every event would hold.
//              Bounds that only some sources have are filled in for the others with their
//              cumulative count at their largest bound below (a true lower bound), so the
//              buckets stay cumulative even if the layouts differ.
//   summary    `_sum` and `_count` summed; quantiles cannot be combined, the largest is
//              kept (an upper bound of the node's quantile).
//   gauge and untyped: by GaugeMergeFor(name):
//              kSum  for gauges that count or measure amounts (connections, sessions,
//                    bytes, descriptors, queue depths) -- the default;
//              kMax  where a sum means nothing: levels, ratios, lags, limits (the node is as
//                    degraded / lagging as its worst process);
//              kMin  for process_start_time_seconds (the node is up since its oldest
//                    process started).
// NaN contributions are skipped (a process that cannot read a value does not hide the
// others'); a series every source reports as NaN stays NaN.
// A source whose family has another type than the first source that declared it loses
// that family (the first declaration wins); it is a programming error, not input to guess.
//
// Thread-safety: pure functions.

#include <string>
#include <string_view>
#include <vector>

#include "obs/prometheus_text.h"

namespace iris::obs {

enum class GaugeMerge { kSum, kMax, kMin };

// The rule for the gauge (or untyped) family `name`: an explicit table first
// (iris_degradation_level and process_max_fds: kMax; process_start_time_seconds: kMin), then
// by name: containing "_lag" or ending in "_level" or "_ratio": kMax; otherwise kSum.
GaugeMerge GaugeMergeFor(std::string_view name);

// Merges `sources` (each one process's parsed exposition; null entries are skipped) by the
// rules above. Families come out sorted by name, with the first non-empty HELP; series
// sorted by labels, histogram series as buckets in increasing `le`, then _sum and _count.
std::vector<PromFamily> MergeFamilies(const std::vector<const std::vector<PromFamily>*>& sources);

// What a process that is gone still contributes to the node's totals: its counters,
// histograms and the _sum/_count of its summaries. Gauges (and summary quantiles) describe
// the present and are dropped.
std::vector<PromFamily> CumulativeFamilies(const std::vector<PromFamily>& families);

// `families` in the text format 0.0.4: per family `# HELP` (when known) and `# TYPE` once,
// then its samples; label values escaped. A family with an empty type is written "untyped".
std::string RenderPrometheusText(const std::vector<PromFamily>& families);

}  // namespace iris::obs
