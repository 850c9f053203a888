#include "obs/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/assert.h"

namespace iris::obs {
namespace {

double PageSize() { return static_cast<double>(sysconf(_SC_PAGESIZE)); }
double TicksPerSecond() { return static_cast<double>(sysconf(_SC_CLK_TCK)); }

// Fields of /proc/self/stat after the command name, which may contain spaces; index 0 is
// field 3 (state) in proc(5) numbering.
std::vector<std::string> StatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  std::vector<std::string> fields;
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  std::string f;
  while (rest >> f) fields.push_back(f);
  return fields;
}

double StatField(size_t proc5_index) {
  const std::vector<std::string> fields = StatFields();
  if (fields.size() <= proc5_index - 3) return std::nan("");
  return std::strtod(fields[proc5_index - 3].c_str(), nullptr);
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double v = 0;
      in >> v;
      return v;
    }
    in.ignore(1 << 20, '\n');
  }
  return std::nan("");
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return std::nan("");
  double n = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the directory stream's own descriptor
}

}  // namespace

void AddProcessMetrics(Registry& registry) {
  registry.AddCallbackGauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                            [] { return StatField(24) * PageSize(); });
  registry.AddCallbackGauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            [] { return StatField(23); });
  registry.AddCallbackGauge("process_open_fds", "Number of open file descriptors.", OpenFds);
  registry.AddCallbackGauge("process_max_fds", "Maximum number of open file descriptors.", [] {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return std::nan("");
    return static_cast<double>(lim.rlim_cur);
  });
  registry.AddCallbackCounter("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.",
                              [] { return (StatField(14) + StatField(15)) / TicksPerSecond(); });
  const double start = BootTimeSeconds() + StatField(22) / TicksPerSecond();
  registry.AddCallbackGauge("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            [start] { return start; });
  registry.AddCallbackCounter("iris_bugs_total",
                              "IRIS_BUG reports: should-never-happen conditions survived.",
                              [] { return static_cast<double>(BugCount()); });
}

}  // namespace iris::obs
