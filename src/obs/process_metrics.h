#pragma once
// Standard process metrics (the names every Prometheus client library exports), computed at
// scrape time from /proc, plus the count of IRIS_BUG reports:
//   process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
//   process_max_fds, process_cpu_seconds_total, process_start_time_seconds, iris_bugs_total.
//
// Thread-safety: as Registry.

#include "obs/metrics.h"

namespace iris::obs {

// Registers the callbacks above in `registry`. Calling it again replaces them.
void AddProcessMetrics(Registry& registry);

}  // namespace iris::obs
