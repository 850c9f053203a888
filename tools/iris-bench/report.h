#pragma once
// Turns what the parent collected during one scenario (server samples at every barrier,
// the workers' reports) into the scenario's figures: a JSON object and a human table, with
// each figure next to its RFC-001 target where there is one. Correctness (no loss, no
// duplicate, order per sender, sessions stayed up) decides `correct`; timing never does.
//
// Thread-safety: pure functions.

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_options.h"
#include "server_probe.h"

namespace iris::bench {

struct ScenarioData {
  Scenario scenario;
  int index = 0;
  std::map<std::string, Sample> samples;  // by barrier name, taken when all workers arrived
  std::vector<nlohmann::json> reports;    // one per worker
  std::vector<pid_t> server_pids;
  std::vector<std::string> targets;
  bool spawned = false;
  std::string error;           // the run itself failed (not a measurement)
  std::string server_warning;  // e.g. a spawned irisd that did not exit cleanly
};

struct ScenarioOutcome {
  nlohmann::json json;
  bool correct = false;
  std::string table;
};

ScenarioOutcome Summarize(const BenchOptions& options, const ScenarioData& data);

}  // namespace iris::bench
