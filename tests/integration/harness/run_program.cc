#include "harness/run_program.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>

namespace iris::testing {

int RunProgram(std::vector<std::string> argv, std::string* output, int timeout_ms,
               int run_as_uid) {
  output->clear();
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid < 0) {
    close(pipefd[0]);
    close(pipefd[1]);
    return -1;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(pipefd[1], STDOUT_FILENO);
    dup2(pipefd[1], STDERR_FILENO);
    if (run_as_uid >= 0) {
      if (setgroups(0, nullptr) != 0 || setgid(static_cast<gid_t>(run_as_uid)) != 0 ||
          setuid(static_cast<uid_t>(run_as_uid)) != 0) {
        _exit(126);
      }
    }
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
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

}  // namespace iris::testing
