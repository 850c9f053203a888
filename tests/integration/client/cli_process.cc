#include "cli_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <system_error>

namespace iris::testing {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

pid_t Spawn(const std::vector<std::string>& argv_s, int* in_fd, int* out_fd, int* err_fd) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    return -1;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (const auto& s : argv_s) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  *in_fd = in[1];
  *out_fd = out[0];
  *err_fd = err[0];
  signal(SIGPIPE, SIG_IGN);
  return pid;
}

std::vector<std::string> Argv(const std::string& home, const std::vector<std::string>& args) {
  std::vector<std::string> v = {IrisBinary(), "--home", home};
  v.insert(v.end(), args.begin(), args.end());
  return v;
}

int ExitCode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

}  // namespace

TempDir::TempDir() {
  char tmpl[] = "/tmp/iris-cli-test-XXXXXX";
  path_ = mkdtemp(tmpl);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string IrisBinary() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return std::string(d != nullptr ? d : ".") + "/tools/iris/iris";
}

std::vector<nlohmann::json> CliResult::Json() const {
  std::vector<nlohmann::json> v;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded()) v.push_back(std::move(j));
  }
  return v;
}

CliResult RunIris(const std::string& home, const std::vector<std::string>& args,
                  const std::string& input, int timeout_ms) {
  CliResult r;
  int in_fd, out_fd, err_fd;
  const pid_t pid = Spawn(Argv(home, args), &in_fd, &out_fd, &err_fd);
  if (pid < 0) return r;
  if (!input.empty() && write(in_fd, input.data(), input.size()) < 0) {
    // the child exited early; its output says why
  }
  close(in_fd);
  const int64_t deadline = NowMs() + timeout_ms;
  bool out_open = true, err_open = true;
  while ((out_open || err_open) && NowMs() < deadline) {
    pollfd p[2] = {{out_open ? out_fd : -1, POLLIN, 0}, {err_open ? err_fd : -1, POLLIN, 0}};
    if (poll(p, 2, static_cast<int>(std::max<int64_t>(1, deadline - NowMs()))) <= 0) continue;
    char buf[8192];
    for (int i = 0; i < 2; ++i) {
      if (p[i].revents == 0) continue;
      const ssize_t n = read(i == 0 ? out_fd : err_fd, buf, sizeof(buf));
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  if (out_open || err_open) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  close(out_fd);
  close(err_fd);
  r.exit_code = (out_open || err_open) ? -1 : ExitCode(status);
  return r;
}

IrisChild::IrisChild(const std::string& home, const std::vector<std::string>& args) {
  pid_ = Spawn(Argv(home, args), &in_fd_, &out_fd_, &err_fd_);
}

IrisChild::~IrisChild() {
  if (pid_ > 0) Kill(SIGKILL);
  if (in_fd_ >= 0) close(in_fd_);
  if (out_fd_ >= 0) close(out_fd_);
  if (err_fd_ >= 0) close(err_fd_);
}

void IrisChild::WriteLine(const std::string& line) {
  const std::string l = line + "\n";
  if (in_fd_ >= 0 && write(in_fd_, l.data(), l.size()) < 0) {
    // the child is gone; the test sees it in its output
  }
}

void IrisChild::CloseStdin() {
  if (in_fd_ >= 0) close(in_fd_);
  in_fd_ = -1;
}

void IrisChild::Pump(int timeout_ms) {
  pollfd p[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
  if (poll(p, 2, timeout_ms) <= 0) return;
  char buf[8192];
  if (p[1].revents != 0) {
    const ssize_t n = read(err_fd_, buf, sizeof(buf));
    if (n > 0) {
      err_.append(buf, static_cast<size_t>(n));
    } else {
      close(err_fd_);
      err_fd_ = -1;
    }
  }
  if (p[0].revents != 0) {
    const ssize_t n = read(out_fd_, buf, sizeof(buf));
    if (n > 0) {
      out_buf_.append(buf, static_cast<size_t>(n));
    } else {
      close(out_fd_);
      out_fd_ = -1;
    }
  }
  size_t nl;
  while ((nl = out_buf_.find('\n')) != std::string::npos) {
    auto j = nlohmann::json::parse(out_buf_.substr(0, nl), nullptr, false);
    out_buf_.erase(0, nl + 1);
    if (!j.is_discarded()) lines_.push_back(std::move(j));
  }
}

nlohmann::json IrisChild::WaitFor(const std::function<bool(const nlohmann::json&)>& pred,
                                  int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    while (next_line_ < lines_.size()) {
      const auto& j = lines_[next_line_++];
      if (pred(j)) return j;
    }
    if (NowMs() >= deadline || (out_fd_ < 0 && err_fd_ < 0)) return nullptr;
    if (out_fd_ < 0 && err_fd_ < 0) return nullptr;
    Pump(static_cast<int>(std::max<int64_t>(1, deadline - NowMs())));
    if (out_fd_ < 0) {
      // stdout closed: drain what is left, then give up
      while (next_line_ < lines_.size()) {
        const auto& j = lines_[next_line_++];
        if (pred(j)) return j;
      }
      return nullptr;
    }
  }
}

int IrisChild::Kill(int sig) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return ExitCode(status);
}

int IrisChild::Wait(int timeout_ms) {
  if (pid_ <= 0) return -1;
  const int64_t deadline = NowMs() + timeout_ms;
  // Read output while waiting so the child never blocks on a full pipe.
  while (NowMs() < deadline && (out_fd_ >= 0 || err_fd_ >= 0)) {
    if (out_fd_ < 0) {
      pollfd p{err_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(deadline - NowMs())) > 0) {
        char buf[4096];
        const ssize_t n = read(err_fd_, buf, sizeof(buf));
        if (n > 0)
          err_.append(buf, static_cast<size_t>(n));
        else {
          close(err_fd_);
          err_fd_ = -1;
        }
      }
      continue;
    }
    Pump(static_cast<int>(std::max<int64_t>(1, deadline - NowMs())));
  }
  if (out_fd_ >= 0 || err_fd_ >= 0) return Kill(SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return ExitCode(status);
}

}  // namespace iris::testing
