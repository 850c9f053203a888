// Operability (issue 20): every binary reports its version, and irisd exports it as the
// iris_build_info metric.

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <regex>
#include <string>
#include <vector>

#include "integration/harness/server_process.h"

namespace iris::testing {
namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}

// Runs `argv` (argv[0] is the path) with stdout and stderr captured into *output; returns the
// exit code, or -1 when it did not exit within `timeout_ms` (then it is killed) or could not
// be run.
int RunProgram(std::vector<std::string> argv_s, std::string* output, int timeout_ms = 20'000) {
  output->clear();
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(pipefd[1], STDOUT_FILENO);
    dup2(pipefd[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(pipefd[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool eof = false;
  while (!eof && std::chrono::steady_clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{pipefd[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(pipefd[0], buf, sizeof(buf));
    if (n <= 0) {
      eof = true;
    } else {
      output->append(buf, static_cast<size_t>(n));
    }
  }
  close(pipefd[0]);
  if (!eof) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!eof || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// "<program> <major.minor.patch> (commit <hex or unknown>)" and nothing else.
const std::regex kVersionLine(R"(^(\S+) (\d+\.\d+\.\d+) \(commit ([0-9a-f]{7,40}|unknown)\)\n$)");

TEST(Version, EveryBinaryPrintsItsVersionAndExitsZero) {
  const std::vector<std::pair<std::string, std::string>> binaries = {
      {"irisd", BuildDir() + "/src/server/irisd"},
      {"irisctl", BuildDir() + "/tools/irisctl/irisctl"},
      {"iris", BuildDir() + "/tools/iris/iris"},
  };
  std::string version;
  for (const auto& b : binaries) {
    std::string out;
    EXPECT_EQ(RunProgram({b.second, "--version"}, &out), 0) << b.first << ": " << out;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(out, m, kVersionLine)) << b.first << " printed: " << out;
    EXPECT_EQ(m[1].str(), b.first);
    // All three come from the same build: the same version.
    if (version.empty()) version = m[2].str();
    EXPECT_EQ(m[2].str(), version) << b.first;
  }
}

TEST(Version, MetricsExportBuildInfoMatchingVersionFlag) {
  std::string out;
  ASSERT_EQ(RunProgram({BuildDir() + "/src/server/irisd", "--version"}, &out), 0) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_match(out, m, kVersionLine)) << out;
  const std::string series =
      "iris_build_info{commit=\"" + m[3].str() + "\",version=\"" + m[2].str() + "\"}";

  ServerProcess server;
  server.Start();
  std::string text;
  ASSERT_EQ(AdminRequest(server.admin_port(), "GET", "/metrics", "", "", &text), 200);
  EXPECT_NE(text.find("# TYPE iris_build_info gauge"), std::string::npos) << text;
  EXPECT_NE(text.find(series + " 1\n"), std::string::npos) << "want " << series << " 1 in\n"
                                                           << text;
}

}  // namespace
}  // namespace iris::testing
