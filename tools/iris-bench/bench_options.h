#pragma once
// iris-bench options (the command line; see --help) and the scenarios it runs.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace iris::bench {

enum class Scenario { kConnections, kThroughput, kLatency, kConnect, kReconnectStorm };

const char* ScenarioName(Scenario s);
// "connections", "throughput", "latency", "connect", "reconnect-storm"; false if unknown.
bool ParseScenario(const std::string& name, Scenario* out);

struct BenchOptions {
  std::vector<Scenario> scenarios;

  // Servers. Connection i goes to targets[i % targets.size()] (a throughput pair's two
  // sessions always share a target). data_dirs[i] (or the only one) gives that target's
  // certificate (tls/server.crt) and token secret (jwt.secret).
  std::vector<std::string> targets;
  std::vector<std::string> data_dirs;
  std::string ca_file;             // overrides <data-dir>/tls/server.crt
  std::string jwt_secret_file;     // overrides <data-dir>/jwt.secret
  std::vector<pid_t> server_pids;  // RSS and CPU are summed over these

  // Start a fresh irisd for every scenario (temporary data directory, loopback, limits
  // raised for load) instead of using targets.
  std::string spawn_irisd;
  std::vector<std::string> irisd_args;
  int irisd_loops = 2;
  bool keep_data = false;

  // Load generator shape.
  int processes = 1;
  int loops = 2;             // event-loop threads per process
  int source_addresses = 4;  // 127.0.0.2 .. 127.0.0.(1+n); 0 = let the kernel choose
  int concurrency = 256;     // connection attempts in flight per process
  uint64_t user_base = 0;    // 0 = derived from the time (fresh inboxes every run)
  int keepalive_ms = 10'000;
  double timeout_s = 120;          // establishing deadline per phase
  std::string tls13_ciphersuites;  // offered by the client (OpenSSL names); "" = default

  // connections
  int sessions = 1000;
  double hold_s = 5;
  // connect
  int connects = 2000;
  int connect_concurrency = 16;
  // reconnect-storm
  int storm_sessions = 2000;
  int storm_concurrency = 1024;
  // throughput / latency
  int pairs = 100;
  double duration_s = 10;
  int window = 32;     // throughput: SENDs in flight per sender
  double rate = 2000;  // latency: offered messages per second, all senders together
  // latency: a broadcast group of this many members (owner included) fanned out during the
  // load, broadcast_after_s after it starts (broadcast_load.h); 0 = none.
  uint32_t broadcast_members = 0;
  double broadcast_after_s = 2;
  int body_bytes = 100;
  double drain_s = 20;

  // Output.
  std::string json_file;  // "-" = stdout
  bool quiet = false;

  // Self-test of the checker (tests only): the recipient drops / repeats its n-th delivery
  // (1-based) as if the server had lost / duplicated it. 0 = off.
  uint64_t inject_drop_delivery = 0;
  uint64_t inject_duplicate_delivery = 0;

  std::vector<std::string> command_line;
};

}  // namespace iris::bench
