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
  // Starts argv[0] (looked up in PATH) with `env` added to the environment. With
  // `stderr_path`, the child's stderr goes to that file (truncated; read it with StderrText).
  ChildProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
               const std::string& stderr_path = "")
      : stderr_path_(stderr_path) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) std::abort();
    int err_fd = -1;
    if (!stderr_path.empty()) {
      err_fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (err_fd < 0) std::abort();
    }
    pid_ = fork();
    if (pid_ < 0) std::abort();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
      for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    if (err_fd >= 0) close(err_fd);
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
    return ReadLineOr(-1, timeout_ms, nullptr);
  }

  // As ReadLine, but also returns (nullopt, *other_ready = true) as soon as `other_fd`
  // becomes readable while no complete line is buffered: for waiting on the child's output
  // and another event source (e.g. an inotify descriptor) at once. At EOF: nullopt, eof().
  std::optional<std::string> ReadLineOr(int other_fd, int64_t timeout_ms, bool* other_ready) {
    if (other_ready != nullptr) *other_ready = false;
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
      pollfd p[2] = {{fd_, POLLIN, 0}, {other_fd, POLLIN, 0}};
      const int r = poll(p, other_fd >= 0 ? 2 : 1, static_cast<int>(left));
      if (r < 0) return std::nullopt;
      if (r == 0) continue;
      if (other_fd >= 0 && (p[1].revents & (POLLIN | POLLERR | POLLHUP)) != 0) {
        *other_ready = true;
        return std::nullopt;
      }
      if (p[0].revents == 0) continue;
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

  // What the child wrote to stderr so far ("" without a stderr_path).
  std::string StderrText() const {
    std::string out;
    if (stderr_path_.empty()) return out;
    const int fd = open(stderr_path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    close(fd);
    return out;
  }

  bool timed_out() const { return timed_out_; }
  // The child closed its stdout (and every buffered line was read).
  bool eof() const { return eof_ && buffer_.find('\n') == std::string::npos; }
  pid_t pid() const { return pid_; }

 private:
  std::string stderr_path_;
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
  bool timed_out_ = false;
  bool reaped_ = false;
  int status_ = 0;
};

}  // namespace iris::store::testing
