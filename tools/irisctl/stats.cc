#include "stats.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "obs/prometheus_text.h"

namespace iris::tools {
namespace {

constexpr const char* kCounters[] = {"iris_msg_in_total", "iris_msg_out_total",
                                     "iris_ack_sent_total", "iris_dedup_hit_total"};

std::string FormatPlain(double v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);  // counts read best in full
  } else {
    std::snprintf(buf, sizeof(buf), "%.4g", v);
  }
  return buf;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string FormatSeconds(double seconds) {
  if (std::isnan(seconds)) return "-";
  char buf[32];
  if (seconds < 1e-3) {
    std::snprintf(buf, sizeof(buf), "%.0fus", seconds * 1e6);
  } else if (seconds < 1) {
    std::snprintf(buf, sizeof(buf), "%.3gms", seconds * 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.3gs", seconds);
  }
  return buf;
}

Result<std::string> FormatStats(std::string_view exposition) {
  auto families = obs::ParsePrometheusText(exposition);
  if (!families.ok()) return families.status();
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-44s %10s %10s %10s %10s\n", "histogram", "count", "p50",
                "p90", "p99");
  out << line;
  for (const obs::HistogramSeries& h : obs::HistogramsOf(*families)) {
    std::string name = h.name;
    if (!h.labels.empty()) name += "{" + obs::FormatLabels(h.labels) + "}";
    const bool seconds = EndsWith(h.name, "_seconds");
    auto fmt = [&](double q) {
      const double v = h.Quantile(q);
      return seconds ? FormatSeconds(v) : FormatPlain(v);
    };
    std::snprintf(line, sizeof(line), "%-44s %10llu %10s %10s %10s\n", name.c_str(),
                  static_cast<unsigned long long>(h.count), fmt(0.5).c_str(), fmt(0.9).c_str(),
                  fmt(0.99).c_str());
    out << line;
  }
  out << "\n";
  std::snprintf(line, sizeof(line), "%-44s %10s\n", "counter", "value");
  out << line;
  for (const char* name : kCounters) {
    double total = 0;
    bool found = false;
    for (const obs::PromFamily& f : *families) {
      if (f.name != name) continue;
      for (const obs::PromSample& s : f.samples) {
        total += s.value;
        found = true;
      }
    }
    std::snprintf(line, sizeof(line), "%-44s %10s\n", name,
                  found ? FormatPlain(total).c_str() : "absent");
    out << line;
  }
  return out.str();
}

}  // namespace iris::tools
