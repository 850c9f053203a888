#pragma once
// irisctl cluster ...: init, status, certs, drain (docs/operations.md, "Running a cluster").
// Each returns the process exit code (0 ok, 1 failure, 2 bad usage / not supported) and
// prints what went wrong on standard error.

#include <cstdint>
#include <string>

#include "cluster/placement.h"

namespace iris::tools {

struct ClusterArgs {
  std::string etcd = "127.0.0.1:2379";
  std::string cluster;
  std::string etcd_ca, etcd_cert, etcd_key;
  int32_t vnodes = 4096;
  int32_t replicas = 3;
  int32_t initial_nodes = 1;
  int32_t shards_per_node = 1;
  bool json = false;
  std::string dir;
  uint32_t node_id = 0;
  bool cancel = false;  // drain: stop draining the node
  int64_t wait_s = 0;   // drain: wait this long for the node to hold no replica (0: do not)
};

int ClusterInit(const ClusterArgs& args);
int ClusterStatus(const ClusterArgs& args);
int ClusterCerts(const ClusterArgs& args);
int ClusterDrain(const ClusterArgs& args);

// The status report of `placement` (text or JSON); exposed for tests.
std::string FormatClusterStatus(const std::string& cluster, const cluster::Placement& placement,
                                bool json);

}  // namespace iris::tools
