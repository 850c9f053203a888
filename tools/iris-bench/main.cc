// iris-bench: load generator and single-node measurements for Iris (RFC-001 §4: NFR-1, 2, 4,
// 5, 19). It speaks the real protocol (TLS 1.3, HELLO with real HS256 JWTs, SEND/SEND_ACK,
// catch-up and DELIVER) from several event loops and several processes, and checks as it
// goes that every acknowledged message is delivered exactly once, in order per sender.
//
//   iris-bench --spawn-irisd build/src/server/irisd --scenario all
//   iris-bench --target 127.0.0.1:7443 --data-dir ./data --server-pid "$(pidof irisd)"
//              --scenario connections --sessions 18000
//
// Exit status: 0 every scenario ran and was correct; 1 a correctness violation (loss,
// duplicate, reordering, a dropped session, ...); 2 bad usage; 3 a scenario could not run.
// Timing never decides the exit status: targets are reported, not asserted.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench_connection.h"
#include "broadcast_load.h"
#include "irisd_process.h"
#include "report.h"
#include "server_probe.h"
#include "worker.h"

namespace iris::bench {

const char* ScenarioName(Scenario s) {
  switch (s) {
    case Scenario::kConnections: return "connections";
    case Scenario::kThroughput: return "throughput";
    case Scenario::kLatency: return "latency";
    case Scenario::kConnect: return "connect";
    case Scenario::kReconnectStorm: return "reconnect-storm";
  }
  return "?";
}

bool ParseScenario(const std::string& name, Scenario* out) {
  for (Scenario s : {Scenario::kConnections, Scenario::kThroughput, Scenario::kLatency,
                     Scenario::kConnect, Scenario::kReconnectStorm}) {
    if (name == ScenarioName(s)) {
      *out = s;
      return true;
    }
  }
  return false;
}

namespace {

std::string ReadSecret(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  *ok = in.good() || in.eof();
  *ok = *ok && !s.empty();
  if (!s.empty() && s.back() == '\n') s.pop_back();  // PROTOCOL.md §5: less one newline
  return s;
}

struct WorkerHandle {
  pid_t pid = -1;
  int up = -1;    // worker -> parent
  int down = -1;  // parent -> worker
  std::string buffer;
  std::string at_barrier;
  bool reported = false;
  bool gone = false;
  nlohmann::json report;
};

// Forks the workers of one scenario and coordinates them; fills data.samples/reports.
void Coordinate(const BenchOptions& o, const WorkerPlan& base, ScenarioData& data) {
  std::vector<WorkerHandle> workers(static_cast<size_t>(o.processes));
  for (int w = 0; w < o.processes; ++w) {
    int up[2], down[2];
    if (pipe(up) != 0 || pipe(down) != 0) {
      data.error = "pipe failed";
      break;
    }
    std::cout << std::flush;
    const pid_t pid = fork();
    if (pid == 0) {
      // Keep only this worker's two pipe ends: the parent must see EOF when any worker dies.
      for (int k = 0; k < w; ++k) {
        close(workers[static_cast<size_t>(k)].up);
        close(workers[static_cast<size_t>(k)].down);
      }
      close(up[0]);
      close(down[1]);
      WorkerPlan plan = base;
      plan.worker = w;
      _exit(RunWorker(o, plan, up[1], down[0]));
    }
    close(up[1]);
    close(down[0]);
    auto& h = workers[static_cast<size_t>(w)];
    h.pid = pid;
    h.up = up[0];
    h.down = down[1];
  }
  const double budget_s = 4 * o.timeout_s + o.hold_s + o.duration_s + 3 * o.drain_s + 120;
  const int64_t deadline = MonoNowNs() + static_cast<int64_t>(budget_s * 1e9);
  auto abort_all = [&](const std::string& why) {
    if (data.error.empty()) data.error = why;
    for (auto& h : workers) {
      if (h.down >= 0) WriteLine(h.down, "abort");
    }
  };
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<size_t> which;
    for (size_t i = 0; i < workers.size(); ++i) {
      if (!workers[i].gone && workers[i].up >= 0) {
        fds.push_back({workers[i].up, POLLIN, 0});
        which.push_back(i);
      }
    }
    if (fds.empty()) break;
    const int64_t left_ms = (deadline - MonoNowNs()) / 1'000'000;
    if (left_ms <= 0) {
      abort_all("the scenario did not finish within " + std::to_string(static_cast<int>(budget_s)) +
                " s");
      for (auto& h : workers) {
        if (!h.gone) kill(h.pid, SIGKILL);
        h.gone = true;
      }
      break;
    }
    if (poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(left_ms, 1000))) <= 0)
      continue;
    for (size_t f = 0; f < fds.size(); ++f) {
      if (fds[f].revents == 0) continue;
      WorkerHandle& h = workers[which[f]];
      char buf[65536];
      const ssize_t n = read(h.up, buf, sizeof(buf));
      if (n <= 0) {
        h.gone = true;
        if (!h.reported)
          abort_all("worker " + std::to_string(which[f]) + " exited without a report");
        continue;
      }
      h.buffer.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = h.buffer.find('\n')) != std::string::npos) {
        const std::string line = h.buffer.substr(0, nl);
        h.buffer.erase(0, nl + 1);
        nlohmann::json msg = nlohmann::json::parse(line, nullptr, false);
        if (msg.is_discarded()) continue;
        if (msg.contains("barrier")) {
          h.at_barrier = msg["barrier"].get<std::string>();
        } else if (msg.contains("report")) {
          h.reported = true;
          h.report = msg["report"];
        } else if (msg.contains("error")) {
          abort_all("worker " + std::to_string(which[f]) + ": " + msg["error"].get<std::string>());
        }
      }
    }
    // Everyone at the same barrier: sample the server at this moment, then release them.
    const std::string name = workers[0].at_barrier;
    bool all = !name.empty() && data.error.empty();
    for (const auto& h : workers) all = all && !h.gone && h.at_barrier == name;
    if (all) {
      data.samples[name] = TakeSample(data.server_pids);
      if (!o.quiet)
        std::cerr << "iris-bench: " << ScenarioName(data.scenario) << ": " << name << "\n";
      for (auto& h : workers) {
        h.at_barrier.clear();
        WriteLine(h.down, "go");
      }
    }
  }
  for (auto& h : workers) {
    int status = 0;
    if (h.pid > 0) waitpid(h.pid, &status, 0);
    if (h.up >= 0) close(h.up);
    if (h.down >= 0) close(h.down);
    if (h.reported) data.reports.push_back(std::move(h.report));
  }
  if (data.error.empty() && data.reports.size() != workers.size())
    data.error = "a worker did not report";
}

int Main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  BenchOptions o;
  for (int i = 0; i < argc; ++i) o.command_line.emplace_back(argv[i]);
  CLI::App app{"iris-bench: load generator and measurements for Iris servers", "iris-bench"};
  // A later flag overrides an earlier one (make bench BENCH_ARGS="--sessions 18000").
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string scenarios = "throughput";
  std::vector<int> pids;
  app.add_option(
         "--scenario", scenarios,
         "Comma-separated: connections, throughput, latency, connect, reconnect-storm, or all")
      ->capture_default_str();
  app.add_option("--target", o.targets, "Server host:port (repeatable)")->take_all();
  app.add_option("--data-dir", o.data_dirs,
                 "Server data directory: tls/server.crt and jwt.secret (one, or one per --target)")
      ->take_all();
  app.add_option("--ca-file", o.ca_file,
                 "Server certificate (overrides <data-dir>/tls/server.crt)");
  app.add_option("--jwt-secret-file", o.jwt_secret_file,
                 "Token secret (overrides <data-dir>/jwt.secret)");
  app.add_option(
         "--server-pid", pids,
         "Server process to measure (RSS, CPU), with its child processes; repeatable, summed")
      ->take_all();
  app.add_option("--spawn-irisd", o.spawn_irisd,
                 "Start this irisd afresh for every scenario (temporary data dir, loopback)");
  app.add_option("--irisd-arg", o.irisd_args, "Extra argument for the spawned irisd (repeatable)")
      ->allow_extra_args(false);
  app.add_option("--irisd-loops", o.irisd_loops, "--loops of the spawned irisd")
      ->capture_default_str();
  app.add_flag("--keep-data", o.keep_data, "Keep the spawned irisd's data directory and log");
  app.add_option("--processes", o.processes, "Load-generator processes (each <= 20,000 fds)")
      ->capture_default_str();
  app.add_option("--loops", o.loops, "Event-loop threads per process")->capture_default_str();
  app.add_option("--source-addresses", o.source_addresses,
                 "Loopback source addresses 127.0.0.2.. (each ~28,000 ports); 0 = kernel's choice")
      ->capture_default_str();
  app.add_option("--concurrency", o.concurrency, "Connection attempts in flight per process")
      ->capture_default_str();
  app.add_option("--user-base", o.user_base, "First user id (0 = derived from the time)");
  app.add_option("--keepalive-ms", o.keepalive_ms, "PING an idle session this often")
      ->capture_default_str();
  app.add_option(
      "--tls13-ciphersuites", o.tls13_ciphersuites,
      "TLS 1.3 suites the client offers, e.g. TLS_CHACHA20_POLY1305_SHA256 (memory per suite)");
  app.add_option("--timeout-s", o.timeout_s, "Deadline for establishing sessions")
      ->capture_default_str();
  app.add_option("--sessions", o.sessions, "connections: idle sessions to open")
      ->capture_default_str();
  app.add_option("--hold-s", o.hold_s, "connections: how long to hold them")->capture_default_str();
  app.add_option("--connects", o.connects, "connect: connections to make")->capture_default_str();
  app.add_option("--connect-concurrency", o.connect_concurrency, "connect: attempts in flight")
      ->capture_default_str();
  app.add_option("--storm-sessions", o.storm_sessions, "reconnect-storm: sessions to drop")
      ->capture_default_str();
  app.add_option("--storm-concurrency", o.storm_concurrency,
                 "reconnect-storm: reconnect attempts in flight per process")
      ->capture_default_str();
  app.add_option("--pairs", o.pairs, "throughput/latency: sender -> recipient pairs")
      ->capture_default_str();
  app.add_option("--duration-s", o.duration_s, "throughput/latency: measured time")
      ->capture_default_str();
  app.add_option("--window", o.window, "throughput: SENDs in flight per sender")
      ->capture_default_str();
  app.add_option("--rate", o.rate, "latency: offered messages per second (all senders)")
      ->capture_default_str();
  app.add_option("--broadcast-members", o.broadcast_members,
                 "latency: fan a broadcast group of this many members out during the load "
                 "(owner included; at most 10000); 0 = none")
      ->capture_default_str();
  app.add_option("--broadcast-after-s", o.broadcast_after_s,
                 "latency: seconds after the load starts to send the broadcast")
      ->capture_default_str();
  app.add_option("--body-bytes", o.body_bytes, "Message body size (>= 16)")->capture_default_str();
  app.add_option("--drain-s", o.drain_s, "Wait this long for outstanding replies and deliveries")
      ->capture_default_str();
  app.add_option("--json", o.json_file, "Write the results as JSON to this file (- = stdout)");
  app.add_flag("--quiet", o.quiet, "No progress lines on stderr");
  app.add_option("--inject-drop-delivery", o.inject_drop_delivery,
                 "Checker self-test: ignore the n-th delivery (must be reported as a loss)");
  app.add_option("--inject-duplicate-delivery", o.inject_duplicate_delivery,
                 "Checker self-test: process the n-th delivery twice (must be reported)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  for (int p : pids) o.server_pids.push_back(static_cast<pid_t>(p));
  std::stringstream ss(scenarios);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "all") {
      o.scenarios = {Scenario::kConnect, Scenario::kConnections, Scenario::kThroughput,
                     Scenario::kLatency, Scenario::kReconnectStorm};
      continue;
    }
    Scenario s;
    if (!ParseScenario(item, &s)) {
      std::cerr << "iris-bench: unknown scenario '" << item << "'\n";
      return 2;
    }
    o.scenarios.push_back(s);
  }
  auto usage = [](const std::string& m) {
    std::cerr << "iris-bench: " << m << "\n";
    return 2;
  };
  if (o.scenarios.empty()) return usage("no scenario");
  if (o.spawn_irisd.empty() && o.targets.empty())
    return usage("give --target (and --data-dir) or --spawn-irisd");
  if (!o.spawn_irisd.empty() && !o.targets.empty())
    return usage("--target and --spawn-irisd exclude each other");
  if (o.processes < 1 || o.loops < 1 || o.body_bytes < 16 || o.body_bytes > 64000 || o.pairs < 1 ||
      o.window < 1 || o.source_addresses < 0 || o.source_addresses > 250) {
    return usage(
        "--processes, --loops, --pairs, --window >= 1; 16 <= --body-bytes <= 64000; "
        "--source-addresses <= 250");
  }
  // Each process may hold at most 20,000 descriptors: sessions kept open must fit.
  const auto per_process = [&o](int n) { return (n + o.processes - 1) / o.processes; };
  for (Scenario s : o.scenarios) {
    int held = 0;
    if (s == Scenario::kConnections) held = o.sessions;
    if (s == Scenario::kReconnectStorm) held = o.storm_sessions;
    if (s == Scenario::kThroughput || s == Scenario::kLatency) held = 2 * o.pairs;
    if (per_process(held) > 19'500) {
      return usage(std::string(ScenarioName(s)) + ": " + std::to_string(per_process(held)) +
                   " sessions per process exceed the 20,000-descriptor limit; raise --processes");
    }
  }
  if (o.user_base == 0) {
    o.user_base = static_cast<uint64_t>(time(nullptr)) % 100'000 * 100'000'000 + 1'000'000;
  }

  nlohmann::json doc = {
      {"tool", "iris-bench"}, {"command", o.command_line}, {"machine", MachineInfo()}};
  doc["scenarios"] = nlohmann::json::array();
  bool all_correct = true;
  bool all_ran = true;
  for (size_t si = 0; si < o.scenarios.size(); ++si) {
    ScenarioData data;
    data.scenario = o.scenarios[si];
    data.index = static_cast<int>(si);
    WorkerPlan plan;
    plan.scenario = data.scenario;
    plan.scenario_index = data.index;
    plan.user_base = o.user_base;
    IrisdProcess irisd;
    std::vector<std::string> dirs = o.data_dirs;
    if (!o.spawn_irisd.empty()) {
      Status s = irisd.Start(o.spawn_irisd, o.irisd_loops, o.irisd_args);
      if (!s.ok()) {
        data.error = s.ToString();
      } else {
        plan.targets = {"127.0.0.1:" + std::to_string(irisd.port())};
        dirs = {irisd.data_dir()};
        data.server_pids = {irisd.pid()};
        data.spawned = true;
      }
    } else {
      plan.targets = o.targets;
      data.server_pids = o.server_pids;
    }
    data.targets = plan.targets;
    if (data.error.empty()) {
      for (size_t t = 0; t < plan.targets.size(); ++t) {
        const std::string dir =
            dirs.empty() ? "" : dirs[dirs.size() == 1 ? 0 : std::min(t, dirs.size() - 1)];
        const std::string cert = !o.ca_file.empty() ? o.ca_file : dir + "/tls/server.crt";
        const std::string secret_file =
            !o.jwt_secret_file.empty() ? o.jwt_secret_file : dir + "/jwt.secret";
        bool ok = false;
        const std::string secret = ReadSecret(secret_file, &ok);
        if (!ok) {
          data.error = "cannot read the token secret " + secret_file +
                       " (give --data-dir or --jwt-secret-file)";
          break;
        }
        plan.certs.push_back(cert);
        plan.secrets.push_back(secret);
      }
    }
    std::optional<BroadcastLoad> broadcast;
    if (data.error.empty() && data.scenario == Scenario::kLatency && o.broadcast_members > 0) {
      // Users far above the load's own (user_base + its sessions).
      broadcast.emplace();
      Status b = broadcast->Prepare(plan.targets[0], plan.certs[0], plan.secrets[0],
                                    o.user_base + 50'000'000, o.broadcast_members);
      if (!b.ok()) {
        data.error = "broadcast group: " + b.ToString();
      } else {
        broadcast->Start(o.broadcast_after_s);
      }
    }
    if (data.error.empty()) Coordinate(o, plan, data);
    nlohmann::json broadcast_report;
    if (broadcast) broadcast_report = broadcast->Finish(120);
    if (data.spawned) {
      // Keep the data directory (and irisd.log) when asked, when the run failed, or when
      // irisd did not shut down cleanly; the last is reported, not counted as a failure of
      // the measurement.
      const int status = irisd.Stop(true);
      const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!clean) {
        data.server_warning = "irisd did not exit cleanly after SIGTERM (wait status " +
                              std::to_string(status) + "); log in " + irisd.data_dir() +
                              "/irisd.log";
      }
      if (clean && data.error.empty() && !o.keep_data) {
        std::error_code ec;
        std::filesystem::remove_all(irisd.data_dir(), ec);
      }
    }
    ScenarioOutcome out = Summarize(o, data);
    std::cout << out.table << std::flush;
    if (!broadcast_report.is_null()) {
      out.json["broadcast"] = broadcast_report;
      std::cout << "broadcast during the load: " << broadcast_report.dump() << "\n" << std::flush;
    }
    all_ran = all_ran && data.error.empty();
    all_correct = all_correct && out.correct;
    doc["scenarios"].push_back(out.json);
  }
  doc["success"] = all_correct && all_ran;
  if (!o.json_file.empty()) {
    if (o.json_file == "-") {
      std::cout << doc.dump(2) << "\n";
    } else {
      std::ofstream f(o.json_file);
      f << doc.dump(2) << "\n";
      if (!f.good()) {
        std::cerr << "iris-bench: cannot write " << o.json_file << "\n";
        return 3;
      }
    }
  }
  if (!all_ran) return 3;
  return all_correct ? 0 : 1;
}

}  // namespace
}  // namespace iris::bench

int main(int argc, char** argv) { return iris::bench::Main(argc, argv); }
