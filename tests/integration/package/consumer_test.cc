// The installed client library as a dependency (issue 20): package_consumer_build (ctest
// fixture, consumer_build.cmake) installed libiris-client-dev into a temporary prefix and
// built consumer/ against it with find_package(iris CONFIG); this runs that program against
// a real irisd: it must connect, log two users in, deliver one message and print "ok".

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/server_process.h"

namespace iris::testing {
namespace {

struct ProgramRun {
  int exit_code = -1;  // -1: killed at the deadline or by a signal
  std::string output;  // stdout and stderr, interleaved
};

// Runs argv[0] with argv to completion, reading its output until it closes; SIGKILL at the
// deadline.
ProgramRun RunProgram(const std::vector<std::string>& argv, int timeout_ms) {
  ProgramRun r;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return r;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  bool open = pid > 0;
  while (open) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n <= 0) {
      open = false;
    } else {
      r.output.append(buf, static_cast<size_t>(n));
    }
  }
  close(fds[0]);
  if (pid <= 0) return r;
  if (open) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!open && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  return r;
}

TEST(PackageConsumer, FindPackageConsumerDeliversAMessageThroughARealServer) {
  const char* consumer = std::getenv("IRIS_CONSUMER");
  ASSERT_NE(consumer, nullptr) << "IRIS_CONSUMER (set by ctest) names the consumer binary";
  ASSERT_TRUE(std::filesystem::exists(consumer))
      << consumer << " is missing: package_consumer_build (the ctest fixture) builds it";

  ServerProcess server;
  server.Start();
  const std::string state = server.data_dir() + "-consumer";
  std::filesystem::remove_all(state);
  std::filesystem::create_directories(state);
  const uint64_t alice = 4101, bob = 4102;

  const ProgramRun r =
      RunProgram({consumer, "127.0.0.1", std::to_string(server.port()), server.cert_file(), state,
                  std::to_string(bob), server.Token(alice), server.Token(bob)},
                 90'000);
  std::filesystem::remove_all(state);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "ok\n");
}

}  // namespace
}  // namespace iris::testing
