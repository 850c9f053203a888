#pragma once
// `irisctl stats`: what an operator reads first from a running node's /metrics -- P50, P90
// and P99 of every latency histogram (computed from the buckets exactly as PromQL's
// histogram_quantile() does, over everything observed since the node started) and the
// four standard counters of PROTOCOL.md section 10.

#include <string>
#include <string_view>

#include "common/status.h"

namespace iris::tools {

// The report for one scrape of /metrics. BAD_REQUEST when the text does not parse.
Result<std::string> FormatStats(std::string_view exposition);

// A latency in seconds with a readable unit ("850us", "12.3ms", "1.25s"); "-" for NaN.
std::string FormatSeconds(double seconds);

}  // namespace iris::tools
