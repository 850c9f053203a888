#include "harness/etcd_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "cluster/http_client.h"
#include "common/clock.h"
#include "support/wait_for.h"

namespace iris::testing {
namespace {

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

// A port that was free a moment ago (bound to port 0 and released).
uint16_t FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

EtcdProcess::EtcdProcess() {
  char tmpl[] = "/tmp/iris-etcd-XXXXXX";
  dir_ = mkdtemp(tmpl);
  client_port_ = FreePort();
  peer_port_ = FreePort();
  while (peer_port_ == client_port_) peer_port_ = FreePort();
}

EtcdProcess::~EtcdProcess() {
  if (pid_ > 0) Stop(SIGKILL);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string EtcdProcess::LogTail() const {
  std::ifstream in(dir_ + "/etcd.log");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > 4000 ? s.substr(s.size() - 4000) : s;
}

void EtcdProcess::EnableTls(std::string cert, std::string key, std::string ca,
                            std::string client_cert, std::string client_key) {
  tls_cert_ = std::move(cert);
  tls_key_ = std::move(key);
  tls_ca_ = std::move(ca);
  client_cert_ = std::move(client_cert);
  client_key_ = std::move(client_key);
}

bool EtcdProcess::Start() {
  const char* bin_env = std::getenv("IRIS_ETCD");
  const std::string bin = bin_env != nullptr ? bin_env : "/usr/bin/etcd";
  const bool tls = !tls_cert_.empty();
  const std::string client_url =
      std::string(tls ? "https" : "http") + "://" + endpoint();
  const std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port_);
  std::vector<std::string> args = {bin,
                                   "--name",
                                   "iris-test",
                                   "--data-dir",
                                   dir_ + "/data",
                                   "--listen-client-urls",
                                   client_url,
                                   "--advertise-client-urls",
                                   client_url,
                                   "--listen-peer-urls",
                                   peer_url,
                                   "--initial-advertise-peer-urls",
                                   peer_url,
                                   "--initial-cluster",
                                   "iris-test=" + peer_url,
                                   "--logger",
                                   "zap",
                                   "--log-outputs",
                                   "stderr"};
  if (tls) {
    args.insert(args.end(), {"--cert-file", tls_cert_, "--key-file", tls_key_, "--client-cert-auth",
                             "--trusted-ca-file", tls_ca_});
  }
  pid_ = fork();
  if (pid_ < 0) {
    ADD_FAILURE() << "fork failed";
    return false;
  }
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int log = open((dir_ + "/etcd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) {
      dup2(log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
    }
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  // Ready = answers a linearizable range (a leader exists and the store is open).
  std::shared_ptr<SSL_CTX> ctx;
  if (tls) {
    auto c = cluster::MakeClientTlsContext({tls_ca_, client_cert_, client_key_});
    if (!c.ok()) {
      ADD_FAILURE() << c.status().ToString();
      return false;
    }
    ctx = *c;
  }
  cluster::HttpConnection conn(endpoint(), ctx);
  bool exited = false;
  const bool serving = PollUntil(
      [&] {
        int status = 0;
        if (exited || waitpid(pid_, &status, WNOHANG) == pid_) {
          exited = true;
          return true;  // nothing more to wait for
        }
        auto r = conn.Post("/v3/kv/range", R"({"key":"AA=="})", NowMs() + 500);
        if (r.ok() && r->status == 200 && r->body.find("\"header\"") != std::string::npos) {
          return true;
        }
        conn.Close();
        return false;
      },
      20'000, /*poll_ms=*/50);
  if (exited) {
    pid_ = -1;
    ADD_FAILURE() << "etcd exited at start; log:\n" << LogTail();
    return false;
  }
  if (!serving) ADD_FAILURE() << "etcd did not serve within 20 s; log:\n" << LogTail();
  return serving;
}

void EtcdProcess::Stop(int sig) {
  if (pid_ <= 0) return;
  if (sig != SIGKILL) kill(pid_, SIGCONT);  // a stopped process must run to handle sig
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

void EtcdProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

bool EtcdProcess::Restart(int sig) {
  Stop(sig);
  return Start();
}

}  // namespace iris::testing
