#include "obs/prometheus_merge.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <utility>

namespace iris::obs {
namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string NormalType(const std::string& type) { return type.empty() ? "untyped" : type; }

enum class Op { kSum, kMax, kMin };

Op OpFor(const std::string& type, const std::string& family, const std::string& sample) {
  if (type == "counter" || type == "histogram") return Op::kSum;
  if (type == "summary") {
    return sample == family + "_sum" || sample == family + "_count" ? Op::kSum : Op::kMax;
  }
  switch (GaugeMergeFor(family)) {
    case GaugeMerge::kSum: return Op::kSum;
    case GaugeMerge::kMax: return Op::kMax;
    case GaugeMerge::kMin: return Op::kMin;
  }
  return Op::kSum;
}

// A value combined from several sources; NaN contributions are skipped.
struct Combined {
  double value = std::nan("");
  void Add(Op op, double v) {
    if (std::isnan(v)) return;
    if (std::isnan(value)) {
      value = v;
      return;
    }
    switch (op) {
      case Op::kSum: value += v; break;
      case Op::kMax: value = std::max(value, v); break;
      case Op::kMin: value = std::min(value, v); break;
    }
  }
};

bool ParseLe(const std::string& s, double* out) {
  if (s == "+Inf" || s == "Inf") {
    *out = INFINITY;
    return true;
  }
  if (s.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && !std::isnan(*out);
}

// One histogram series from one source: bucket points (le, cumulative), sum, count.
struct SourceHistogram {
  std::vector<std::pair<double, double>> buckets;
  double sum = std::nan("");
  double count = std::nan("");
};

struct HistogramAcc {
  Labels labels;                          // as first seen, without le
  std::map<double, std::string> le_text;  // every bound seen, and how it was written
  std::vector<SourceHistogram> sources;
};

struct SampleAcc {
  std::string name;
  Labels labels;  // as first seen
  Combined value;
};

struct FamilyAcc {
  std::string type;
  std::string help;
  // (sample name, sorted labels) -> combined sample
  std::map<std::pair<std::string, Labels>, SampleAcc> samples;
  // sorted labels without le -> histogram series
  std::map<Labels, HistogramAcc> histograms;
};

Labels Sorted(Labels labels) {
  std::sort(labels.begin(), labels.end());
  return labels;
}

void AddHistogramFamily(const PromFamily& f, FamilyAcc& acc) {
  // This source's series, collected first so each contributes once per merged series.
  std::map<Labels, std::pair<Labels, SourceHistogram>> mine;
  std::map<Labels, std::map<double, std::string>> les;
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
    const Labels key = Sorted(labels);
    auto& [first_labels, h] = mine[key];
    if (first_labels.empty()) first_labels = labels;
    if (s.name == f.name + "_bucket") {
      double bound = 0;
      if (!has_le || !ParseLe(le, &bound)) continue;  // not a bucket: ignored
      h.buckets.emplace_back(bound, s.value);
      les[key].emplace(bound, le);
    } else if (s.name == f.name + "_sum") {
      h.sum = s.value;
    } else if (s.name == f.name + "_count") {
      h.count = s.value;
    }
  }
  for (auto& [key, entry] : mine) {
    auto& [labels, h] = entry;
    std::sort(h.buckets.begin(), h.buckets.end());
    HistogramAcc& series = acc.histograms[key];
    if (series.sources.empty()) series.labels = labels;
    for (auto& [bound, text] : les[key]) series.le_text.emplace(bound, text);
    series.sources.push_back(std::move(h));
  }
}


void AppendSample(std::string& out, const PromSample& s) {
  out += s.name;
  if (!s.labels.empty()) {
    out += '{';
    for (size_t i = 0; i < s.labels.size(); ++i) {
      if (i > 0) out += ',';
      out += s.labels[i].first;
      out += "=\"";
      AppendPromEscaped(out, s.labels[i].second, /*escape_quote=*/true);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  AppendPromValue(out, s.value);
  out += '\n';
}

}  // namespace

GaugeMerge GaugeMergeFor(std::string_view name) {
  if (name == "iris_degradation_level" || name == "process_max_fds") return GaugeMerge::kMax;
  if (name == "process_start_time_seconds") return GaugeMerge::kMin;
  if (name.find("_lag") != std::string_view::npos || EndsWith(name, "_level") ||
      EndsWith(name, "_ratio")) {
    return GaugeMerge::kMax;
  }
  return GaugeMerge::kSum;
}

std::vector<PromFamily> MergeFamilies(const std::vector<const std::vector<PromFamily>*>& sources) {
  std::map<std::string, FamilyAcc> families;
  for (const std::vector<PromFamily>* source : sources) {
    if (source == nullptr) continue;
    for (const PromFamily& f : *source) {
      const std::string type = NormalType(f.type);
      auto [it, fresh] = families.try_emplace(f.name);
      FamilyAcc& acc = it->second;
      if (fresh) acc.type = type;
      if (acc.type != type) continue;  // conflicting declaration: the first one wins
      if (acc.help.empty()) acc.help = f.help;
      if (type == "histogram") {
        AddHistogramFamily(f, acc);
        continue;
      }
      for (const PromSample& s : f.samples) {
        auto [sit, first] = acc.samples.try_emplace({s.name, Sorted(s.labels)});
        if (first) {
          sit->second.name = s.name;
          sit->second.labels = s.labels;
        }
        sit->second.value.Add(OpFor(type, f.name, s.name), s.value);
      }
    }
  }

  std::vector<PromFamily> out;
  out.reserve(families.size());
  for (auto& [name, acc] : families) {
    PromFamily f{name, acc.type, acc.help, {}};
    for (auto& [key, s] : acc.samples) {
      f.samples.push_back(PromSample{std::move(s.name), std::move(s.labels), s.value.value});
    }
    for (auto& [key, h] : acc.histograms) {
      // Cumulative count of each source at every bound any source has.
      std::vector<double> cumulative(h.le_text.size(), 0);
      Combined sum;
      double count = 0;
      for (const SourceHistogram& src : h.sources) {
        size_t k = 0;
        double at = 0;  // the source's cumulative count at its largest bound <= le
        size_t b = 0;
        for (const auto& [le, text] : h.le_text) {
          while (b < src.buckets.size() && src.buckets[b].first <= le) {
            at = std::max(at, src.buckets[b].second);
            ++b;
          }
          cumulative[k++] += at;
        }
        sum.Add(Op::kSum, src.sum);
        // Without _count, the +Inf bucket (what _count always equals).
        count += !std::isnan(src.count) ? src.count : (src.buckets.empty() ? 0 : at);
      }
      size_t k = 0;
      for (const auto& [le, text] : h.le_text) {
        Labels labels = h.labels;
        labels.emplace_back("le", text);
        f.samples.push_back(PromSample{name + "_bucket", std::move(labels), cumulative[k++]});
      }
      f.samples.push_back(
          PromSample{name + "_sum", h.labels, std::isnan(sum.value) ? 0 : sum.value});
      f.samples.push_back(PromSample{name + "_count", h.labels, count});
    }
    if (!f.samples.empty()) out.push_back(std::move(f));
  }
  return out;
}

std::vector<PromFamily> CumulativeFamilies(const std::vector<PromFamily>& families) {
  std::vector<PromFamily> out;
  for (const PromFamily& f : families) {
    if (f.type == "counter" || f.type == "histogram") {
      out.push_back(f);
    } else if (f.type == "summary") {
      PromFamily kept{f.name, f.type, f.help, {}};
      for (const PromSample& s : f.samples) {
        if (s.name == f.name + "_sum" || s.name == f.name + "_count") kept.samples.push_back(s);
      }
      if (!kept.samples.empty()) out.push_back(std::move(kept));
    }
  }
  return out;
}

std::string RenderPrometheusText(const std::vector<PromFamily>& families) {
  std::string out;
  out.reserve(4096);
  for (const PromFamily& f : families) {
    if (!f.help.empty()) {
      // Kept as read: ParsePrometheusText does not unescape HELP text.
      out += "# HELP ";
      out += f.name;
      out += ' ';
      out += f.help;
      out += '\n';
    }
    out += "# TYPE ";
    out += f.name;
    out += ' ';
    out += NormalType(f.type);
    out += '\n';
    for (const PromSample& s : f.samples) AppendSample(out, s);
  }
  return out;
}

}  // namespace iris::obs
