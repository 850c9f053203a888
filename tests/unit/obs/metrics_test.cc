#include "obs/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "obs/process_metrics.h"

namespace iris::obs {
namespace {

// ---------------------------------------------------------------------------------------
// A small parser for the Prometheus text format 0.0.4, strict enough to catch what the
// Prometheus server would reject.

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct ParsedFamily {
  std::string help;
  std::string type;
  std::vector<Sample> samples;
};

struct Exposition {
  std::map<std::string, ParsedFamily> families;
  std::string error;  // empty when the text parsed
};

bool IsNameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

double ParseValue(const std::string& s, bool* ok) {
  *ok = true;
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  *ok = !s.empty() && end == s.c_str() + s.size();
  return v;
}

std::string Unescape(const std::string& s, bool* ok) {
  std::string out;
  *ok = true;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (++i == s.size()) {
      *ok = false;
      return out;
    }
    if (s[i] == 'n') {
      out += '\n';
    } else if (s[i] == '\\' || s[i] == '"') {
      out += s[i];
    } else {
      *ok = false;
    }
  }
  return out;
}

Exposition Parse(const std::string& text) {
  Exposition ex;
  if (!text.empty() && text.back() != '\n') {
    ex.error = "text does not end with a newline";
    return ex;
  }
  std::istringstream in(text);
  std::string line;
  std::string current;  // family of the last # TYPE
  int line_no = 0;
  auto fail = [&](const std::string& why) {
    ex.error = "line " + std::to_string(line_no) + ": " + why + ": " + line;
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t sp = rest.find(' ');
      if (sp == std::string::npos) return fail("no text after the name"), ex;
      const std::string name = rest.substr(0, sp);
      const std::string arg = rest.substr(sp + 1);
      ParsedFamily& f = ex.families[name];
      if (line[2] == 'H') {
        if (!f.help.empty() || !f.samples.empty()) return fail("HELP after samples"), ex;
        bool ok = false;
        f.help = Unescape(arg, &ok);
        if (!ok) return fail("bad escape in HELP"), ex;
      } else {
        if (!f.type.empty() || !f.samples.empty()) return fail("TYPE twice or late"), ex;
        if (arg != "counter" && arg != "gauge" && arg != "histogram" && arg != "summary" &&
            arg != "untyped") {
          return fail("unknown type"), ex;
        }
        f.type = arg;
        current = name;
      }
      continue;
    }
    if (line[0] == '#') continue;  // a comment
    Sample s;
    size_t i = 0;
    while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
    if (i == 0) return fail("no metric name"), ex;
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t start = i;
        while (i < line.size() && IsNameChar(line[i], i == start) && line[i] != ':') ++i;
        const std::string label = line.substr(start, i - start);
        if (label.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
          return fail("bad label"), ex;
        }
        i += 2;
        std::string raw;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) raw += line[i++];
          raw += line[i++];
        }
        if (i == line.size()) return fail("unterminated label value"), ex;
        ++i;  // closing quote
        bool ok = false;
        const std::string value = Unescape(raw, &ok);
        if (!ok) return fail("bad escape in label value"), ex;
        if (!s.labels.emplace(label, value).second) return fail("duplicate label"), ex;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i == line.size()) return fail("unterminated label set"), ex;
      ++i;  // '}'
    }
    if (i >= line.size() || line[i] != ' ') return fail("no space before the value"), ex;
    bool ok = false;
    s.value = ParseValue(line.substr(i + 1), &ok);
    if (!ok) return fail("bad value"), ex;
    // The sample belongs to the family declared by the last TYPE line.
    const bool histogram = ex.families.count(current) && ex.families[current].type == "histogram";
    const bool belongs = s.name == current || (histogram && (s.name == current + "_bucket" ||
                                                             s.name == current + "_sum" ||
                                                             s.name == current + "_count"));
    if (current.empty() || !belongs) return fail("sample outside its family"), ex;
    ex.families[current].samples.push_back(std::move(s));
  }
  return ex;
}

// Checks the histogram rules of the format for every series of `f`: cumulative buckets in
// increasing `le` order ending with +Inf, equal to _count, and one _sum.
std::string CheckHistogram(const ParsedFamily& f, const std::string& name) {
  std::map<std::map<std::string, std::string>, std::vector<const Sample*>> by_series;
  for (const Sample& s : f.samples) {
    auto labels = s.labels;
    labels.erase("le");
    by_series[labels].push_back(&s);
  }
  for (const auto& [labels, samples] : by_series) {
    double prev_le = -INFINITY;
    double prev_count = 0;
    bool saw_inf = false;
    double inf_count = -1, count = -1;
    int sums = 0;
    for (const Sample* s : samples) {
      if (s->name == name + "_bucket") {
        if (saw_inf) return "bucket after +Inf";
        auto le_it = s->labels.find("le");
        if (le_it == s->labels.end()) return "bucket without le";
        bool ok = false;
        const double le = ParseValue(le_it->second, &ok);
        if (!ok || le <= prev_le) return "le not increasing: " + le_it->second;
        if (s->value < prev_count) return "buckets not cumulative";
        prev_le = le;
        prev_count = s->value;
        if (std::isinf(le)) {
          saw_inf = true;
          inf_count = s->value;
        }
      } else if (s->name == name + "_count") {
        count = s->value;
      } else if (s->name == name + "_sum") {
        ++sums;
      } else {
        return "unexpected sample " + s->name;
      }
    }
    if (!saw_inf) return "no +Inf bucket";
    if (count != inf_count) return "_count differs from the +Inf bucket";
    if (sums != 1) return "not exactly one _sum";
  }
  return "";
}

const Sample* FindSample(const Exposition& ex, const std::string& family, const std::string& name,
                         const std::map<std::string, std::string>& labels) {
  auto it = ex.families.find(family);
  if (it == ex.families.end()) return nullptr;
  for (const Sample& s : it->second.samples) {
    if (s.name == name && s.labels == labels) return &s;
  }
  return nullptr;
}

uint32_t TestSeed() {
  const uint32_t seed = std::random_device{}();
  std::printf("seed=%u\n", seed);
  return seed;
}

// ---------------------------------------------------------------------------------------

TEST(RegistryTest, SameNameAndLabelsReturnSameObject) {
  Registry r;
  Counter& a = r.GetCounter("iris_frames_in_total", "Frames.", {{"opcode", "SEND"}, {"x", "1"}});
  Counter& b = r.GetCounter("iris_frames_in_total", "Frames.", {{"x", "1"}, {"opcode", "SEND"}});
  Counter& c = r.GetCounter("iris_frames_in_total", "Frames.", {{"opcode", "SYNC"}, {"x", "1"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  a.Inc();
  b.Inc(4);
  EXPECT_EQ(a.Value(), 5u);
  EXPECT_EQ(c.Value(), 0u);
  EXPECT_EQ(&r.GetGauge("iris_g", "G."), &r.GetGauge("iris_g", "G."));
  EXPECT_EQ(&r.GetHistogram("iris_h_seconds", "H."), &r.GetHistogram("iris_h_seconds", "H."));
}

TEST(RegistryTest, ReferencesStayValidAsTheRegistryGrows) {
  Registry r;
  Counter& first = r.GetCounter("iris_a_total", "A.", {{"code", "c0"}});
  first.Inc(7);
  for (int i = 1; i < 300; ++i) {
    const std::string n = std::to_string(i);
    r.GetCounter("iris_a_total", "A.", {{"code", std::string("c").append(n)}}).Inc();
    r.GetGauge(std::string("iris_gauge_").append(n), "G.").Set(i);
  }
  EXPECT_EQ(first.Value(), 7u);
  EXPECT_EQ(&first, &r.GetCounter("iris_a_total", "A.", {{"code", "c0"}}));
}

TEST(RegistryTest, LabelSetsBeyondTheCapShareTheOverflowSeries) {
  Registry r;
  std::vector<Counter*> counters;
  for (size_t i = 0; i < kMaxSeriesPerFamily + 10; ++i) {
    counters.push_back(&r.GetCounter("iris_c_total", "C.", {{"id", std::to_string(i)}}));
  }
  std::set<Counter*> distinct(counters.begin(), counters.end());
  EXPECT_EQ(distinct.size(), kMaxSeriesPerFamily + 1);
  for (size_t i = kMaxSeriesPerFamily; i < counters.size(); ++i) {
    EXPECT_EQ(counters[i], counters[kMaxSeriesPerFamily]);
    counters[i]->Inc();
  }
  const Exposition ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  const Sample* overflow = FindSample(ex, "iris_c_total", "iris_c_total", {{"id", "overflow"}});
  ASSERT_NE(overflow, nullptr);
  EXPECT_EQ(overflow->value, 10);
}

TEST(RegistryDeathTest, RejectsNamesAgainstTheConventions) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Registry r;
  EXPECT_DEATH(r.GetCounter("iris_msg_in", "No _total."), "");
  EXPECT_DEATH(r.GetGauge("iris_open_total", "A gauge named like a counter."), "");
  EXPECT_DEATH(r.GetGauge("iris-bad", "Invalid character."), "");
  EXPECT_DEATH(r.GetHistogram("iris_h_seconds", "Reserved label.", {{"le", "1"}}), "");
  EXPECT_DEATH(r.GetGauge("iris_g", "Bad label name.", {{"__x", "1"}}), "");
  r.GetGauge("iris_twice", "Gauge.");
  EXPECT_DEATH(r.GetHistogram("iris_twice", "Same name, other type."), "");
  r.GetGauge("iris_labelled", "Gauge.", {{"a", "1"}});
  EXPECT_DEATH(r.GetGauge("iris_labelled", "Other label names.", {{"b", "1"}}), "");
}

TEST(CounterTest, ConcurrentIncrementsSumExactly) {
  Registry r;
  Counter& counter = r.GetCounter("iris_concurrent_total", "C.");
  Histogram& hist = r.GetHistogram("iris_concurrent_seconds", "H.");
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200000;
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        counter.Inc();
        if (i % 4 == 0) hist.Observe(0.001 * (t + 1));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(counter.Value(), uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(hist.Count(), uint64_t{kThreads} * kPerThread / 4);
  double expected_sum = 0;
  for (int t = 0; t < kThreads; ++t) expected_sum += 0.001 * (t + 1) * (kPerThread / 4);
  EXPECT_NEAR(hist.Sum(), expected_sum, expected_sum * 1e-9);
}

TEST(GaugeTest, SetAndAdd) {
  Registry r;
  Gauge& g = r.GetGauge("iris_connections_open", "Open.");
  g.Set(10);
  g.Add(5);
  g.Add(-20);
  EXPECT_EQ(g.Value(), -5);
  const Exposition ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  EXPECT_EQ(ex.families.at("iris_connections_open").type, "gauge");
  EXPECT_EQ(FindSample(ex, "iris_connections_open", "iris_connections_open", {})->value, -5);
}

TEST(HistogramTest, DefaultBucketsSpan50usTo10sFinely) {
  const std::vector<double>& b = DefaultLatencyBuckets();
  ASSERT_GE(b.size(), 2u);
  EXPECT_DOUBLE_EQ(b.front(), 50e-6);
  EXPECT_GE(b.back(), 10.0);
  EXPECT_LT(b[b.size() - 2], 10.0);
  for (size_t i = 1; i < b.size(); ++i) {
    const double factor = b[i] / b[i - 1];
    EXPECT_GT(factor, 1.2) << i;
    EXPECT_LT(factor, 1.3) << i;
  }
}

TEST(HistogramTest, ObservationOnABoundLandsInThatBucket) {
  Histogram h({0.1, 0.2, 0.5});
  h.Observe(0.1);   // le=0.1
  h.Observe(0.15);  // le=0.2
  h.Observe(0.2);   // le=0.2
  h.Observe(0.5);   // le=0.5
  h.Observe(7);     // +Inf
  h.Observe(-1);    // le=0.1
  h.Observe(NAN);   // ignored
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{2, 2, 1, 1}));
  EXPECT_EQ(h.Count(), 6u);
  EXPECT_DOUBLE_EQ(h.Sum(), 0.1 + 0.15 + 0.2 + 0.5 + 7 - 1);
}

TEST(HistogramTest, QuantileInterpolatesAsHistogramQuantile) {
  // Worked by hand: bounds 1,2,4; counts 10 in (0,1], 30 in (1,2], 60 in (2,4].
  Histogram h({1, 2, 4});
  for (int i = 0; i < 10; ++i) h.Observe(0.5);
  for (int i = 0; i < 30; ++i) h.Observe(1.5);
  for (int i = 0; i < 60; ++i) h.Observe(3);
  EXPECT_DOUBLE_EQ(h.Quantile(0.05), 0.5);                 // rank 5 of 10 in [0,1]
  EXPECT_DOUBLE_EQ(h.Quantile(0.25), 1.5);                 // rank 25: 15 of 30 in [1,2]
  EXPECT_DOUBLE_EQ(h.Quantile(0.7), 2 + 2 * (30.0 / 60));  // rank 70: 30 of 60 in [2,4]
  EXPECT_DOUBLE_EQ(h.Quantile(1.0), 4);
  EXPECT_DOUBLE_EQ(h.Quantile(0), 0);
  EXPECT_EQ(h.Quantile(1.5), INFINITY);
  EXPECT_EQ(h.Quantile(-0.5), -INFINITY);
}

TEST(HistogramTest, QuantileEdgeCases) {
  Histogram empty({1, 2});
  EXPECT_TRUE(std::isnan(empty.Quantile(0.5)));
  Histogram high({1, 2});
  high.Observe(100);
  high.Observe(200);
  EXPECT_DOUBLE_EQ(high.Quantile(0.99), 2);  // the +Inf bucket answers the highest bound
}

// Empirical quantile of sorted values, as the reference.
double Exact(const std::vector<double>& sorted, double q) {
  return sorted[static_cast<size_t>(q * static_cast<double>(sorted.size() - 1))];
}

TEST(HistogramTest, QuantilesOfAUniformDistributionWithLinearBuckets) {
  const uint32_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  std::vector<double> bounds;
  for (int i = 1; i <= 20; ++i) bounds.push_back(i * 0.05);
  Histogram h(bounds);
  for (int i = 0; i < 200000; ++i) h.Observe(dist(rng));
  // Inside each bucket a uniform distribution is exactly what interpolation assumes.
  for (double q : {0.1, 0.5, 0.9, 0.99}) EXPECT_NEAR(h.Quantile(q), q, 0.01) << q;
}

TEST(HistogramTest, QuantilesOfALogNormalLatencyWithDefaultBuckets) {
  const uint32_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  // Median 2 ms, long tail: P99 about 2ms * e^(2.326) ~ 20 ms.
  std::lognormal_distribution<double> dist(std::log(0.002), 1.0);
  Histogram h(DefaultLatencyBuckets());
  std::vector<double> values;
  for (int i = 0; i < 100000; ++i) {
    values.push_back(dist(rng));
    h.Observe(values.back());
  }
  std::sort(values.begin(), values.end());
  for (double q : {0.5, 0.9, 0.99}) {
    const double exact = Exact(values, q);
    EXPECT_NEAR(h.Quantile(q), exact, exact * 0.05) << "q=" << q;
  }
}

TEST(HistogramTest, ConcurrentObservationsCountExactly) {
  Histogram h({1, 2, 3});
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) h.Observe(t);  // integers: the sum is exact
    });
  }
  for (auto& th : threads) th.join();
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{2 * kPerThread, kPerThread, kPerThread, 0}));
  EXPECT_EQ(s.sum, double{kPerThread} * (0 + 1 + 2 + 3));
}

TEST(ExpositionTest, ParsesBackWithHelpTypeAndCumulativeBuckets) {
  Registry r;
  r.GetCounter("iris_msg_in_total", "Messages accepted.").Inc(3);
  r.GetCounter("iris_errors_total", "Errors by code.", {{"code", "BAD_REQUEST"}}).Inc(2);
  r.GetCounter("iris_errors_total", "Errors by code.", {{"code", "TOO_LARGE"}}).Inc(1);
  Histogram& h = r.GetHistogram("iris_db_write_latency_seconds", "Durable append latency.", {},
                                {0.001, 0.01, 0.1});
  h.Observe(0.0005);
  h.Observe(0.005);
  h.Observe(0.005);
  h.Observe(5);
  r.GetHistogram("iris_handshake_seconds", "Handshake.", {{"result", "ok"}}).Observe(0.002);
  r.GetHistogram("iris_handshake_seconds", "Handshake.", {{"result", "fail"}});
  r.AddCallbackGauge("iris_rss_bytes", "RSS.", [] { return 1.5e9; });

  const std::string text = r.ExposePrometheus();
  const Exposition ex = Parse(text);
  ASSERT_EQ(ex.error, "") << text;

  const ParsedFamily& msg = ex.families.at("iris_msg_in_total");
  EXPECT_EQ(msg.help, "Messages accepted.");
  EXPECT_EQ(msg.type, "counter");
  EXPECT_EQ(FindSample(ex, "iris_msg_in_total", "iris_msg_in_total", {})->value, 3);
  EXPECT_EQ(
      FindSample(ex, "iris_errors_total", "iris_errors_total", {{"code", "TOO_LARGE"}})->value, 1);

  const ParsedFamily& db = ex.families.at("iris_db_write_latency_seconds");
  EXPECT_EQ(db.type, "histogram");
  EXPECT_EQ(CheckHistogram(db, "iris_db_write_latency_seconds"), "");
  const std::string n = "iris_db_write_latency_seconds";
  EXPECT_EQ(FindSample(ex, n, n + "_bucket", {{"le", "0.001"}})->value, 1);
  EXPECT_EQ(FindSample(ex, n, n + "_bucket", {{"le", "0.01"}})->value, 3);
  EXPECT_EQ(FindSample(ex, n, n + "_bucket", {{"le", "0.1"}})->value, 3);
  EXPECT_EQ(FindSample(ex, n, n + "_bucket", {{"le", "+Inf"}})->value, 4);
  EXPECT_EQ(FindSample(ex, n, n + "_count", {})->value, 4);
  EXPECT_DOUBLE_EQ(FindSample(ex, n, n + "_sum", {})->value, 0.0005 + 0.005 + 0.005 + 5);
  EXPECT_EQ(db.samples.back().name, n + "_count");

  const ParsedFamily& hs = ex.families.at("iris_handshake_seconds");
  EXPECT_EQ(CheckHistogram(hs, "iris_handshake_seconds"), "");
  EXPECT_EQ(
      FindSample(ex, "iris_handshake_seconds", "iris_handshake_seconds_count", {{"result", "fail"}})
          ->value,
      0);
  // Default buckets: 56 finite + Inf per series.
  EXPECT_EQ(FindSample(ex, "iris_handshake_seconds", "iris_handshake_seconds_bucket",
                       {{"result", "ok"}, {"le", "5e-05"}})
                ->value,
            0);

  EXPECT_EQ(ex.families.at("iris_rss_bytes").type, "gauge");
  EXPECT_EQ(FindSample(ex, "iris_rss_bytes", "iris_rss_bytes", {})->value, 1.5e9);

  // Families come sorted by name.
  std::vector<std::string> order;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) order.push_back(line.substr(7, line.find(' ', 7) - 7));
  }
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
  EXPECT_EQ(order.size(), 5u);
}

TEST(ExpositionTest, EscapesLabelValuesAndHelp) {
  Registry r;
  const std::string nasty = "a\"b\\c\nd}e,f=\"";
  r.GetCounter("iris_escaped_total", "Help with \\ and\nnewline.", {{"reason", nasty}}).Inc();
  const std::string text = r.ExposePrometheus();
  const Exposition ex = Parse(text);
  ASSERT_EQ(ex.error, "") << text;
  EXPECT_EQ(ex.families.at("iris_escaped_total").help, "Help with \\ and\nnewline.");
  const Sample* s = FindSample(ex, "iris_escaped_total", "iris_escaped_total", {{"reason", nasty}});
  ASSERT_NE(s, nullptr) << text;
  EXPECT_EQ(s->value, 1);
  // One line per HELP, TYPE and sample: the newlines were escaped.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3);
}

TEST(ExpositionTest, CallbacksCanBeReplacedAndRemoved) {
  Registry r;
  int calls = 0;
  r.AddCallbackGauge("iris_cb", "Callback.", [&calls] { return ++calls; });
  Exposition ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  EXPECT_EQ(FindSample(ex, "iris_cb", "iris_cb", {})->value, 1);
  r.AddCallbackGauge("iris_cb", "Callback.", [] { return 42.0; });
  ex = Parse(r.ExposePrometheus());
  EXPECT_EQ(FindSample(ex, "iris_cb", "iris_cb", {})->value, 42);
  r.AddCallbackCounter("iris_cb_total", "Callback counter.", [] { return 7.0; });
  r.RemoveCallback("iris_cb");
  ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  EXPECT_EQ(ex.families.count("iris_cb"), 0u);
  EXPECT_EQ(ex.families.at("iris_cb_total").type, "counter");
  EXPECT_EQ(calls, 1);
}

TEST(ExpositionTest, ACallbackMayLookUpMetrics) {
  Registry r;
  r.AddCallbackGauge("iris_reentrant", "Reads another metric.", [&r] {
    return static_cast<double>(r.GetCounter("iris_inner_total", "Inner.").Value());
  });
  r.GetCounter("iris_inner_total", "Inner.").Inc(9);
  const Exposition ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  EXPECT_EQ(FindSample(ex, "iris_reentrant", "iris_reentrant", {})->value, 9);
}

TEST(ExpositionTest, ScrapeWhileRecordingStaysWellFormed) {
  Registry r;
  Counter& c = r.GetCounter("iris_busy_total", "Busy.");
  Histogram& h = r.GetHistogram("iris_busy_seconds", "Busy.");
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    uint64_t i = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      c.Inc();
      h.Observe(static_cast<double>(i++ % 1000) * 1e-4);
    }
  });
  double last = 0;
  for (int i = 0; i < 200; ++i) {
    const Exposition ex = Parse(r.ExposePrometheus());
    ASSERT_EQ(ex.error, "");
    ASSERT_EQ(CheckHistogram(ex.families.at("iris_busy_seconds"), "iris_busy_seconds"), "");
    const double v = FindSample(ex, "iris_busy_total", "iris_busy_total", {})->value;
    EXPECT_GE(v, last);  // counters never go backwards between scrapes
    last = v;
  }
  stop = true;
  writer.join();
}

TEST(ProcessMetricsTest, ReportsResidentMemoryAndFds) {
  Registry r;
  AddProcessMetrics(r);
  const Exposition ex = Parse(r.ExposePrometheus());
  ASSERT_EQ(ex.error, "");
  EXPECT_GT(
      FindSample(ex, "process_resident_memory_bytes", "process_resident_memory_bytes", {})->value,
      1e5);
  EXPECT_GE(FindSample(ex, "process_open_fds", "process_open_fds", {})->value, 3);
  EXPECT_GT(FindSample(ex, "process_start_time_seconds", "process_start_time_seconds", {})->value,
            1.6e9);
  EXPECT_EQ(ex.families.at("process_cpu_seconds_total").type, "counter");
}

}  // namespace
}  // namespace iris::obs
