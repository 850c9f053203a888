#pragma once
// Capacity model of RFC-001 §12: edge nodes, core shards and core nodes from DAU and the
// §12.1 inputs (validated against their ranges), plus what the measured per-node figures
// (iris-bench) imply for throughput and connections.

#include <cstdint>
#include <string>

#include "common/status.h"

namespace iris::tools {

struct CapacityInputs {
  double dau = 5e9;
  double concurrent_ratio = 0.10;     // 0.05 .. 0.15
  double conn_per_edge = 100'000;     // 50K .. 200K
  double users_per_shard = 100'000;   // 50K .. 200K
  double safety = 1.5;                // 1.2 .. 2.0
  // Traffic assumptions for the throughput check.
  double messages_per_user_per_day = 40;
  double peak_to_average = 3;
  // Measured per node (iris-bench); 0 = not given.
  double measured_msgs_per_sec_per_node = 0;
  double measured_conns_per_node = 0;
};

struct CapacityPlan {
  double concurrent_connections = 0;
  uint64_t edge_nodes = 0;
  uint64_t core_shards = 0;
  uint64_t core_nodes = 0;
  double peak_msgs_per_sec = 0;
  uint64_t core_nodes_for_throughput = 0;  // from the measured rate (0 when not given)
  uint64_t edge_nodes_for_connections = 0; // from the measured connections (0 when not given)
};

// BAD_REQUEST naming the input and its range when one is outside RFC §12.1.
Status ValidateCapacityInputs(const CapacityInputs& in);
Result<CapacityPlan> PlanCapacity(const CapacityInputs& in);
std::string FormatCapacityPlan(const CapacityInputs& in, const CapacityPlan& plan);

}  // namespace iris::tools
