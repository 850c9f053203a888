#pragma once
// The worker side of iris-bench: one forked process that takes a share of a scenario's
// sessions, runs them on options.loops LoadLoop threads, and talks to the parent over two
// pipes with newline-delimited JSON:
//   worker -> parent  {"barrier": NAME, ...}   reached a synchronisation point, waits
//   parent -> worker  "go" | "abort"           continue (after sampling the server) / stop
//   worker -> parent  {"report": {...}}        final counters, histograms, violations
// Barriers let the parent sample the server (RSS, CPU) at the same moment for every worker
// and start phases (traffic, the storm's drop) at once across processes.
//
// Thread-safety: RunWorker runs on the worker's main thread; everything it starts is joined
// before it returns.

#include <cstdint>
#include <string>
#include <vector>

#include "bench_options.h"

namespace iris::bench {

struct WorkerPlan {
  Scenario scenario;
  int worker = 0;          // 0 .. processes-1
  int scenario_index = 0;  // position in the run: offsets the user ids
  uint64_t user_base = 0;
  std::vector<std::string> targets;  // host:port, resolved by the worker
  std::vector<std::string> certs;    // per target
  std::vector<std::string> secrets;  // per target: the JWT secret bytes
};

// Runs the worker's part; returns the process exit code (0 when it reported).
int RunWorker(const BenchOptions& options, const WorkerPlan& plan, int to_parent, int from_parent);

// Line I/O over a pipe (blocking).
bool WriteLine(int fd, const std::string& line);
// Reads one line (without the newline); false on EOF or error.
bool ReadLine(int fd, std::string* buffer, std::string* line);

}  // namespace iris::bench
