// Structured logger: one JSON object per line with ts, level, msg and typed fields.

#include "obs/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace iris::obs {
namespace {

using nlohmann::json;

// A temporary file the logger writes to; Lines() reads what it wrote.
class LogFile {
 public:
  LogFile() {
    char tmpl[] = "/tmp/iris-log-test-XXXXXX";
    fd_ = mkstemp(tmpl);
    path_ = tmpl;
  }
  ~LogFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  std::vector<std::string> Lines() const {
    std::string all;
    char buf[4096];
    ssize_t n;
    off_t off = 0;
    while ((n = pread(fd_, buf, sizeof(buf), off)) > 0) {
      all.append(buf, static_cast<size_t>(n));
      off += n;
    }
    std::vector<std::string> lines;
    size_t pos = 0;
    while (pos < all.size()) {
      const size_t eol = all.find('\n', pos);
      EXPECT_NE(eol, std::string::npos) << "every event ends with a newline";
      if (eol == std::string::npos) break;
      lines.push_back(all.substr(pos, eol - pos));
      pos = eol + 1;
    }
    return lines;
  }

 private:
  int fd_;
  std::string path_;
};

TEST(LogTest, WritesOneJsonObjectPerLineWithTypedFields) {
  LogFile f;
  ManualClock clock(1'764'023'222'123);  // 2025-11-24T22:27:02.123Z
  Logger log(f.fd(), LogLevel::kDebug, &clock);
  const SpanContext trace = SpanContext::FromTraceIdBytes(std::string(15, '\0') + "\x2a", 1);
  log.Log(LogLevel::kWarn, "degradation level changed \"now\"",
          {{"from", 0}, {"to", 2u}, {"pressure", 1.25}, {"forced", false},
           {"path", std::string("/tmp/x\n")}, {"big", uint64_t{18'446'744'073'709'551'615ULL}},
           LogField::Trace(trace)});
  auto lines = f.Lines();
  ASSERT_EQ(lines.size(), 1u);
  // ts, level and msg lead, in that order.
  EXPECT_EQ(lines[0].rfind(R"({"ts":"2025-11-24T22:27:02.123Z","level":"warn","msg":)", 0), 0u)
      << lines[0];
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["msg"], "degradation level changed \"now\"");
  EXPECT_EQ(j["from"], 0);
  EXPECT_EQ(j["to"], 2);
  EXPECT_EQ(j["pressure"], 1.25);
  EXPECT_EQ(j["forced"], false);
  EXPECT_EQ(j["path"], "/tmp/x\n");
  EXPECT_EQ(j["big"].get<uint64_t>(), 18'446'744'073'709'551'615ULL);
  EXPECT_EQ(j["trace_id"], "0000000000000000000000000000002a");
}

TEST(LogTest, SkipsEventsBelowTheLevel) {
  LogFile f;
  Logger log(f.fd(), LogLevel::kWarn);
  log.Log(LogLevel::kDebug, "d");
  log.Log(LogLevel::kInfo, "i");
  log.Log(LogLevel::kWarn, "w");
  log.Log(LogLevel::kError, "e");
  log.set_level(LogLevel::kError);
  EXPECT_FALSE(log.Enabled(LogLevel::kWarn));
  log.Log(LogLevel::kWarn, "w2");
  auto lines = f.Lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(json::parse(lines[0])["level"], "warn");
  EXPECT_EQ(json::parse(lines[1])["level"], "error");
}

TEST(LogTest, ParsesLevelNames) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("info"), LogLevel::kInfo);
  EXPECT_EQ(*ParseLogLevel("warn"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
  EXPECT_EQ(ParseLogLevel("verbose").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ParseLogLevel("").status().code(), StatusCode::kBadRequest);
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    EXPECT_EQ(*ParseLogLevel(LogLevelName(l)), l);
  }
}

TEST(LogTest, InvalidTraceContextGivesAnEmptyTraceId) {
  LogFile f;
  Logger log(f.fd());
  log.Log(LogLevel::kInfo, "no trace", {LogField::Trace(SpanContext{})});
  auto lines = f.Lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(json::parse(lines[0])["trace_id"], "");
}

TEST(LogRateLimiterTest, LetsOneThroughPerIntervalAndCountsTheRest) {
  ManualClock clock;
  LogRateLimiter limiter(10'000, &clock);
  uint64_t suppressed = 99;
  ASSERT_TRUE(limiter.Allow(&suppressed));  // the first event always passes
  EXPECT_EQ(suppressed, 0u);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(limiter.Allow(&suppressed));
  clock.AdvanceMillis(9'999);
  EXPECT_FALSE(limiter.Allow(&suppressed));
  clock.AdvanceMillis(1);
  ASSERT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 6u);  // the six held back since the first
  EXPECT_FALSE(limiter.Allow(&suppressed));
  clock.AdvanceMillis(10'000);
  ASSERT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 1u);
}

}  // namespace
}  // namespace iris::obs
