#include "report.h"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "histogram.h"

namespace iris::bench {
namespace {

using nlohmann::json;

struct Merged {
  std::map<std::string, uint64_t> counters;
  std::map<std::string, uint64_t> failures;
  std::map<std::string, uint64_t> violations;
  std::vector<std::string> examples;
  std::map<std::string, LatencyHistogram> histograms;
  double client_cpu_s = 0;
  uint64_t client_rss = 0;
};

Merged Merge(const std::vector<json>& reports) {
  Merged m;
  for (const auto& r : reports) {
    for (const auto& [k, v] : r["counters"].items()) m.counters[k] += v.get<uint64_t>();
    for (const auto& [k, v] : r["failures"].items()) m.failures[k] += v.get<uint64_t>();
    for (const auto& [k, v] : r["violations"].items()) {
      if (k == "examples") {
        for (const auto& e : v) {
          if (m.examples.size() < 20) m.examples.push_back(e.get<std::string>());
        }
      } else {
        m.violations[k] += v.get<uint64_t>();
      }
    }
    for (const auto& [k, v] : r["histograms"].items()) {
      m.histograms[k].Merge(LatencyHistogram::FromJson(v));
    }
    m.client_cpu_s += r["rusage"]["user_s"].get<double>() + r["rusage"]["sys_s"].get<double>();
    m.client_rss += r["rusage"]["maxrss_bytes"].get<uint64_t>();
  }
  return m;
}

// Sums a numeric field of phases[phase] over the workers (or min/max for time stamps).
uint64_t SumPhase(const std::vector<json>& reports, const std::string& phase,
                  const std::string& field) {
  uint64_t s = 0;
  for (const auto& r : reports) {
    if (r["phases"].contains(phase)) s += r["phases"][phase].value(field, uint64_t{0});
  }
  return s;
}
int64_t MinPhase(const std::vector<json>& reports, const std::string& phase,
                 const std::string& field) {
  int64_t v = INT64_MAX;
  for (const auto& r : reports) {
    if (r["phases"].contains(phase)) v = std::min(v, r["phases"][phase].value(field, INT64_MAX));
  }
  return v == INT64_MAX ? 0 : v;
}
int64_t MaxPhase(const std::vector<json>& reports, const std::string& phase,
                 const std::string& field) {
  int64_t v = 0;
  for (const auto& r : reports) {
    if (r["phases"].contains(phase)) v = std::max(v, r["phases"][phase].value(field, int64_t{0}));
  }
  return v;
}
bool AllTrue(const std::vector<json>& reports, const std::string& phase) {
  for (const auto& r : reports) {
    if (!r["phases"].value(phase, false)) return false;
  }
  return true;
}

std::string Fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), f, v);
  return b;
}
std::string Bytes(double b) {
  if (b >= 1024.0 * 1024 * 1024) return Fmt("%.2f GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return Fmt("%.1f MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return Fmt("%.1f KiB", b / 1024.0);
  return Fmt("%.0f B", b);
}
std::string Ms(int64_t ns) { return Fmt("%.2f", static_cast<double>(ns) / 1e6); }

json Percentiles(const LatencyHistogram& h) {
  return {{"count", h.count()},
          {"p50_ms", static_cast<double>(h.Percentile(0.50)) / 1e6},
          {"p90_ms", static_cast<double>(h.Percentile(0.90)) / 1e6},
          {"p99_ms", static_cast<double>(h.Percentile(0.99)) / 1e6},
          {"p999_ms", static_cast<double>(h.Percentile(0.999)) / 1e6},
          {"max_ms", static_cast<double>(h.max()) / 1e6},
          {"mean_ms", h.mean() / 1e6}};
}
std::string PercentileRow(const LatencyHistogram& h) {
  if (h.count() == 0) return "-";
  return "P50 " + Ms(h.Percentile(0.5)) + "  P90 " + Ms(h.Percentile(0.9)) + "  P99 " +
         Ms(h.Percentile(0.99)) + "  P99.9 " + Ms(h.Percentile(0.999)) + "  max " + Ms(h.max()) +
         " ms  (n=" + std::to_string(h.count()) + ")";
}

class Table {
 public:
  void Row(const std::string& name, const std::string& value, const std::string& target = "") {
    rows_.push_back({name, value, target});
  }
  std::string Render(const std::string& title) const {
    std::ostringstream o;
    o << "\n== " << title << " ==\n";
    for (const auto& r : rows_) {
      char b[64];
      std::snprintf(b, sizeof(b), "  %-26s ", r[0].c_str());
      o << b << r[1];
      if (!r[2].empty()) o << "   [" << r[2] << "]";
      o << "\n";
    }
    return o.str();
  }

 private:
  std::vector<std::array<std::string, 3>> rows_;
};

std::string Verdict(bool met) { return met ? "met" : "NOT met"; }

}  // namespace

ScenarioOutcome Summarize(const BenchOptions& o, const ScenarioData& d) {
  ScenarioOutcome out;
  Table t;
  json& j = out.json;
  j["scenario"] = ScenarioName(d.scenario);
  j["targets"] = d.targets;
  j["server_pids"] = d.server_pids;
  j["spawned_irisd"] = d.spawned;
  j["shape"] = {{"processes", o.processes},
                {"loops_per_process", o.loops},
                {"source_addresses", o.source_addresses}};
  json samples = json::object();
  for (const auto& [k, s] : d.samples) samples[k] = ToJson(s);
  j["samples"] = samples;
  if (!d.error.empty()) {
    j["error"] = d.error;
    j["ok"] = false;
    t.Row("error", d.error);
    out.table = t.Render(std::string(ScenarioName(d.scenario)) + ": FAILED TO RUN");
    return out;
  }
  const Merged m = Merge(d.reports);
  auto hist = [&m](const std::string& k) {
    auto it = m.histograms.find(k);
    return it == m.histograms.end() ? LatencyHistogram() : it->second;
  };
  auto sample = [&d](const std::string& k) {
    auto it = d.samples.find(k);
    return it == d.samples.end() ? Sample() : it->second;
  };
  const bool have_server = !d.server_pids.empty() && sample("start").servers.ok;
  uint64_t violations_total = 0;
  for (const auto& [k, v] : m.violations) violations_total += v;
  json results;
  const std::string shape = std::to_string(o.processes) + " process(es) x " +
                            std::to_string(o.loops) + " loops, " +
                            std::to_string(o.source_addresses) + " source addresses";

  // Establishing sessions: every scenario begins with it.
  const uint64_t planned = SumPhase(d.reports, "establish", "planned");
  const uint64_t ready = SumPhase(d.reports, "establish", "ready");
  const uint64_t failed = SumPhase(d.reports, "establish", "failed");
  const int64_t est_ns = MaxPhase(d.reports, "establish", "last_ready_ns") -
                         MinPhase(d.reports, "establish", "first_start_ns");
  const double est_rate =
      est_ns > 0 ? static_cast<double>(ready) / (static_cast<double>(est_ns) / 1e9) : 0;
  results["sessions_planned"] = planned;
  results["sessions_established"] = ready;
  results["sessions_failed"] = failed;
  results["establish_seconds"] = static_cast<double>(est_ns) / 1e9;
  results["establish_per_second"] = est_rate;
  const std::string est_row = std::to_string(ready) + " / " + std::to_string(planned) + " (" +
                              std::to_string(failed) + " failed) in " +
                              Fmt("%.2f", static_cast<double>(est_ns) / 1e9) +
                              " s = " + Fmt("%.0f", est_rate) + " /s";

  const Sample s_start = sample("start");
  switch (d.scenario) {
    case Scenario::kConnections: {
      const Sample s_est = sample("established"), s_held = sample("held");
      t.Row("sessions (idle, authed)", est_row);
      results["connect_welcome"] = Percentiles(hist("connect_welcome"));
      t.Row("connect latency", PercentileRow(hist("connect_welcome")));
      if (have_server) {
        const double before = static_cast<double>(s_start.servers.rss_bytes);
        const double at = static_cast<double>(s_est.servers.rss_bytes);
        const double held = static_cast<double>(s_held.servers.rss_bytes);
        const double per = ready > 0 ? (at - before) / static_cast<double>(ready) : 0;
        const double per_held = ready > 0 ? (held - before) / static_cast<double>(ready) : 0;
        results["server_rss_before_bytes"] = s_start.servers.rss_bytes;
        results["server_rss_established_bytes"] = s_est.servers.rss_bytes;
        results["server_rss_held_bytes"] = s_held.servers.rss_bytes;
        results["server_rss_per_connection_bytes"] = per;
        results["server_rss_per_connection_held_bytes"] = per_held;
        results["nfr19_target_bytes"] = 10 * 1024;
        results["nfr19_met"] = per_held <= 10 * 1024;
        t.Row("server RSS", "before " + Bytes(before) + ", established " + Bytes(at) +
                                ", after hold " + Bytes(held));
        t.Row("server RSS / connection",
              Bytes(per) + " (after " + Fmt("%.0f", o.hold_s) + " s hold: " + Bytes(per_held) + ")",
              "NFR-19 <= 10 KiB: " + Verdict(per_held <= 10 * 1024));
        t.Row("server fds", std::to_string(s_est.servers.fds) + " in " +
                                std::to_string(s_est.servers.processes) + " process(es)");
      }
      const double slab = static_cast<double>(s_est.kernel.slab_bytes) -
                          static_cast<double>(s_start.kernel.slab_bytes);
      const double tcpmem = static_cast<double>(s_est.kernel.tcp_mem_bytes) -
                            static_cast<double>(s_start.kernel.tcp_mem_bytes);
      results["kernel_slab_delta_bytes"] = slab;
      results["kernel_tcp_buffer_delta_bytes"] = tcpmem;
      if (ready > 0) {
        t.Row("kernel slab / connection",
              Bytes(slab / static_cast<double>(ready)) + " (both ends of loopback, machine-wide)");
        t.Row("kernel TCP buffers / conn", Bytes(tcpmem / static_cast<double>(ready)));
      }
      // The slab caches that grew most (readable as root).
      std::vector<std::pair<double, std::string>> grew;
      for (const auto& [name, bytes] : s_est.kernel.slab_caches) {
        auto it = s_start.kernel.slab_caches.find(name);
        const double delta =
            static_cast<double>(bytes) -
            static_cast<double>(it == s_start.kernel.slab_caches.end() ? 0 : it->second);
        if (delta > 0) grew.push_back({delta, name});
      }
      std::sort(grew.rbegin(), grew.rend());
      json caches = json::object();
      std::string top;
      for (size_t i = 0; i < grew.size() && i < 8; ++i) {
        caches[grew[i].second] = grew[i].first;
        if (ready > 0) {
          top += (i ? ", " : "") + grew[i].second + " " +
                 Bytes(grew[i].first / static_cast<double>(ready));
        }
      }
      results["kernel_slab_caches_delta_bytes"] = caches;
      if (!top.empty()) t.Row("slab caches / connection", top);
      results["client_rss_bytes"] = m.client_rss;
      if (ready > 0) {
        t.Row("client RSS / connection",
              Bytes(static_cast<double>(m.client_rss) / static_cast<double>(ready)) +
                  " (load generator, all processes)");
      }
      break;
    }
    case Scenario::kConnect: {
      t.Row("connects", est_row + " (concurrency " + std::to_string(o.connect_concurrency) + ")");
      for (const char* k : {"connect_tcp", "connect_tls", "connect_welcome", "connect_ready"}) {
        results[k] = Percentiles(hist(k));
      }
      const LatencyHistogram w = hist("connect_welcome");
      const bool met = w.count() > 0 && w.Percentile(0.99) <= 100'000'000;
      results["nfr1_met"] = met;
      t.Row("TCP connected", PercentileRow(hist("connect_tcp")));
      t.Row("+ TLS 1.3 handshake", PercentileRow(hist("connect_tls")));
      t.Row("+ HELLO -> WELCOME", PercentileRow(w), "NFR-1 P99 <= 100 ms: " + Verdict(met));
      t.Row("+ catch-up (SYNC_DONE)", PercentileRow(hist("connect_ready")));
      if (have_server) {
        const Sample s_done = sample("done");
        const double cpu = (s_done.servers.cpu_user_s + s_done.servers.cpu_sys_s) -
                           (s_start.servers.cpu_user_s + s_start.servers.cpu_sys_s);
        results["server_cpu_s"] = cpu;
        if (ready > 0) {
          results["server_cpu_per_connect_us"] = cpu / static_cast<double>(ready) * 1e6;
          t.Row("server CPU / connect", Fmt("%.0f us", cpu / static_cast<double>(ready) * 1e6));
        }
      }
      break;
    }
    case Scenario::kThroughput:
    case Scenario::kLatency: {
      t.Row("sessions", est_row);
      const uint64_t acked =
          SumPhase(d.reports, "window_end", "acked") - SumPhase(d.reports, "window_start", "acked");
      const uint64_t delivered = SumPhase(d.reports, "window_end", "delivered") -
                                 SumPhase(d.reports, "window_start", "delivered");
      const uint64_t sent =
          SumPhase(d.reports, "window_end", "sent") - SumPhase(d.reports, "window_start", "sent");
      const int64_t win_ns = MaxPhase(d.reports, "window_end", "mono_ns") -
                             MinPhase(d.reports, "window_start", "mono_ns");
      const double win_s = static_cast<double>(win_ns) / 1e9;
      const double ack_rate = win_s > 0 ? static_cast<double>(acked) / win_s : 0;
      const double del_rate = win_s > 0 ? static_cast<double>(delivered) / win_s : 0;
      results["pairs"] = o.pairs;
      results["body_bytes"] = o.body_bytes;
      results["window_seconds"] = win_s;
      results["sent_in_window"] = sent;
      results["acked_in_window"] = acked;
      results["delivered_in_window"] = delivered;
      results["acked_per_second"] = ack_rate;
      results["delivered_per_second"] = del_rate;
      results["total_sent"] = m.counters.count("sent") ? m.counters.at("sent") : 0;
      results["total_acked"] = m.counters.count("acked") ? m.counters.at("acked") : 0;
      results["total_refused"] = m.counters.count("refused") ? m.counters.at("refused") : 0;
      results["total_delivered"] = m.counters.count("delivered") ? m.counters.at("delivered") : 0;
      results["drained"] = AllTrue(d.reports, "drained");
      results["send_ack"] = Percentiles(hist("send_ack"));
      results["deliver"] = Percentiles(hist("deliver"));
      if (d.scenario == Scenario::kThroughput) {
        t.Row("load", std::to_string(o.pairs) + " senders -> " + std::to_string(o.pairs) +
                          " recipients, " + std::to_string(o.window) + " SENDs in flight each, " +
                          std::to_string(o.body_bytes) + " B bodies, " + Fmt("%.1f s", win_s));
        t.Row("acknowledged (durable)", Fmt("%.0f msg/s", ack_rate),
              "NFR-5 >= 100,000 msg/s: " + Verdict(ack_rate >= 100'000));
        t.Row("delivered", Fmt("%.0f msg/s", del_rate));
      } else {
        results["offered_per_second"] = o.rate;
        t.Row("load", Fmt("%.0f msg/s offered (open loop), ", o.rate) + std::to_string(o.pairs) +
                          " senders -> " + std::to_string(o.pairs) + " recipients, " +
                          std::to_string(o.body_bytes) + " B bodies, " + Fmt("%.1f s", win_s));
        t.Row("acknowledged", Fmt("%.0f msg/s", ack_rate));
      }
      const LatencyHistogram ack = hist("send_ack"), del = hist("deliver");
      const bool ack_met = ack.count() > 0 && ack.Percentile(0.99) <= 100'000'000;
      const bool del_met = del.count() > 0 && del.Percentile(0.99) <= 100'000'000;
      results["nfr2_met"] = ack_met && del_met;
      t.Row("send -> SEND_ACK", PercentileRow(ack),
            d.scenario == Scenario::kLatency ? "NFR-2 P99 <= 100 ms: " + Verdict(ack_met) : "");
      t.Row("send -> DELIVER", PercentileRow(del),
            d.scenario == Scenario::kLatency ? "NFR-2 P99 <= 100 ms: " + Verdict(del_met) : "");
      if (have_server) {
        const Sample a = sample("established"), b = sample("measured");
        const double cpu = (b.servers.cpu_user_s + b.servers.cpu_sys_s) -
                           (a.servers.cpu_user_s + a.servers.cpu_sys_s);
        const double wall = static_cast<double>(b.mono_ns - a.mono_ns) / 1e9;
        results["server_cpu_s"] = cpu;
        results["server_cpu_user_s"] = b.servers.cpu_user_s - a.servers.cpu_user_s;
        results["server_cpu_sys_s"] = b.servers.cpu_sys_s - a.servers.cpu_sys_s;
        results["server_cores_busy"] = wall > 0 ? cpu / wall : 0;
        if (acked > 0) {
          results["server_cpu_per_message_us"] = cpu / static_cast<double>(acked) * 1e6;
          t.Row("server CPU / message",
                Fmt("%.1f us", cpu / static_cast<double>(acked) * 1e6) +
                    Fmt(" (%.2f cores busy", wall > 0 ? cpu / wall : 0) +
                    Fmt(", %.0f%% in the kernel)",
                        cpu > 0 ? 100 * (b.servers.cpu_sys_s - a.servers.cpu_sys_s) / cpu : 0));
        }
      }
      if (!results["drained"].get<bool>()) {
        t.Row("drain", "NOT complete after " + Fmt("%.0f s", o.drain_s) +
                           ": unanswered/undelivered messages counted below");
      }
      break;
    }
    case Scenario::kReconnectStorm: {
      t.Row("sessions before the drop", est_row);
      const uint64_t k = SumPhase(d.reports, "storm", "planned");
      const uint64_t ok = SumPhase(d.reports, "storm", "ready");
      const uint64_t bad = SumPhase(d.reports, "storm", "failed");
      const int64_t ns = MaxPhase(d.reports, "storm", "last_ready_ns") -
                         MinPhase(d.reports, "storm", "first_start_ns");
      const double rate = ns > 0 ? static_cast<double>(ok) / (static_cast<double>(ns) / 1e9) : 0;
      const double ratio = k > 0 ? static_cast<double>(ok) / static_cast<double>(k) : 0;
      const uint64_t attempts = m.counters.count("attempts") ? m.counters.at("attempts") : 0;
      results["dropped"] = k;
      results["reconnected"] = ok;
      results["gave_up"] = bad;
      results["storm_seconds"] = static_cast<double>(ns) / 1e9;
      results["reconnects_per_second"] = rate;
      results["success_ratio"] = ratio;
      results["attempts_total"] = attempts;
      results["reconnect"] = Percentiles(hist("reconnect"));
      results["drained"] = AllTrue(d.reports, "drained");
      t.Row("dropped at once", std::to_string(k) + " sessions (abortive close, RST)");
      t.Row("reconnected",
            std::to_string(ok) + " in " + Fmt("%.2f s", static_cast<double>(ns) / 1e9) + " = " +
                Fmt("%.0f /s", rate) + Fmt(", success ratio %.4f", ratio),
            "NFR-4 100,000/s: " + Verdict(rate >= 100'000));
      t.Row("attempts (incl. initial)", std::to_string(attempts) + " (concurrency " +
                                            std::to_string(o.storm_concurrency) + ")");
      t.Row("drop -> session ready", PercentileRow(hist("reconnect")));
      t.Row("messages across the drop",
            std::to_string(m.counters.count("acked") ? m.counters.at("acked") : 0) +
                " acknowledged, " +
                std::to_string(m.counters.count("delivered") ? m.counters.at("delivered") : 0) +
                " delivered exactly once (catch-up or push)");
      if (have_server) {
        const Sample a = sample("established"), b = sample("reconnected");
        const double cpu = (b.servers.cpu_user_s + b.servers.cpu_sys_s) -
                           (a.servers.cpu_user_s + a.servers.cpu_sys_s);
        results["server_cpu_s"] = cpu;
        if (ok > 0)
          t.Row("server CPU / reconnect", Fmt("%.0f us", cpu / static_cast<double>(ok) * 1e6));
      }
      break;
    }
  }
  if (have_server) {
    results["server_rss_end_bytes"] = sample(d.samples.rbegin()->first).servers.rss_bytes;
  }
  results["client_cpu_s"] = m.client_cpu_s;
  results["counters"] = m.counters;
  j["results"] = results;
  j["failures"] = m.failures;
  json v = m.violations;
  v["examples"] = m.examples;
  j["violations"] = v;
  out.correct = violations_total == 0 && ready > 0;
  j["ok"] = out.correct;

  if (!m.failures.empty()) {
    std::string f;
    for (const auto& [reason, n] : m.failures)
      f += (f.empty() ? "" : "; ") + reason + " x" + std::to_string(n);
    t.Row("connection failures", f);
  }
  std::string errors;
  for (const auto& [name, n] : m.counters) {
    if (name.rfind("send_refused_", 0) == 0 || name.rfind("error_", 0) == 0) {
      errors += (errors.empty() ? "" : ", ") + name + " x" + std::to_string(n);
    }
  }
  if (!errors.empty()) t.Row("ERROR replies", errors);
  t.Row("client CPU", Fmt("%.1f s (load generator, whole scenario)", m.client_cpu_s));
  if (!d.server_warning.empty()) {
    j["server_warning"] = d.server_warning;
    t.Row("WARNING", d.server_warning);
  }
  if (out.correct) {
    t.Row("correctness", "PASS: nothing lost, duplicated or reordered; sessions stayed up");
  } else {
    std::string what;
    for (const auto& [k2, n] : m.violations) {
      if (n > 0) what += (what.empty() ? "" : ", ") + k2 + " " + std::to_string(n);
    }
    if (ready == 0) what += (what.empty() ? "" : ", ") + std::string("no session established");
    t.Row("correctness", "FAIL: " + what);
    for (const auto& e : m.examples) t.Row("", e);
  }
  std::string title = std::string(ScenarioName(d.scenario)) + " (" + shape;
  if (!d.server_pids.empty()) {
    title += ", server pid";
    for (pid_t p : d.server_pids) title += " " + std::to_string(p);
  }
  title += ")";
  out.table = t.Render(title);
  return out;
}

}  // namespace iris::bench
