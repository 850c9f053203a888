#include "server_probe.h"

#include <dirent.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <sstream>

#include "bench_connection.h"

namespace iris::bench {
namespace {

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "VmRSS:	  123456 kB" -> bytes.
uint64_t StatusKb(const std::string& status, const std::string& key) {
  const size_t at = status.find(key + ":");
  if (at == std::string::npos) return 0;
  std::istringstream in(status.substr(at + key.size() + 1));
  uint64_t kb = 0;
  in >> kb;
  return kb * 1024;
}

uint64_t CountDir(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d == nullptr) return 0;
  uint64_t n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

}  // namespace

ProcessSample SampleProcess(pid_t pid) {
  ProcessSample s;
  const std::string base = "/proc/" + std::to_string(pid);
  const std::string status = ReadWhole(base + "/status");
  const std::string stat = ReadWhole(base + "/stat");
  if (status.empty() || stat.empty()) return s;
  s.rss_bytes = StatusKb(status, "VmRSS");
  s.hwm_bytes = StatusKb(status, "VmHWM");
  const size_t th = status.find("Threads:");
  if (th != std::string::npos) s.threads = std::stoull(status.substr(th + 8));
  // Fields after the ")" that ends the command name: state is field 3; utime 14, stime 15.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return s;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  std::vector<std::string> fields;
  while (in >> field && fields.size() < 13) fields.push_back(field);
  if (fields.size() < 13) return s;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  s.cpu_user_s = static_cast<double>(std::stoull(fields[11])) / tick;
  s.cpu_sys_s = static_cast<double>(std::stoull(fields[12])) / tick;
  s.fds = CountDir(base + "/fd");
  s.ok = true;
  return s;
}

std::vector<pid_t> WithDescendants(const std::vector<pid_t>& pids) {
  std::vector<pid_t> out;
  std::vector<pid_t> todo(pids.begin(), pids.end());
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    if (std::find(out.begin(), out.end(), p) != out.end()) continue;
    out.push_back(p);
    const std::string task_dir = "/proc/" + std::to_string(p) + "/task";
    DIR* d = opendir(task_dir.c_str());
    if (d == nullptr) continue;
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::istringstream in(ReadWhole(task_dir + "/" + e->d_name + "/children"));
      pid_t child;
      while (in >> child) todo.push_back(child);
    }
    closedir(d);
  }
  return out;
}

ProcessSample SampleProcesses(const std::vector<pid_t>& roots) {
  const std::vector<pid_t> pids = WithDescendants(roots);
  ProcessSample sum;
  sum.ok = !pids.empty();
  sum.processes = pids.size();
  for (pid_t p : pids) {
    ProcessSample s = SampleProcess(p);
    sum.ok = sum.ok && s.ok;
    sum.rss_bytes += s.rss_bytes;
    sum.hwm_bytes += s.hwm_bytes;
    sum.cpu_user_s += s.cpu_user_s;
    sum.cpu_sys_s += s.cpu_sys_s;
    sum.threads += s.threads;
    sum.fds += s.fds;
  }
  return sum;
}

KernelSample SampleKernel() {
  KernelSample k;
  const std::string meminfo = ReadWhole("/proc/meminfo");
  k.slab_bytes = StatusKb(meminfo, "Slab");
  const std::string sockstat = ReadWhole("/proc/net/sockstat");
  const size_t tcp = sockstat.find("TCP:");
  if (tcp != std::string::npos) {
    std::istringstream in(sockstat.substr(tcp + 4, sockstat.find('\n', tcp) - tcp - 4));
    std::string key;
    uint64_t v = 0;
    while (in >> key >> v) {
      if (key == "inuse") k.tcp_inuse = v;
      if (key == "mem") k.tcp_mem_bytes = v * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    }
  }
  std::ifstream slab("/proc/slabinfo");
  std::string line;
  while (std::getline(slab, line)) {
    if (line.empty() || line[0] == '#' || line.rfind("slabinfo", 0) == 0) continue;
    std::istringstream in(line);
    std::string name;
    uint64_t active = 0, num = 0, size = 0;
    if (in >> name >> active >> num >> size) k.slab_caches[name] = num * size;
  }
  return k;
}

Sample TakeSample(const std::vector<pid_t>& pids) {
  Sample s;
  s.mono_ns = MonoNowNs();
  // Kernel first: counting a server's descriptors in /proc/PID/fd creates proc inodes and
  // dentries (slab) for each of them, which must not count as connection memory.
  s.kernel = SampleKernel();
  s.servers = SampleProcesses(pids);
  return s;
}

nlohmann::json ToJson(const Sample& s) {
  return {{"server_rss_bytes", s.servers.rss_bytes},
          {"server_hwm_bytes", s.servers.hwm_bytes},
          {"server_cpu_user_s", s.servers.cpu_user_s},
          {"server_cpu_sys_s", s.servers.cpu_sys_s},
          {"server_threads", s.servers.threads},
          {"server_fds", s.servers.fds},
          {"server_processes", s.servers.processes},
          {"kernel_slab_bytes", s.kernel.slab_bytes},
          {"kernel_tcp_mem_bytes", s.kernel.tcp_mem_bytes},
          {"kernel_tcp_inuse", s.kernel.tcp_inuse}};
}

nlohmann::json MachineInfo() {
  nlohmann::json m;
  m["cores"] = sysconf(_SC_NPROCESSORS_ONLN);
  const std::string cpuinfo = ReadWhole("/proc/cpuinfo");
  const size_t at = cpuinfo.find("model name");
  if (at != std::string::npos) {
    const size_t colon = cpuinfo.find(':', at);
    m["cpu"] = cpuinfo.substr(colon + 2, cpuinfo.find('\n', colon) - colon - 2);
  }
  m["memory_bytes"] = StatusKb(ReadWhole("/proc/meminfo"), "MemTotal");
  utsname u{};
  if (uname(&u) == 0) m["kernel"] = std::string(u.sysname) + " " + u.release;
  const std::string os = ReadWhole("/etc/os-release");
  const size_t pn = os.find("PRETTY_NAME=\"");
  if (pn != std::string::npos) m["os"] = os.substr(pn + 13, os.find('"', pn + 13) - pn - 13);
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  m["date"] = date;
  return m;
}

}  // namespace iris::bench
