// irisctl stats: the report printed from one scrape.

#include "stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "obs/metrics.h"

namespace iris::tools {
namespace {

// The report line that starts with `name` followed by a space.
std::string LineOf(const std::string& report, const std::string& name) {
  std::istringstream in(report);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return line;
  }
  return "";
}

std::vector<std::string> Words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  std::string s;
  while (in >> s) w.push_back(s);
  return w;
}

TEST(IrisctlStatsTest, PrintsQuantilesOfEachHistogramAndTheFourCounters) {
  obs::Registry reg;
  obs::Histogram& e2e = reg.GetHistogram("iris_e2e_latency_seconds", "e2e");
  // 100 observations at 2 ms and 1 at 2 s: P50/P90 near 2 ms, P99 still in the 2 ms bucket.
  for (int i = 0; i < 100; ++i) e2e.Observe(0.002);
  e2e.Observe(2.0);
  reg.GetHistogram("iris_db_write_latency_seconds", "db");  // no observations yet
  reg.GetCounter("iris_msg_in_total", "in").Inc(1234567);
  reg.GetCounter("iris_ack_sent_total", "acks").Inc(3);

  auto report = FormatStats(reg.ExposePrometheus());
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  auto e2e_words = Words(LineOf(*report, "iris_e2e_latency_seconds"));
  ASSERT_EQ(e2e_words.size(), 5u) << *report;
  EXPECT_EQ(e2e_words[1], "101");
  EXPECT_EQ(e2e_words[2], FormatSeconds(e2e.Quantile(0.5)));
  EXPECT_EQ(e2e_words[3], FormatSeconds(e2e.Quantile(0.9)));
  EXPECT_EQ(e2e_words[4], FormatSeconds(e2e.Quantile(0.99)));
  EXPECT_NE(e2e_words[2].find("ms"), std::string::npos) << e2e_words[2];

  auto db_words = Words(LineOf(*report, "iris_db_write_latency_seconds"));
  ASSERT_EQ(db_words.size(), 5u) << *report;
  EXPECT_EQ(db_words[1], "0");
  EXPECT_EQ(db_words[2], "-") << "no observations: no quantile";

  EXPECT_EQ(Words(LineOf(*report, "iris_msg_in_total")).at(1), "1234567");
  EXPECT_EQ(Words(LineOf(*report, "iris_ack_sent_total")).at(1), "3");
  EXPECT_EQ(Words(LineOf(*report, "iris_msg_out_total")).at(1), "absent");
  EXPECT_EQ(Words(LineOf(*report, "iris_dedup_hit_total")).at(1), "absent");
}

TEST(IrisctlStatsTest, RejectsTextThatIsNotAnExposition) {
  EXPECT_EQ(FormatStats("<html>oops</html>\n").status().code(), StatusCode::kBadRequest);
}

TEST(IrisctlStatsTest, FormatsSecondsWithAReadableUnit) {
  EXPECT_EQ(FormatSeconds(0.000850), "850us");
  EXPECT_EQ(FormatSeconds(0.0123), "12.3ms");
  EXPECT_EQ(FormatSeconds(1.25), "1.25s");
  EXPECT_EQ(FormatSeconds(std::nan("")), "-");
}

}  // namespace
}  // namespace iris::tools
