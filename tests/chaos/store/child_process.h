#pragma once
// A child process with its stdout on a pipe, read line by line with a deadline (poll), for
// the store's chaos tests. No sleeping: every wait blocks in poll(2) or waitpid(2).

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace iris::store::testing {

// Where the crash child binary is: $IRIS_BUILD_DIR/tests/chaos/store/iris_store_crash_child,
// else the path compiled in.
inline std::string CrashChildPath() {
  const char* build = std::getenv("IRIS_BUILD_DIR");
  if (build != nullptr && *build != '\0') {
    const std::string p = std::string(build) + "/tests/chaos/store/iris_store_crash_child";
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return IRIS_STORE_CRASH_CHILD;
}

class ChildProcess {
 public:
  // Starts argv[0] (looked up in PATH) with `env` added to the environment.
  ChildProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) std::abort();
    pid_ = fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (fd_ >= 0) close(fd_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // The next line (without '\n'); nullopt at EOF or when `timeout_ms` passes.
  std::optional<std::string> ReadLine(int64_t timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (eof_) return std::nullopt;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      if (left <= 0) {
        timed_out_ = true;
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(left));
      if (r < 0) return std::nullopt;
      if (r == 0) continue;
      char buf[65536];
      const ssize_t n = read(fd_, buf, sizeof buf);
      if (n <= 0) {
        eof_ = true;
      } else {
        buffer_.append(buf, static_cast<size_t>(n));
      }
    }
  }

  void Kill() { kill(pid_, SIGKILL); }

  // Waits for the child to exit; returns the raw wait status.
  int Wait() {
    if (reaped_) return status_;
    while (waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return status_;
  }

  bool timed_out() const { return timed_out_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
  bool timed_out_ = false;
  bool reaped_ = false;
  int status_ = 0;
};

}  // namespace iris::store::testing
