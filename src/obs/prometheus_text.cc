#include "obs/prometheus_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>

namespace iris::obs {
namespace {

bool IsNameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

bool ParseValue(std::string_view s, double* out) {
  if (s == "+Inf" || s == "Inf") {
    *out = INFINITY;
    return true;
  }
  if (s == "-Inf") {
    *out = -INFINITY;
    return true;
  }
  if (s == "NaN") {
    *out = NAN;
    return true;
  }
  if (s.empty()) return false;
  const std::string copy(s);
  char* end = nullptr;
  *out = std::strtod(copy.c_str(), &end);
  return end == copy.c_str() + copy.size();
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Result<std::vector<PromFamily>> ParsePrometheusText(std::string_view text) {
  std::vector<PromFamily> families;
  size_t line_no = 0;
  size_t pos = 0;
  auto family_for = [&](const std::string& name) -> PromFamily& {
    if (families.empty() || families.back().name != name) {
      families.push_back(PromFamily{name, "", "", {}});
    }
    return families.back();
  };
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    auto fail = [&](std::string_view why) {
      return BadRequest("metrics line " + std::to_string(line_no) + ": " + std::string(why) +
                        ": " + std::string(line.substr(0, 200)));
    };
    if (line.empty()) continue;
    if (line[0] == '#') {
      const bool help = line.rfind("# HELP ", 0) == 0;
      const bool type = line.rfind("# TYPE ", 0) == 0;
      if (!help && !type) continue;  // a comment
      std::string_view rest = line.substr(7);
      const size_t sp = rest.find(' ');
      const std::string name(rest.substr(0, sp));
      const std::string_view arg = sp == std::string_view::npos ? "" : rest.substr(sp + 1);
      if (name.empty()) return fail("no metric name");
      PromFamily& f = family_for(name);
      if (help) {
        f.help = std::string(arg);
      } else {
        if (arg != "counter" && arg != "gauge" && arg != "histogram" && arg != "summary" &&
            arg != "untyped") {
          return fail("unknown metric type");
        }
        f.type = std::string(arg);
      }
      continue;
    }
    PromSample s;
    size_t i = 0;
    while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
    if (i == 0) return fail("no metric name");
    s.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t start = i;
        while (i < line.size() && IsNameChar(line[i], i == start) && line[i] != ':') ++i;
        std::string label(line.substr(start, i - start));
        if (label.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
          return fail("bad label");
        }
        i += 2;
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\') {
            if (++i == line.size()) return fail("bad escape");
            if (line[i] == 'n') {
              value += '\n';
            } else if (line[i] == '\\' || line[i] == '"') {
              value += line[i];
            } else {
              return fail("bad escape");
            }
            ++i;
            continue;
          }
          value += line[i++];
        }
        if (i == line.size()) return fail("unterminated label value");
        ++i;  // closing quote
        s.labels.emplace_back(std::move(label), std::move(value));
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i == line.size()) return fail("unterminated label set");
      ++i;  // '}'
    }
    while (i < line.size() && line[i] == ' ') ++i;
    std::string_view value = line.substr(i);
    const size_t sp = value.find(' ');  // an optional timestamp follows
    if (sp != std::string_view::npos) value = value.substr(0, sp);
    if (!ParseValue(value, &s.value)) return fail("bad value");

    std::string family = s.name;
    if (!families.empty()) {
      const PromFamily& last = families.back();
      const bool grouped = last.type == "histogram" || last.type == "summary";
      if (s.name == last.name ||
          (grouped && (s.name == last.name + "_bucket" || s.name == last.name + "_sum" ||
                       s.name == last.name + "_count"))) {
        family = last.name;
      }
    }
    family_for(family).samples.push_back(std::move(s));
  }
  return families;
}

std::vector<HistogramSeries> HistogramsOf(const std::vector<PromFamily>& families) {
  std::vector<HistogramSeries> out;
  for (const PromFamily& f : families) {
    if (f.type != "histogram") continue;
    struct Acc {
      std::vector<std::pair<double, double>> buckets;  // le, cumulative count
      double sum = 0;
      double count = -1;
    };
    std::map<Labels, Acc> series;  // labels sorted, without le
    for (const PromSample& s : f.samples) {
      Labels labels;
      std::string le;
      bool has_le = false;
      for (const auto& [k, v] : s.labels) {
        if (k == "le") {
          le = v;
          has_le = true;
        } else {
          labels.emplace_back(k, v);
        }
      }
      std::sort(labels.begin(), labels.end());
      Acc& a = series[labels];
      if (EndsWith(s.name, "_bucket")) {
        double bound = 0;
        if (!has_le || !ParseValue(le, &bound)) continue;
        a.buckets.emplace_back(bound, s.value);
      } else if (EndsWith(s.name, "_sum")) {
        a.sum = s.value;
      } else if (EndsWith(s.name, "_count")) {
        a.count = s.value;
      }
    }
    for (auto& [labels, a] : series) {
      std::sort(a.buckets.begin(), a.buckets.end());
      if (a.buckets.empty() || !std::isinf(a.buckets.back().first)) continue;
      HistogramSeries h;
      h.name = f.name;
      h.labels = labels;
      double prev = 0;
      bool ok = true;
      for (size_t k = 0; k < a.buckets.size(); ++k) {
        const auto [le, cumulative] = a.buckets[k];
        if (cumulative < prev || (k > 0 && le == a.buckets[k - 1].first)) {
          ok = false;
          break;
        }
        if (!std::isinf(le)) h.bounds.push_back(le);
        h.counts.push_back(static_cast<uint64_t>(std::llround(cumulative - prev)));
        prev = cumulative;
      }
      if (!ok || h.bounds.empty()) continue;
      h.sum = a.sum;
      h.count = static_cast<uint64_t>(std::llround(a.count >= 0 ? a.count : prev));
      out.push_back(std::move(h));
    }
  }
  return out;
}

std::string FormatLabels(const Labels& labels) {
  std::string s;
  for (const auto& [k, v] : labels) {
    if (!s.empty()) s += ',';
    s += k + "=\"" + v + "\"";
  }
  return s;
}

void AppendPromEscaped(std::string& out, std::string_view s, bool escape_quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void AppendPromValue(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    out.append(buf, end);
  }
}

}  // namespace iris::obs
