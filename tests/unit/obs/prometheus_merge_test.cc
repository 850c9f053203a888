// Merging the expositions of the processes of one node (prometheus_merge.h) and the
// collector that scrapes them (scrape_collector.h).

#include "obs/prometheus_merge.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>

#include "net/http/http_server.h"
#include "obs/scrape_collector.h"

namespace iris::obs {
namespace {

std::vector<PromFamily> Parse(const std::string& text) {
  auto fs = ParsePrometheusText(text);
  EXPECT_TRUE(fs.ok()) << fs.status().ToString();
  return fs.ok() ? *fs : std::vector<PromFamily>{};
}

std::vector<PromFamily> Merge(const std::vector<std::string>& texts) {
  std::vector<std::vector<PromFamily>> parsed;
  for (const auto& t : texts) parsed.push_back(Parse(t));
  std::vector<const std::vector<PromFamily>*> sources;
  for (const auto& p : parsed) sources.push_back(&p);
  return MergeFamilies(sources);
}

const PromFamily* Find(const std::vector<PromFamily>& fs, const std::string& name) {
  for (const auto& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// The value of the sample `name` with exactly `labels` (any order); NaN when absent.
double Value(const std::vector<PromFamily>& fs, const std::string& name, Labels labels = {}) {
  std::sort(labels.begin(), labels.end());
  for (const auto& f : fs) {
    for (const auto& s : f.samples) {
      Labels l = s.labels;
      std::sort(l.begin(), l.end());
      if (s.name == name && l == labels) return s.value;
    }
  }
  return std::nan("");
}

TEST(PrometheusMergeTest, CountersAreSummedAndLabelSetsKeptDistinct) {
  const auto m = Merge({
      "# HELP a_total Things.\n# TYPE a_total counter\n"
      "a_total{code=\"X\",op=\"SEND\"} 3\na_total{code=\"Y\",op=\"SEND\"} 1\n",
      // Same series written with its labels in another order; a label set only here.
      "# HELP a_total Things.\n# TYPE a_total counter\n"
      "a_total{op=\"SEND\",code=\"X\"} 4\na_total{code=\"Z\",op=\"SEND\"} 10\n",
      "# TYPE a_total counter\na_total{code=\"X\",op=\"SEND\"} 0.5\n",
  });
  const PromFamily* a = Find(m, "a_total");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->type, "counter");
  EXPECT_EQ(a->help, "Things.");
  ASSERT_EQ(a->samples.size(), 3u);
  EXPECT_EQ(Value(m, "a_total", {{"code", "X"}, {"op", "SEND"}}), 7.5);
  EXPECT_EQ(Value(m, "a_total", {{"code", "Y"}, {"op", "SEND"}}), 1);
  EXPECT_EQ(Value(m, "a_total", {{"code", "Z"}, {"op", "SEND"}}), 10);
}

TEST(PrometheusMergeTest, GaugesFollowTheRuleOfTheirFamily) {
  EXPECT_EQ(GaugeMergeFor("iris_connections_open"), GaugeMerge::kSum);
  EXPECT_EQ(GaugeMergeFor("process_open_fds"), GaugeMerge::kSum);
  EXPECT_EQ(GaugeMergeFor("process_resident_memory_bytes"), GaugeMerge::kSum);
  EXPECT_EQ(GaugeMergeFor("iris_degradation_level"), GaugeMerge::kMax);
  EXPECT_EQ(GaugeMergeFor("iris_dedup_bloom_fill_ratio"), GaugeMerge::kMax);
  EXPECT_EQ(GaugeMergeFor("iris_loop_lag_seconds"), GaugeMerge::kMax);
  EXPECT_EQ(GaugeMergeFor("process_max_fds"), GaugeMerge::kMax);
  EXPECT_EQ(GaugeMergeFor("process_start_time_seconds"), GaugeMerge::kMin);

  const std::string core =
      "# TYPE iris_degradation_level gauge\niris_degradation_level 1\n"
      "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1000\n"
      "# TYPE process_open_fds gauge\nprocess_open_fds 30\n";
  const std::string edge0 =
      "# TYPE iris_connections_open gauge\niris_connections_open 12\n"
      "# TYPE iris_loop_lag_seconds gauge\niris_loop_lag_seconds{loop=\"0\"} 0.25\n"
      "# TYPE iris_degradation_level gauge\niris_degradation_level 2\n"
      "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1010\n"
      "# TYPE process_open_fds gauge\nprocess_open_fds 20\n";
  const std::string edge1 =
      "# TYPE iris_connections_open gauge\niris_connections_open 5\n"
      "# TYPE iris_loop_lag_seconds gauge\niris_loop_lag_seconds{loop=\"0\"} 0.5\n"
      "# TYPE iris_degradation_level gauge\niris_degradation_level 0\n"
      "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1005\n"
      "# TYPE process_open_fds gauge\nprocess_open_fds NaN\n";
  const auto m = Merge({core, edge0, edge1});
  EXPECT_EQ(Value(m, "iris_connections_open"), 17);
  EXPECT_EQ(Value(m, "iris_loop_lag_seconds", {{"loop", "0"}}), 0.5);
  EXPECT_EQ(Value(m, "iris_degradation_level"), 2);
  EXPECT_EQ(Value(m, "process_start_time_seconds"), 1000);
  // A NaN (a value a process could not read) does not hide the others'.
  EXPECT_EQ(Value(m, "process_open_fds"), 50);
  // ... but alone it stays NaN.
  EXPECT_TRUE(std::isnan(Value(Merge({"# TYPE g gauge\ng NaN\n"}), "g")));
}

// The merged histogram is exactly the one a single process observing every value holds:
// two registries' expositions merged equal a third registry that saw both streams.
TEST(PrometheusMergeTest, HistogramsAreSummedBucketByBucket) {
  Registry a, b, all;
  std::mt19937 rng(7);
  std::exponential_distribution<double> latency(200.0);  // mean 5 ms
  for (int i = 0; i < 3000; ++i) {
    const double v = latency(rng);
    const std::string op = i % 3 == 0 ? "SEND" : "SYNC";
    Registry& one = i % 2 == 0 ? a : b;
    one.GetHistogram("lat_seconds", "Latency", {{"op", op}}).Observe(v);
    all.GetHistogram("lat_seconds", "Latency", {{"op", op}}).Observe(v);
    one.GetCounter("n_total", "N").Inc();
    all.GetCounter("n_total", "N").Inc();
  }
  // Only in `b`: a series the other lacks is kept as it is.
  b.GetHistogram("lat_seconds", "Latency", {{"op", "PING"}}).Observe(0.001);
  all.GetHistogram("lat_seconds", "Latency", {{"op", "PING"}}).Observe(0.001);

  const auto merged = Merge({a.ExposePrometheus(), b.ExposePrometheus()});
  const auto want = Parse(all.ExposePrometheus());
  ASSERT_EQ(merged.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(merged[i].name, want[i].name);
    EXPECT_EQ(merged[i].type, want[i].type);
    ASSERT_EQ(merged[i].samples.size(), want[i].samples.size());
    for (size_t k = 0; k < want[i].samples.size(); ++k) {
      const PromSample& got = merged[i].samples[k];
      const PromSample& exp = want[i].samples[k];
      EXPECT_EQ(got.name, exp.name);
      EXPECT_EQ(got.labels, exp.labels);
      if (exp.name == "lat_seconds_sum") {
        EXPECT_NEAR(got.value, exp.value, 1e-9 * std::max(1.0, exp.value));
      } else {
        EXPECT_EQ(got.value, exp.value) << FormatLabels(exp.labels);
      }
    }
  }
  // And the quantiles read from it are the single process's.
  const auto hm = HistogramsOf(merged);
  const auto hw = HistogramsOf(want);
  ASSERT_EQ(hm.size(), hw.size());
  for (size_t i = 0; i < hw.size(); ++i)
    EXPECT_DOUBLE_EQ(hm[i].Quantile(0.99), hw[i].Quantile(0.99));
}

TEST(PrometheusMergeTest, HistogramsWithDifferentBoundsStayCumulative) {
  const auto m = Merge({
      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 4\nh_count 3\n",
      "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"2\"} 5\nh_bucket{le=\"+Inf\"} 6\n"
      "h_sum 7\nh_count 6\n",
  });
  EXPECT_EQ(Value(m, "h_bucket", {{"le", "0.5"}}), 1);  // first source: 0 known below 0.5
  EXPECT_EQ(Value(m, "h_bucket", {{"le", "1"}}), 3);    // 2 + second's 1 at 0.5
  EXPECT_EQ(Value(m, "h_bucket", {{"le", "2"}}), 7);    // 2 + 5
  EXPECT_EQ(Value(m, "h_bucket", {{"le", "+Inf"}}), 9);
  EXPECT_EQ(Value(m, "h_sum"), 11);
  EXPECT_EQ(Value(m, "h_count"), 9);
}

TEST(PrometheusMergeTest, FamiliesAreGroupedWithHelpAndTypeOnce) {
  Registry core, edge0, edge1;
  core.GetCounter("iris_bugs_total", "Bugs").Inc();
  core.GetGauge("iris_degradation_level", "Level").Set(1);
  for (Registry* r : {&edge0, &edge1}) {
    r->GetCounter("iris_bugs_total", "Bugs").Inc(2);
    r->GetCounter("iris_msg_in_total", "In").Inc(5);
    r->GetGauge("iris_connections_open", "Open").Set(3);
    r->GetHistogram("iris_send_ack_latency_seconds", "Ack").Observe(0.002);
    r->GetCounter("iris_frames_in_total", "Frames", {{"opcode", "SEND"}}).Inc();
  }
  edge1.GetCounter("iris_frames_in_total", "Frames", {{"opcode", "PING"}}).Inc();
  const std::string text = RenderPrometheusText(
      Merge({core.ExposePrometheus(), edge0.ExposePrometheus(), edge1.ExposePrometheus()}));

  // Each family: one HELP and one TYPE line, and its samples right after them.
  std::map<std::string, int> help, type;
  std::set<std::string> closed;  // families whose block has ended
  std::string current;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string a, b, name;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      ls >> a >> b >> name;
      (b == "HELP" ? help : type)[name]++;
      if (name != current) {
        if (!current.empty()) closed.insert(current);
        EXPECT_EQ(closed.count(name), 0u) << name << " appears twice";
        current = name;
      }
      continue;
    }
    ls >> name;
    EXPECT_EQ(name.rfind(current, 0), 0u) << line << " outside its family " << current;
  }
  for (const char* f :
       {"iris_bugs_total", "iris_msg_in_total", "iris_connections_open",
        "iris_send_ack_latency_seconds", "iris_frames_in_total", "iris_degradation_level"}) {
    EXPECT_EQ(help[f], 1) << f;
    EXPECT_EQ(type[f], 1) << f;
  }
  // The text parses back to what was merged.
  const auto back = Parse(text);
  EXPECT_EQ(Value(back, "iris_bugs_total"), 5);
  EXPECT_EQ(Value(back, "iris_msg_in_total"), 10);
  EXPECT_EQ(Value(back, "iris_connections_open"), 6);
  EXPECT_EQ(Value(back, "iris_degradation_level"), 1);
  EXPECT_EQ(Value(back, "iris_send_ack_latency_seconds_count"), 2);
  EXPECT_EQ(Value(back, "iris_frames_in_total", {{"opcode", "SEND"}}), 2);
  EXPECT_EQ(Value(back, "iris_frames_in_total", {{"opcode", "PING"}}), 1);
}

TEST(PrometheusMergeTest, LabelValuesAreEscapedAgain) {
  const std::string text = "# TYPE a_total counter\na_total{v=\"q\\\"b\\\\n\\n\"} 1\n";
  const std::string out = RenderPrometheusText(Merge({text, text}));
  EXPECT_EQ(out, "# TYPE a_total counter\na_total{v=\"q\\\"b\\\\n\\n\"} 2\n");
}

TEST(PrometheusMergeTest, FirstTypeDeclarationWins) {
  const auto m =
      Merge({"# TYPE x counter\nx 1\n", "# TYPE x gauge\nx 5\n", "# TYPE x counter\nx 2\n"});
  ASSERT_NE(Find(m, "x"), nullptr);
  EXPECT_EQ(Find(m, "x")->type, "counter");
  EXPECT_EQ(Value(m, "x"), 3);
}

TEST(PrometheusMergeTest, CumulativeFamiliesDropGauges) {
  const auto fs = Parse(
      "# TYPE c_total counter\nc_total 4\n# TYPE g gauge\ng 2\n"
      "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"
      "# TYPE s summary\ns{quantile=\"0.5\"} 3\ns_sum 9\ns_count 3\n");
  const auto kept = CumulativeFamilies(fs);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_EQ(kept[0].name, "c_total");
  EXPECT_EQ(kept[1].name, "h");
  EXPECT_EQ(kept[2].name, "s");
  EXPECT_EQ(kept[2].samples.size(), 2u);  // _sum and _count, no quantile
}

// A /metrics endpoint whose text the test changes.
class FakeExporter {
 public:
  explicit FakeExporter(std::string text) : text_(std::move(text)) {
    server_.Route("GET", "/metrics", [this](const net::http::HttpRequest&) {
      std::lock_guard<std::mutex> lock(mu_);
      return net::http::HttpResponse{200, "text/plain", text_};
    });
    EXPECT_TRUE(server_.Start("127.0.0.1", 0).ok());
  }
  void Set(std::string text) {
    std::lock_guard<std::mutex> lock(mu_);
    text_ = std::move(text);
  }
  uint16_t port() const { return server_.port(); }
  void Stop() { server_.Stop(); }

 private:
  std::mutex mu_;
  std::string text_;
  net::http::HttpServer server_;
};

std::string Edge(int msgs, int connections) {
  return "# TYPE iris_msg_in_total counter\niris_msg_in_total " + std::to_string(msgs) +
         "\n# TYPE iris_connections_open gauge\niris_connections_open " +
         std::to_string(connections) + "\n";
}

TEST(ScrapeCollectorTest, MergesEdgesAndKeepsCountersOverARestart) {
  FakeExporter e0(Edge(5, 2)), e1(Edge(7, 3));
  std::mutex mu;
  std::vector<std::optional<ScrapeTarget>> targets = {ScrapeTarget{"127.0.0.1", e0.port(), 100},
                                                      ScrapeTarget{"127.0.0.1", e1.port(), 101}};
  Registry registry;
  Counter& failures = registry.GetCounter("failures_total", "F");
  ScrapeCollectorOptions o;
  o.slots = 2;
  o.target = [&](size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    return targets[i];
  };
  o.interval = std::chrono::milliseconds(10'000);  // cycles only when asked
  o.min_interval = std::chrono::milliseconds(0);
  o.failures = &failures;
  ScrapeCollector c(std::move(o));
  c.Start();
  // A cycle that starts after the change: two completions from now.
  auto fresh = [&] {
    const uint64_t n = c.cycles();
    ASSERT_TRUE(c.WaitForCycle(n, std::chrono::seconds(10)));
    ASSERT_TRUE(c.WaitForCycle(n + 1, std::chrono::seconds(10)));
  };
  fresh();
  auto m = Parse(c.ExposeMerged("# TYPE iris_bugs_total counter\niris_bugs_total 1\n"));
  EXPECT_EQ(Value(m, "iris_msg_in_total"), 12);
  EXPECT_EQ(Value(m, "iris_connections_open"), 5);
  EXPECT_EQ(Value(m, "iris_bugs_total"), 1);

  // Edge 0 is replaced by a new process (new pid) on the same port that counted 1 so far:
  // as with the edge port files, the old target goes before the new process answers.
  {
    std::lock_guard<std::mutex> lock(mu);
    targets[0].reset();
  }
  e0.Set(Edge(1, 1));
  {
    std::lock_guard<std::mutex> lock(mu);
    targets[0] = ScrapeTarget{"127.0.0.1", e0.port(), 200};
  }
  fresh();
  m = *c.Latest();
  EXPECT_EQ(Value(m, "iris_msg_in_total"), 13);  // 5 carried + 1 + 7
  EXPECT_EQ(Value(m, "iris_connections_open"), 4);

  // Edge 1 stops answering: its counts stay, its gauges go; the failure is counted.
  e1.Stop();
  fresh();
  m = *c.Latest();
  EXPECT_EQ(Value(m, "iris_msg_in_total"), 13);
  EXPECT_EQ(Value(m, "iris_connections_open"), 1);
  EXPECT_GE(failures.Value(), 1u);
  c.Stop();
}

TEST(ScrapeCollectorTest, HttpGetReportsUnreachableAndNonNumericHosts) {
  net::http::HttpServer s;
  ASSERT_TRUE(s.Start("127.0.0.1", 0).ok());
  const uint16_t port = s.port();
  auto notfound = HttpGet("127.0.0.1", port, "/metrics", std::chrono::seconds(2), 1 << 20);
  EXPECT_EQ(notfound.status().code(), StatusCode::kUnavailable);  // 404
  s.Stop();
  auto refused = HttpGet("127.0.0.1", port, "/metrics", std::chrono::seconds(2), 1 << 20);
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
  auto bad = HttpGet("localhost", port, "/metrics", std::chrono::seconds(2), 1 << 20);
  EXPECT_EQ(bad.status().code(), StatusCode::kBadRequest);
}

}  // namespace
}  // namespace iris::obs
