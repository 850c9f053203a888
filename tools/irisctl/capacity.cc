#include "capacity.h"

#include <cmath>
#include <sstream>

namespace iris::tools {
namespace {

Status InRange(const char* name, double v, double lo, double hi) {
  if (!(v >= lo && v <= hi)) {
    std::ostringstream o;
    o << name << " = " << v << " is outside RFC-001 §12.1's range [" << lo << ", " << hi << "]";
    return BadRequest(o.str());
  }
  return Status::Ok();
}

uint64_t CeilU(double v) { return static_cast<uint64_t>(std::ceil(v - 1e-9)); }

}  // namespace

Status ValidateCapacityInputs(const CapacityInputs& in) {
  if (!(in.dau > 0)) return BadRequest("dau must be positive");
  IRIS_RETURN_IF_ERROR(InRange("concurrent-ratio", in.concurrent_ratio, 0.05, 0.15));
  IRIS_RETURN_IF_ERROR(InRange("conn-per-edge", in.conn_per_edge, 50'000, 200'000));
  IRIS_RETURN_IF_ERROR(InRange("users-per-shard", in.users_per_shard, 50'000, 200'000));
  IRIS_RETURN_IF_ERROR(InRange("safety", in.safety, 1.2, 2.0));
  if (in.messages_per_user_per_day < 0 || in.peak_to_average < 1) {
    return BadRequest("messages-per-user-per-day must be >= 0 and peak-to-average >= 1");
  }
  if (in.measured_msgs_per_sec_per_node < 0 || in.measured_conns_per_node < 0) {
    return BadRequest("measured figures must be >= 0");
  }
  return Status::Ok();
}

Result<CapacityPlan> PlanCapacity(const CapacityInputs& in) {
  IRIS_RETURN_IF_ERROR(ValidateCapacityInputs(in));
  CapacityPlan p;
  p.concurrent_connections = in.dau * in.concurrent_ratio;
  p.edge_nodes = CeilU(p.concurrent_connections / in.conn_per_edge * in.safety);
  p.core_shards = CeilU(in.dau / in.users_per_shard * in.safety);
  p.core_nodes = p.core_shards * 2;
  p.peak_msgs_per_sec = in.dau * in.messages_per_user_per_day / 86'400.0 * in.peak_to_average;
  if (in.measured_msgs_per_sec_per_node > 0) {
    // Every message is written on a primary and a replica (W = 2).
    p.core_nodes_for_throughput =
        CeilU(p.peak_msgs_per_sec * 2 / in.measured_msgs_per_sec_per_node * in.safety);
  }
  if (in.measured_conns_per_node > 0) {
    p.edge_nodes_for_connections =
        CeilU(p.concurrent_connections / in.measured_conns_per_node * in.safety);
  }
  return p;
}

std::string FormatCapacityPlan(const CapacityInputs& in, const CapacityPlan& p) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(0);
  o << "A model, not a measurement: RFC-001 section 12's formulas applied to the inputs\n"
       "below (and to measured per-node figures when given). Core-node counts assume\n"
       "the RFC's primary + one replica (W=2); a cluster initialised with --replicas 3\n"
       "keeps three copies of each shard (N=3, W=2), half as many core nodes again.\n";
  o << "inputs: DAU " << in.dau << ", concurrent ratio " << in.concurrent_ratio * 100
    << " %, connections per edge " << in.conn_per_edge << ", users per shard "
    << in.users_per_shard << ", safety x";
  o.precision(2);
  o << in.safety << "\n";
  o.precision(0);
  o << "concurrent connections        " << p.concurrent_connections << "\n";
  o << "edge nodes (RFC formula)      " << p.edge_nodes << "\n";
  o << "core shards                   " << p.core_shards << "\n";
  o << "core nodes (primary+replica)  " << p.core_nodes << "\n";
  o << "peak messages/s               " << p.peak_msgs_per_sec << "  (" << in.messages_per_user_per_day
    << " msgs/user/day, peak x";
  o.precision(1);
  o << in.peak_to_average << ")\n";
  o.precision(0);
  if (p.core_nodes_for_throughput > 0) {
    o << "core nodes for peak writes    " << p.core_nodes_for_throughput << "  (measured "
      << in.measured_msgs_per_sec_per_node << " msg/s per node, W=2)\n";
  }
  if (p.edge_nodes_for_connections > 0) {
    o << "edge nodes for connections    " << p.edge_nodes_for_connections << "  (measured "
      << in.measured_conns_per_node << " connections per node)\n";
  }
  return o.str();
}

}  // namespace iris::tools
