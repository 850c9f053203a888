#pragma once
// Reads what iris-bench reports about the machine and the server processes from /proc:
// resident memory (/proc/PID/status VmRSS, VmHWM), CPU time (/proc/PID/stat utime + stime),
// open descriptors, and kernel memory (/proc/meminfo Slab, /proc/net/sockstat, and
// /proc/slabinfo per cache when readable, i.e. as root).
//
// Thread-safety: free functions without shared state.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace iris::bench {

struct ProcessSample {
  bool ok = false;
  uint64_t rss_bytes = 0;
  uint64_t hwm_bytes = 0;
  double cpu_user_s = 0;
  double cpu_sys_s = 0;
  uint64_t threads = 0;
  uint64_t fds = 0;
  uint64_t processes = 0;
};

struct KernelSample {
  uint64_t slab_bytes = 0;     // /proc/meminfo Slab
  uint64_t tcp_mem_bytes = 0;  // /proc/net/sockstat TCP mem (pages) * page size: buffers
  uint64_t tcp_inuse = 0;
  std::map<std::string, uint64_t> slab_caches;  // cache name -> bytes (num_objs * objsize)
};

struct Sample {
  int64_t mono_ns = 0;
  ProcessSample servers;  // summed over the server processes and their descendants
  KernelSample kernel;
};

ProcessSample SampleProcess(pid_t pid);
// `pids` and all their descendants (e.g. the edge processes of `irisd --edge-processes`).
std::vector<pid_t> WithDescendants(const std::vector<pid_t>& pids);
// Sums SampleProcess over `roots` and their descendants (ok only if every one was
// readable): "memory figures include every process of the node".
ProcessSample SampleProcesses(const std::vector<pid_t>& roots);
KernelSample SampleKernel();
Sample TakeSample(const std::vector<pid_t>& pids);

nlohmann::json ToJson(const Sample& s);

// Machine description for reports: cores, CPU model, memory, kernel, OS, date (UTC).
nlohmann::json MachineInfo();

}  // namespace iris::bench
