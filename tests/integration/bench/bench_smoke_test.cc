// iris-bench smoke test: runs the load generator at a tiny size against a real irisd (one
// process for the whole suite, started by the integration harness with the load-test
// limits: loopback exempt from the per-IP limit, high per-user send rates) and checks what it
// reports about correctness:
// every acknowledged message delivered exactly once, sessions established and kept. It also
// checks that the checker itself catches a lost and a duplicated delivery (injected at the
// client) and then exits non-zero. No figure about speed is asserted.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "harness/server_process.h"

namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}

struct BenchRun {
  int exit_code = -1;
  std::string output;
  nlohmann::json json;
};

class BenchSmokeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Burst above the sustained rate: with equal rates the sustained bucket holds one token
    // and pipelined SENDs would be refused RATE_LIMITED.
    server_ =
        new iris::testing::ServerProcess({"--connection-allowlist", "127.0.0.0/8", "--rate-per-sec",
                                          "1000000", "--rate-burst-per-sec", "2000000"},
                                         iris::testing::ServerProcess::Defaults::kProductionLimits);
    server_->Start();
  }
  static void TearDownTestSuite() {
    delete server_;  // SIGKILL: this suite does not test shutdown
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(server_ != nullptr && server_->running());
    char tmpl[] = "/tmp/iris-bench-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Runs iris-bench against the suite's irisd with the given arguments; waits for it to
  // exit (its own deadlines bound the run; ctest's timeout bounds a hang). Every call gets
  // its own user ids: the server keeps the inboxes of earlier runs.
  BenchRun Run(std::vector<std::string> args) {
    BenchRun r;
    const std::string json_path = dir_ + "/out.json";
    const std::string out_path = dir_ + "/out.txt";
    std::filesystem::remove(json_path);
    static uint64_t run = 0;
    ++run;
    std::vector<std::string> argv_s = {BuildDir() + "/tools/iris-bench/iris-bench",
                                       "--target",
                                       "127.0.0.1:" + std::to_string(server_->port()),
                                       "--data-dir",
                                       server_->data_dir(),
                                       "--server-pid",
                                       std::to_string(server_->pid()),
                                       "--user-base",
                                       std::to_string(run * 1'000'000'000),
                                       "--quiet",
                                       "--timeout-s",
                                       "20",
                                       "--drain-s",
                                       "10",
                                       "--json",
                                       json_path};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    const pid_t pid = fork();
    if (pid == 0) {
      const int fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      std::vector<char*> argv;
      for (auto& s : argv_s) argv.push_back(s.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    EXPECT_GT(pid, 0);
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream out(out_path);
    std::stringstream ss;
    ss << out.rdbuf();
    r.output = ss.str();
    std::ifstream j(json_path);
    if (j.good()) r.json = nlohmann::json::parse(j, nullptr, false);
    return r;
  }

  static const nlohmann::json* FindScenario(const BenchRun& r, const std::string& name) {
    if (!r.json.is_object() || !r.json.contains("scenarios")) return nullptr;
    for (const auto& s : r.json["scenarios"]) {
      if (s.value("scenario", "") == name) return &s;
    }
    return nullptr;
  }

  static iris::testing::ServerProcess* server_;
  std::string dir_;
};

iris::testing::ServerProcess* BenchSmokeTest::server_ = nullptr;

TEST_F(BenchSmokeTest, ThroughputAndConnectionsReportEveryMessageDeliveredOnce) {
  BenchRun r = Run({"--scenario", "throughput,connections", "--pairs", "6", "--window", "8",
                    "--duration-s", "1", "--sessions", "60", "--hold-s", "0.5"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(r.json.is_object()) << r.output;
  EXPECT_TRUE(r.json.value("success", false)) << r.output;

  const nlohmann::json* t = FindScenario(r, "throughput");
  ASSERT_NE(t, nullptr) << r.output;
  EXPECT_TRUE((*t)["ok"].get<bool>()) << r.output;
  const auto& res = (*t)["results"];
  EXPECT_EQ(res["sessions_established"].get<uint64_t>(), 12u);
  EXPECT_GT(res["total_acked"].get<uint64_t>(), 0u);
  EXPECT_EQ(res["total_refused"].get<uint64_t>(), 0u);
  EXPECT_EQ(res["total_sent"].get<uint64_t>(), res["total_acked"].get<uint64_t>());
  EXPECT_EQ(res["total_delivered"].get<uint64_t>(), res["total_acked"].get<uint64_t>());
  EXPECT_TRUE(res["drained"].get<bool>());
  for (const char* v :
       {"lost", "duplicates", "out_of_order", "id_mismatch", "unanswered", "sessions_dropped"}) {
    EXPECT_EQ((*t)["violations"][v].get<uint64_t>(), 0u) << v << "\n" << r.output;
  }

  const nlohmann::json* c = FindScenario(r, "connections");
  ASSERT_NE(c, nullptr) << r.output;
  EXPECT_TRUE((*c)["ok"].get<bool>()) << r.output;
  EXPECT_EQ((*c)["results"]["sessions_established"].get<uint64_t>(), 60u);
  EXPECT_EQ((*c)["results"]["sessions_failed"].get<uint64_t>(), 0u);
  EXPECT_EQ((*c)["violations"]["sessions_dropped"].get<uint64_t>(), 0u);
  // The server was measured (its RSS is read from /proc), whatever the figure is.
  EXPECT_GT((*c)["results"]["server_rss_established_bytes"].get<uint64_t>(), 0u);
}

TEST_F(BenchSmokeTest, SeveralProcessesShareTheSessionsAndReportBack) {
  BenchRun r = Run({"--scenario", "reconnect-storm", "--processes", "2", "--loops", "1",
                    "--storm-sessions", "40"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json* s = FindScenario(r, "reconnect-storm");
  ASSERT_NE(s, nullptr) << r.output;
  EXPECT_TRUE((*s)["ok"].get<bool>()) << r.output;
  EXPECT_EQ((*s)["results"]["dropped"].get<uint64_t>(), 40u);
  EXPECT_EQ((*s)["results"]["reconnected"].get<uint64_t>(), 40u);
  // One message each way before the drop and one after, per session.
  EXPECT_EQ((*s)["results"]["counters"]["acked"].get<uint64_t>(), 80u);
  EXPECT_EQ((*s)["results"]["counters"]["delivered"].get<uint64_t>(), 80u);
  EXPECT_EQ((*s)["violations"]["duplicates"].get<uint64_t>(), 0u);
  EXPECT_EQ((*s)["violations"]["lost"].get<uint64_t>(), 0u);
}

TEST_F(BenchSmokeTest, ReportsALostDeliveryAndExitsNonZero) {
  BenchRun r = Run({"--scenario", "throughput", "--pairs", "2", "--window", "4", "--duration-s",
                    "0.5", "--drain-s", "2", "--inject-drop-delivery", "7"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const nlohmann::json* t = FindScenario(r, "throughput");
  ASSERT_NE(t, nullptr) << r.output;
  EXPECT_FALSE((*t)["ok"].get<bool>());
  EXPECT_EQ((*t)["violations"]["lost"].get<uint64_t>(), 1u) << r.output;
  EXPECT_EQ((*t)["violations"]["duplicates"].get<uint64_t>(), 0u) << r.output;
  EXPECT_FALSE(r.json.value("success", true));
}

TEST_F(BenchSmokeTest, ReportsADuplicatedDeliveryAndExitsNonZero) {
  BenchRun r = Run({"--scenario", "throughput", "--pairs", "2", "--window", "4", "--duration-s",
                    "0.5", "--drain-s", "2", "--inject-duplicate-delivery", "7"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const nlohmann::json* t = FindScenario(r, "throughput");
  ASSERT_NE(t, nullptr) << r.output;
  EXPECT_EQ((*t)["violations"]["duplicates"].get<uint64_t>(), 1u) << r.output;
  EXPECT_EQ((*t)["violations"]["lost"].get<uint64_t>(), 0u) << r.output;
}

}  // namespace
