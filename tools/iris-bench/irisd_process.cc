#include "irisd_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <regex>

#include "bench_connection.h"

namespace iris::bench {

IrisdProcess::~IrisdProcess() {
  if (pid_ > 0) Stop(false);
}

Status IrisdProcess::Start(const std::string& binary, int loops,
                           const std::vector<std::string>& extra_args) {
  char tmpl[] = "/tmp/iris-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Internal("mkdtemp failed");
  data_dir_ = tmpl;
  std::vector<std::string> args = {binary, "--data-dir", data_dir_, "--listen", "127.0.0.1:0",
                                   "--admin-listen", "127.0.0.1:0", "--loops",
                                   std::to_string(loops), "--connection-allowlist", "127.0.0.0/8",
                                   "--rate-per-sec", "1000000",
                                   // burst > sustained: with equal rates the sustained bucket
                                   // holds a single token and a pipelined batch of SENDs is
                                   // refused RATE_LIMITED (capacity = (burst - rate) * 10 s).
                                   "--rate-burst-per-sec", "2000000"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return Internal("pipe failed");
  const std::string log = data_dir_ + "/irisd.log";
  pid_ = fork();
  if (pid_ < 0) return Internal("fork failed");
  if (pid_ == 0) {
    dup2(pipefd[1], STDOUT_FILENO);
    const int err = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (err >= 0) dup2(err, STDERR_FILENO);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(pipefd[1]);
  out_fd_ = pipefd[0];
  const std::regex client_re(R"(clients \(TLS 1\.3\): \S+ \(port (\d+)\))");
  std::string out;
  const int64_t deadline = MonoNowNs() + 30'000'000'000;
  while (MonoNowNs() < deadline) {
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) > 0) {
      char buf[4096];
      const ssize_t n = read(out_fd_, buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    std::smatch m;
    if (out.find("Connect with the CLI") != std::string::npos &&
        std::regex_search(out, m, client_re)) {
      port_ = static_cast<uint16_t>(std::stoi(m[1]));
      return Status::Ok();
    }
  }
  Stop(true);
  return Unavailable("irisd did not start (see " + log + "); output: " + out, 0);
}

int IrisdProcess::Stop(bool keep) {
  int status = 0;
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    const int64_t deadline = MonoNowNs() + 10'000'000'000;
    for (;;) {
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || r < 0) break;
      if (MonoNowNs() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      poll(nullptr, 0, 20);  // waiting for a child to exit: nothing to block on but time
    }
    pid_ = -1;
  }
  if (out_fd_ >= 0) close(out_fd_);
  out_fd_ = -1;
  if (!keep && !data_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(data_dir_, ec);
  }
  return status;
}

}  // namespace iris::bench
