// Reading an exposition back: families, labels, histograms and their quantiles (what
// `irisctl stats` prints).

#include "obs/prometheus_text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

namespace iris::obs {
namespace {

const PromFamily* Find(const std::vector<PromFamily>& fs, const std::string& name) {
  for (const auto& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

TEST(PrometheusTextTest, ParsesFamiliesLabelsEscapesAndTimestamps) {
  const std::string text =
      "# HELP a_total Things.\n"
      "# TYPE a_total counter\n"
      "a_total{code=\"BAD_REQUEST\",note=\"q\\\"b\\\\n\\n\"} 3\n"
      "a_total{code=\"INTERNAL\"} 4 1700000000000\n"
      "\n"
      "# a free comment\n"
      "# TYPE g gauge\n"
      "g -2.5e-3\n"
      "loose_metric +Inf\n";
  auto fs = ParsePrometheusText(text);
  ASSERT_TRUE(fs.ok()) << fs.status().ToString();
  const PromFamily* a = Find(*fs, "a_total");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->type, "counter");
  EXPECT_EQ(a->help, "Things.");
  ASSERT_EQ(a->samples.size(), 2u);
  ASSERT_EQ(a->samples[0].labels.size(), 2u);
  EXPECT_EQ(a->samples[0].labels[1].second, "q\"b\\n\n");
  EXPECT_EQ(a->samples[1].value, 4);
  const PromFamily* g = Find(*fs, "g");
  ASSERT_NE(g, nullptr);
  EXPECT_DOUBLE_EQ(g->samples.at(0).value, -2.5e-3);
  const PromFamily* loose = Find(*fs, "loose_metric");
  ASSERT_NE(loose, nullptr);
  EXPECT_EQ(loose->type, "");
  EXPECT_TRUE(std::isinf(loose->samples.at(0).value));
}

TEST(PrometheusTextTest, RejectsMalformedLines) {
  for (const char* bad : {"x{a=\"1\" 2\n", "x{a=1} 2\n", "x 1.2.3\n", "{a=\"1\"} 2\n",
                          "# TYPE x kind\n", "x{a=\"\\q\"} 1\n", "x\n"}) {
    auto r = ParsePrometheusText(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kBadRequest) << bad;
  }
}

// The registry's own exposition, read back, gives the histogram's quantiles exactly.
TEST(PrometheusTextTest, HistogramQuantilesMatchTheRegistry) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> latency(std::log(0.002), 1.0);
  Registry reg;
  Histogram& h = reg.GetHistogram("iris_test_latency_seconds", "Test latency", {{"op", "send"}});
  Histogram& other = reg.GetHistogram("iris_test_latency_seconds", "Test latency", {{"op", "sync"}});
  for (int i = 0; i < 5000; ++i) h.Observe(latency(rng));
  other.Observe(0.5);
  reg.GetCounter("iris_msg_in_total", "Messages").Inc(7);

  auto fs = ParsePrometheusText(reg.ExposePrometheus());
  ASSERT_TRUE(fs.ok()) << fs.status().ToString();
  auto hs = HistogramsOf(*fs);
  ASSERT_EQ(hs.size(), 2u);
  const HistogramSeries* send = nullptr;
  for (const auto& s : hs) {
    if (FormatLabels(s.labels) == "op=\"send\"") send = &s;
  }
  ASSERT_NE(send, nullptr);
  EXPECT_EQ(send->name, "iris_test_latency_seconds");
  EXPECT_EQ(send->count, 5000u);
  EXPECT_EQ(send->bounds, h.bounds());
  EXPECT_NEAR(send->sum, h.Sum(), 1e-9 * std::max(1.0, h.Sum()));
  for (double q : {0.5, 0.9, 0.99}) {
    EXPECT_DOUBLE_EQ(send->Quantile(q), h.Quantile(q)) << "q=" << q;
  }
  const PromFamily* c = Find(*fs, "iris_msg_in_total");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->samples.at(0).value, 7);
}

TEST(PrometheusTextTest, HistogramQuantileInterpolatesLikePromQL) {
  // 10 observations in (0, 1], 10 in (1, 2], none above: P50 is the top of the first
  // bucket, P75 the middle of the second, P99 near its top.
  const std::string text =
      "# TYPE lat_seconds histogram\n"
      "lat_seconds_bucket{le=\"1\"} 10\n"
      "lat_seconds_bucket{le=\"2\"} 20\n"
      "lat_seconds_bucket{le=\"+Inf\"} 20\n"
      "lat_seconds_sum 25\n"
      "lat_seconds_count 20\n"
      "# TYPE broken_seconds histogram\n"
      "broken_seconds_bucket{le=\"1\"} 10\n"
      "broken_seconds_bucket{le=\"2\"} 5\n"
      "broken_seconds_bucket{le=\"+Inf\"} 20\n";
  auto fs = ParsePrometheusText(text);
  ASSERT_TRUE(fs.ok());
  auto hs = HistogramsOf(*fs);
  ASSERT_EQ(hs.size(), 1u) << "a non-cumulative histogram is skipped";
  EXPECT_DOUBLE_EQ(hs[0].Quantile(0.5), 1.0);
  EXPECT_DOUBLE_EQ(hs[0].Quantile(0.75), 1.5);
  EXPECT_DOUBLE_EQ(hs[0].Quantile(0.99), 1.98);
  EXPECT_EQ(hs[0].count, 20u);
  EXPECT_EQ(hs[0].sum, 25);
}

}  // namespace
}  // namespace iris::obs
