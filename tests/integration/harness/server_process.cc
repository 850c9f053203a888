#include "harness/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <sstream>

#include "client/connection_test_access.h"
#include "common/clock.h"
#include "common/uuid.h"
#include "harness/run_program.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

}  // namespace

ServerProcess::ServerProcess(std::vector<std::string> extra_args, Defaults defaults) {
  args_ = {"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--loops", "2"};
  if (defaults == Defaults::kTestFriendly) {
    for (const char* a : {"--connection-allowlist", "127.0.0.0/8", "--rate-per-sec", "1000000",
                          "--rate-burst-per-sec", "2000000"}) {
      args_.emplace_back(a);
    }
  }
  if (defaults == Defaults::kProductionLimits) {
    args_.insert(args_.end(), {"--exempt-loopback", "false"});
  }
  for (auto& a : extra_args) args_.push_back(std::move(a));
  // IRIS_TEST_EDGE_PROCESSES=N runs every server of a suite as a node of N edge processes,
  // so that one suite checks both shapes (ctest registers the suites twice, see
  // cmake/IrisTargets.cmake). Tests that choose a shape themselves keep theirs.
  if (const char* n = std::getenv("IRIS_TEST_EDGE_PROCESSES"); n != nullptr && *n != '\0') {
    const bool chosen = std::find_if(args_.begin(), args_.end(), [](const std::string& a) {
                          return a == "--edge-processes" || a == "--role";
                        }) != args_.end();
    if (!chosen) args_.insert(args_.end(), {"--edge-processes", n});
  }
  char tmpl[] = "/tmp/iris-test-XXXXXX";
  data_dir_ = mkdtemp(tmpl);
}

void ServerProcess::SetFlag(const std::string& flag, const std::string& value) {
  auto it = std::find(args_.begin(), args_.end(), flag);
  if (it != args_.end() && it + 1 != args_.end()) {
    *(it + 1) = value;
  } else {
    args_.insert(args_.end(), {flag, value});
  }
}

void ServerProcess::set_network(std::string netns_path, std::string host,
                                const std::string& clients) {
  netns_ = std::move(netns_path);
  host_ = std::move(host);
  SetFlag("--listen", host_ + ":0");
  SetFlag("--admin-listen", host_ + ":0");
  if (std::find(args_.begin(), args_.end(), "--peer-listen") != args_.end()) {
    SetFlag("--peer-listen", host_ + ":0");
  }
  args_.insert(args_.end(), {"--tls-san", host_, "--connection-allowlist", clients});
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop(SIGKILL);
  std::error_code ec;
  std::filesystem::remove_all(data_dir_, ec);
}

void ServerProcess::Start() {
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  const std::string bin = BuildDir() + "/src/server/irisd";
  std::vector<std::string> argv_s = {bin, "--data-dir", data_dir_};
  argv_s.insert(argv_s.end(), args_.begin(), args_.end());
  pid_ = fork();
  ASSERT_GE(pid_, 0);
  if (pid_ == 0) {
    // Never outlive the test: an orphaned irisd would hold ctest's output pipe open.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (nofile_soft_ != 0) {
      rlimit rl{};
      getrlimit(RLIMIT_NOFILE, &rl);
      if (nofile_hard_ != 0) rl.rlim_max = static_cast<rlim_t>(nofile_hard_);
      rl.rlim_cur = static_cast<rlim_t>(nofile_soft_);
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(126);
    }
    if (!netns_.empty()) {
      const int ns = open(netns_.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) _exit(124);
    }
    dup2(pipefd[1], STDOUT_FILENO);
    if (!log_file_.empty()) {
      const int log_fd = open(log_file_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (log_fd < 0 || dup2(log_fd, STDERR_FILENO) < 0) _exit(125);
    }
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  close(pipefd[1]);
  out_fd_ = pipefd[0];
  std::string out;
  const int64_t deadline = NowMs() + 20'000;
  const std::regex client_re(R"(clients \(TLS 1\.3\): \S+ \(port (\d+)\))");
  const std::regex admin_re(R"(admin HTTP: +\S+ \(port (\d+)\))");
  std::smatch m1, m2;
  while (NowMs() < deadline) {
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) > 0) {
      char buf[4096];
      const ssize_t n = read(out_fd_, buf, sizeof(buf));
      if (n <= 0) break;  // exited
      out.append(buf, static_cast<size_t>(n));
    }
    if (std::regex_search(out, m1, client_re) && std::regex_search(out, m2, admin_re) &&
        out.find("Connect with the CLI") != std::string::npos) {
      port_ = static_cast<uint16_t>(std::stoi(m1[1]));
      admin_port_ = static_cast<uint16_t>(std::stoi(m2[1]));
      return;
    }
  }
  // Why: how it ended (the harness's own exit codes: 124 setns, 125 log file, 126
  // rlimit, 127 exec) and its log, which holds irisd's errors when it goes to a file.
  std::string why = "still running";
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    why = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                            : "killed by signal " + std::to_string(WTERMSIG(status));
    pid_ = -1;
  }
  std::string log;
  if (!log_file_.empty()) {
    std::ifstream in(log_file_);
    log.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (log.size() > 4000) log = "..." + log.substr(log.size() - 4000);
  }
  FAIL() << "irisd did not start (" << why << "); output so far:\n"
         << out << (log_file_.empty() ? "" : "\nits log (" + log_file_ + "):\n" + log);
}

namespace {
// Under the sanitizer run (make test-sanitize sets ASAN_OPTIONS, with abort_on_error=1) a
// report ends irisd with SIGABRT; a cluster test whose other nodes carry on would not notice.
// So there an irisd that aborted on its own fails the test, and so does a report in its log.
void ExpectNoSanitizerReport(pid_t pid, bool ended_on_its_own, int status,
                             const std::string& log_file) {
  if (std::getenv("ASAN_OPTIONS") == nullptr) return;
  if (ended_on_its_own && WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) {
    ADD_FAILURE() << "irisd (pid " << pid << ") aborted on its own: a sanitizer report or a "
                  << "failed assertion (its stderr" << (log_file.empty() ? "" : ": " + log_file)
                  << ")";
  }
  if (log_file.empty()) return;
  std::ifstream in(log_file);
  const std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* mark : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"}) {
    if (log.find(mark) != std::string::npos) {
      ADD_FAILURE() << "a sanitizer report (" << mark << ") in irisd's log " << log_file;
    }
  }
}
}  // namespace

int ServerProcess::Stop(int sig) {
  if (pid_ <= 0) return -1;
  int status = 0;
  const bool ended = waitpid(pid_, &status, WNOHANG) == pid_;
  if (!ended) {
    kill(pid_, sig);
    waitpid(pid_, &status, 0);
  }
  ExpectNoSanitizerReport(pid_, ended, status, log_file_);
  pid_ = -1;
  if (out_fd_ >= 0) close(out_fd_);
  out_fd_ = -1;
  return status;
}

void ServerProcess::KillAndRestart() {
  Stop(SIGKILL);
  Start();
}

int ServerProcess::RunUntilExit(std::string* output, int timeout_ms) {
  output->clear();
  if (pid_ > 0) return -1;
  std::vector<std::string> argv = {BuildDir() + "/src/server/irisd", "--data-dir", data_dir_};
  argv.insert(argv.end(), args_.begin(), args_.end());
  return RunProgram(std::move(argv), output, timeout_ms);
}

std::string ServerProcess::FlagOr(const std::string& flag, const std::string& fallback) const {
  for (size_t i = 0; i + 1 < args_.size(); ++i) {
    if (args_[i] == flag) return args_[i + 1];
  }
  return fallback;
}
std::string ServerProcess::jwt_secret() const {
  return ReadFile(FlagOr("--jwt-secret-file", data_dir_ + "/jwt.secret"));
}
std::string ServerProcess::admin_token() const {
  return ReadFile(FlagOr("--admin-token-file", data_dir_ + "/admin.token"));
}

std::string ServerProcess::Token(uint64_t user) const { return Token(user, 1); }

std::string ServerProcess::Token(uint64_t user, uint32_t device) const {
  auth::Claims c;
  c.user_id = user;
  c.device = device;
  c.iat = SystemClock::Instance().WallMillis() / 1000;
  c.exp = c.iat + 3600;
  c.jti =
      "t-" + std::to_string(user) + "-" + std::to_string(device) + "-" + std::to_string(NowMs());
  return Token(c);
}

std::string ServerProcess::Token(const auth::Claims& c) const {
  return auth::MintToken(jwt_secret(), c);
}

namespace {

std::optional<double> SeriesValue(const std::string& body, const std::string& series) {
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

std::optional<std::string> MetricsBody(const ServerProcess& server) {
  std::string body;
  if (AdminRequest(server.host(), server.admin_port(), "GET", "/metrics", "", "", &body) != 200) {
    return std::nullopt;
  }
  return body;
}

}  // namespace

std::optional<double> FreshMetric(const ServerProcess& server, const std::string& series) {
  constexpr char kCycles[] = "iris_edge_scrape_cycles_total";
  std::optional<std::string> body = MetricsBody(server);
  if (!body) return std::nullopt;
  const std::optional<double> start = SeriesValue(*body, kCycles);
  if (!start) return SeriesValue(*body, series);  // one process: its own registry
  const int64_t deadline = NowMs() + 10'000;
  for (;;) {
    // A round that completed twice more began after this call: it saw everything before.
    if (SeriesValue(*body, kCycles).value_or(0) >= *start + 2) return SeriesValue(*body, series);
    if (NowMs() > deadline) {
      ADD_FAILURE() << "the node's scrape of its edge processes made no progress in 10 s";
      return SeriesValue(*body, series);
    }
    pollfd none{-1, 0, 0};
    poll(&none, 1, 20);  // pace the re-reads of /metrics (a round takes ~0.5 s)
    body = MetricsBody(server);
    if (!body) return std::nullopt;
  }
}

int AdminRequest(uint16_t port, const std::string& method, const std::string& path,
                 const std::string& bearer, const std::string& body, std::string* response) {
  return AdminRequest("127.0.0.1", port, method, path, bearer, body, response);
}

int AdminRequest(const std::string& host, uint16_t port, const std::string& method,
                 const std::string& path, const std::string& bearer, const std::string& body,
                 std::string* response) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
    close(fd);
    return -1;
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  if (!bearer.empty()) req += "Authorization: Bearer " + bearer + "\r\n";
  req += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return -1;
  }
  std::string r;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) r.append(buf, static_cast<size_t>(n));
  close(fd);
  if (r.size() < 12) return -1;
  const size_t at = r.find("\r\n\r\n");
  if (response != nullptr) *response = at == std::string::npos ? "" : r.substr(at + 4);
  return std::stoi(r.substr(9, 3));
}

std::unique_ptr<TestClient> TestClient::Connect(const ServerProcess& server) {
  return Connect(server, "");
}

std::unique_ptr<TestClient> TestClient::Connect(const ServerProcess& server,
                                                const std::string& source_address) {
  client::ConnectOptions o;
  o.host = server.host();
  o.port = server.port();
  o.ca_file = server.cert_file();
  o.source_address = source_address;
  auto c = client::Connection::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return nullptr;
  auto tc = std::make_unique<TestClient>();
  tc->conn_ = std::move(c).value();
  return tc;
}

Status TestClient::SendRaw(std::string_view bytes) {
  return client::ConnectionTestAccess::SendRaw(*conn_, bytes);
}

client::ReceivedFrame TestClient::Hello(const std::string& token, uint64_t cursor,
                                        uint32_t page_size) {
  v1::Hello h;
  h.add_versions(1);
  h.add_capabilities("receipts");
  h.set_token(token);
  h.set_cursor(cursor);
  h.set_page_size(page_size);
  h.set_client("iris-test/1");
  EXPECT_TRUE(conn_->SendFrame(static_cast<uint8_t>(wire::Opcode::kHello), h).ok());
  auto f = Next(10'000);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? *f : client::ReceivedFrame{};
}

v1::Welcome TestClient::Login(const ServerProcess& server, uint64_t user, uint64_t cursor,
                              uint32_t page_size) {
  auto f = Hello(server.Token(user), cursor, page_size);
  v1::Welcome w;
  EXPECT_EQ(f.opcode, static_cast<uint8_t>(wire::Opcode::kWelcome));
  EXPECT_TRUE(w.ParseFromString(f.payload));
  EXPECT_EQ(w.user_id(), user);
  return w;
}

uint64_t TestClient::CatchUp(std::vector<v1::Envelope>* out, int timeout_ms) {
  std::string why;
  const std::optional<uint64_t> cursor = TryCatchUp(out, timeout_ms, &why);
  if (!cursor) ADD_FAILURE() << "catch-up did not finish: " << why;
  return cursor.value_or(0);
}

std::optional<uint64_t> TestClient::TryCatchUp(std::vector<v1::Envelope>* out, int timeout_ms,
                                               std::string* why) {
  const int64_t deadline = NowMs() + timeout_ms;
  // Frames already stashed come first, once each; the others read meanwhile are stashed
  // again at the end (never re-read here: that would spin on one stashed frame).
  std::vector<client::ReceivedFrame> pending = std::move(stash_);
  stash_.clear();
  std::vector<client::ReceivedFrame> kept;
  size_t next_pending = 0;
  auto finish = [&](std::optional<uint64_t> r) {
    for (; next_pending < pending.size(); ++next_pending) {
      kept.push_back(std::move(pending[next_pending]));
    }
    stash_.insert(stash_.begin(), std::make_move_iterator(kept.begin()),
                  std::make_move_iterator(kept.end()));
    return r;
  };
  for (;;) {
    client::ReceivedFrame frame;
    if (next_pending < pending.size()) {
      frame = std::move(pending[next_pending++]);
    } else {
      const int64_t left = deadline - NowMs();
      if (left <= 0) {
        *why = "no SYNC_DONE within " + std::to_string(timeout_ms) + " ms";
        return finish(std::nullopt);
      }
      auto f = conn_->ReadFrame(static_cast<int>(left));
      if (!f.ok()) {
        *why = f.status().ToString();
        return finish(std::nullopt);
      }
      frame = std::move(*f);
    }
    if (frame.opcode == static_cast<uint8_t>(wire::Opcode::kSyncDone)) {
      v1::SyncDone d;
      d.ParseFromString(frame.payload);
      return finish(d.cursor());
    }
    if (frame.opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
      v1::Error e;
      if (e.ParseFromString(frame.payload) && e.fatal()) {
        *why = "fatal ERROR " + std::to_string(e.code()) + ": " + e.message();
        return finish(std::nullopt);
      }
    }
    if (frame.opcode == static_cast<uint8_t>(wire::Opcode::kSyncPage)) {
      v1::SyncPage p;
      EXPECT_TRUE(p.ParseFromString(frame.payload));
      for (const auto& e : p.messages()) out->push_back(e);
      if (p.has_more()) {
        v1::SyncAck a;
        a.set_cursor(p.cursor());
        EXPECT_TRUE(conn_->SendFrame(static_cast<uint8_t>(wire::Opcode::kSyncAck), a).ok());
      }
      continue;
    }
    kept.push_back(std::move(frame));
  }
}

void TestClient::SendAsync(uint64_t request_id, uint64_t recipient, const std::string& body,
                           const std::string& key, const std::string& trace_id) {
  v1::Send s;
  s.set_request_id(request_id);
  s.set_recipient(recipient);
  s.set_body(body);
  s.set_idempotency_key(key);
  s.set_trace_id(trace_id);
  EXPECT_TRUE(conn_->SendFrame(static_cast<uint8_t>(wire::Opcode::kSend), s).ok());
}

client::ReceivedFrame TestClient::Send(uint64_t request_id, uint64_t recipient,
                                       const std::string& body, const std::string& key) {
  SendAsync(request_id, recipient, body, key);
  // A reply already stashed (read while waiting for something else) comes first.
  for (size_t i = 0; i < stash_.size(); ++i) {
    if (stash_[i].opcode == static_cast<uint8_t>(wire::Opcode::kSendAck) ||
        stash_[i].opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
      auto f = std::move(stash_[i]);
      stash_.erase(stash_.begin() + static_cast<long>(i));
      return f;
    }
  }
  for (;;) {
    // Read the socket (not the stash: other frames stay stashed for later Expect calls).
    auto f = conn_->ReadFrame(10'000);
    if (!f.ok()) {
      ADD_FAILURE() << "no reply to SEND: " << f.status().ToString();
      return {};
    }
    if (f->opcode == static_cast<uint8_t>(wire::Opcode::kSendAck) ||
        f->opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
      return *f;
    }
    stash_.push_back(std::move(*f));
  }
}

client::ReceivedFrame TestClient::Ask(uint8_t opcode, const google::protobuf::MessageLite& m,
                                      const std::vector<uint8_t>& answers) {
  EXPECT_TRUE(conn_->SendFrame(opcode, m).ok());
  for (;;) {
    auto f = Next(10'000);
    if (!f.ok()) {
      ADD_FAILURE() << f.status().ToString();
      return {};
    }
    if (f->opcode == static_cast<uint8_t>(wire::Opcode::kError)) return *f;
    if (std::find(answers.begin(), answers.end(), f->opcode) != answers.end()) return *f;
  }
}

client::ReceivedFrame TestClient::Ask(wire::Opcode opcode, const google::protobuf::MessageLite& m,
                                      std::initializer_list<wire::Opcode> answers) {
  std::vector<uint8_t> ops;
  for (wire::Opcode a : answers) ops.push_back(static_cast<uint8_t>(a));
  return Ask(static_cast<uint8_t>(opcode), m, ops);
}

v1::Error ErrorOf(const client::ReceivedFrame& f) {
  v1::Error e;
  EXPECT_EQ(f.opcode, static_cast<uint8_t>(wire::Opcode::kError));
  EXPECT_TRUE(e.ParseFromString(f.payload));
  return e;
}

client::ReceivedFrame TestClient::Expect(uint8_t opcode, int timeout_ms) {
  for (size_t i = 0; i < stash_.size(); ++i) {
    if (stash_[i].opcode == opcode) {
      auto f = std::move(stash_[i]);
      stash_.erase(stash_.begin() + static_cast<long>(i));
      return f;
    }
  }
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    const int left = static_cast<int>(std::max<int64_t>(1, deadline - NowMs()));
    auto f = conn_->ReadFrame(left);
    if (!f.ok()) {
      // What came instead (an ERROR before the server closed says why it did).
      std::string instead;
      for (const client::ReceivedFrame& other : stash_) {
        instead += " " + std::string(wire::OpcodeName(other.opcode));
        if (other.opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
          v1::Error e;
          if (e.ParseFromString(other.payload)) instead += "(" + e.ShortDebugString() + ")";
        }
      }
      ADD_FAILURE() << "expected " << wire::OpcodeName(opcode) << ": " << f.status().ToString()
                    << (instead.empty() ? "" : "; received instead:" + instead);
      return {};
    }
    if (f->opcode == opcode) return *f;
    stash_.push_back(std::move(*f));
  }
}

Result<client::ReceivedFrame> TestClient::Next(int timeout_ms) {
  if (!stash_.empty()) {
    auto f = std::move(stash_.front());
    stash_.erase(stash_.begin());
    return f;
  }
  return conn_->ReadFrame(timeout_ms);
}

std::string NewKey() {
  static UuidV7Generator gen(SystemClock::Instance(), 12345);
  return std::string(UuidBytes(gen.Next()));
}

::testing::AssertionResult DeliveredOnceInOrder(const std::vector<v1::Envelope>& got, int n) {
  if (got.size() != static_cast<size_t>(n)) {
    return ::testing::AssertionFailure() << "got " << got.size() << " messages, sent " << n;
  }
  std::vector<std::string> wrong;
  std::set<uint64_t> ids;
  for (int i = 0; i < n && wrong.size() < 10; ++i) {
    const std::string at = "\n  at " + std::to_string(i) + ": ";
    if (got[i].body() != std::to_string(i)) wrong.push_back(at + "body \"" + got[i].body() + "\"");
    if (!ids.insert(got[i].id()).second) {
      wrong.push_back(at + "duplicate id " + std::to_string(got[i].id()));
    }
    if (i > 0 && got[i - 1].id() >= got[i].id()) {
      wrong.push_back(at + "id " + std::to_string(got[i].id()) + " not above " +
                      std::to_string(got[i - 1].id()));
    }
  }
  if (!wrong.empty()) {
    ::testing::AssertionResult r = ::testing::AssertionFailure() << "out of order or twice:";
    for (const std::string& w : wrong) r << w;
    return r;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult NoFurtherDeliver(TestClient& c, int timeout_ms) {
  auto extra = c.Next(timeout_ms);
  if (extra.ok() && extra->opcode == static_cast<uint8_t>(wire::Opcode::kDeliver)) {
    return ::testing::AssertionFailure() << "an extra DELIVER arrived";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace iris::testing
