#include "security/security_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <sstream>

#include "common/bytes.h"
#include "common/clock.h"
#include "wire/frame.h"

namespace iris::testing {
namespace {

// A write to a connection the server has already closed must fail with EPIPE, not kill the
// test binary.
[[maybe_unused]] const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

}  // namespace

int64_t MonoMs() { return SystemClock::Instance().MonoMillis(); }
int64_t WallMs() { return SystemClock::Instance().WallMillis(); }

v1::Error ParseError(const client::ReceivedFrame& f) {
  v1::Error e;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kError))
      << "expected ERROR, got " << wire::OpcodeName(f.opcode);
  if (f.opcode == Op(wire::Opcode::kError)) {
    EXPECT_TRUE(e.ParseFromString(f.payload));
  }
  return e;
}

bool WaitClosed(TestClient& c, int timeout_ms, std::vector<client::ReceivedFrame>* frames) {
  const int64_t deadline = MonoMs() + timeout_ms;
  for (;;) {
    const int64_t left = deadline - MonoMs();
    if (left <= 0) return false;
    auto f = c.Next(static_cast<int>(left));
    if (f.ok()) {
      if (frames != nullptr) frames->push_back(std::move(*f));
      continue;
    }
    // OVERLOADED is the client's "timed out"; UNAVAILABLE means the connection ended.
    return f.status().code() == StatusCode::kUnavailable;
  }
}

v1::Error ExpectFatal(TestClient& c, StatusCode code, uint64_t request_id) {
  auto f = c.Next(5'000);
  EXPECT_TRUE(f.ok()) << "no ERROR " << StatusCodeName(code) << ": " << f.status().ToString();
  if (!f.ok()) return {};
  v1::Error e = ParseError(*f);
  EXPECT_EQ(e.code(), static_cast<uint32_t>(code))
      << "got " << StatusCodeName(static_cast<StatusCode>(e.code())) << ": " << e.message();
  EXPECT_TRUE(e.fatal()) << e.message();
  EXPECT_EQ(e.request_id(), request_id);
  std::vector<client::ReceivedFrame> after;
  EXPECT_TRUE(WaitClosed(c, 5'000, &after)) << "the connection stayed open after a fatal error";
  EXPECT_TRUE(after.empty()) << "frames after a fatal error, first: "
                             << wire::OpcodeName(after.empty() ? 0 : after[0].opcode);
  return e;
}

v1::Error ExpectNonFatal(TestClient& c, StatusCode code, uint64_t request_id) {
  v1::Error e = ParseError(c.Expect(Op(wire::Opcode::kError), 5'000));
  EXPECT_EQ(e.code(), static_cast<uint32_t>(code))
      << "got " << StatusCodeName(static_cast<StatusCode>(e.code())) << ": " << e.message();
  EXPECT_FALSE(e.fatal()) << e.message();
  EXPECT_EQ(e.request_id(), request_id) << e.message();
  ExpectPong(c, 0x5eed0000 + request_id);
  return e;
}

void ExpectPong(TestClient& c, uint64_t nonce, int timeout_ms) {
  v1::Ping ping;
  ping.set_nonce(nonce);
  ASSERT_TRUE(c.conn().SendFrame(Op(wire::Opcode::kPing), ping).ok()) << "PING not sent";
  const int64_t deadline = MonoMs() + timeout_ms;
  for (;;) {
    const int left = static_cast<int>(std::max<int64_t>(1, deadline - MonoMs()));
    client::ReceivedFrame f = c.Expect(Op(wire::Opcode::kPong), left);
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kPong)) << "no PONG for nonce " << nonce;
    v1::Pong pong;
    ASSERT_TRUE(pong.ParseFromString(f.payload));
    if (pong.nonce() == nonce) return;
  }
}

client::ReceivedFrame HelloOnNewConnection(const ServerProcess& server, const std::string& token,
                                           std::unique_ptr<TestClient>* client,
                                           const std::string& source_address) {
  *client = TestClient::Connect(server, source_address);
  if (*client == nullptr) return {};
  return (*client)->Hello(token);
}

v1::Error ExpectHelloRefused(const ServerProcess& server, const std::string& token,
                             StatusCode code, const std::string& source_address) {
  std::unique_ptr<TestClient> c;
  client::ReceivedFrame f = HelloOnNewConnection(server, token, &c, source_address);
  if (c == nullptr) return {};
  v1::Error e = ParseError(f);
  EXPECT_EQ(e.code(), static_cast<uint32_t>(code))
      << "got " << StatusCodeName(static_cast<StatusCode>(e.code())) << ": " << e.message();
  EXPECT_TRUE(e.fatal());
  EXPECT_EQ(e.request_id(), 0u);
  EXPECT_TRUE(WaitClosed(*c, 5'000)) << "the connection stayed open after a refused HELLO";
  return e;
}

std::unique_ptr<TestClient> LoggedIn(const ServerProcess& server, uint64_t user,
                                     const std::string& source_address) {
  auto c = TestClient::Connect(server, source_address);
  if (c == nullptr) return nullptr;
  v1::Welcome w = c->Login(server, user);
  if (w.user_id() != user) return nullptr;
  std::vector<v1::Envelope> ignored;
  c->CatchUp(&ignored);
  return c;
}

void ExpectServerServes(const ServerProcess& server, uint64_t user_base) {
  auto alice = LoggedIn(server, user_base);
  auto bob = LoggedIn(server, user_base + 1);
  ASSERT_TRUE(alice && bob) << "the server no longer accepts sessions";
  const std::string body = "still-serving-" + std::to_string(user_base);
  client::ReceivedFrame ack = alice->Send(1, user_base + 1, body, NewKey());
  ASSERT_EQ(ack.opcode, Op(wire::Opcode::kSendAck))
      << "SEND refused: " << ParseError(ack).message();
  client::ReceivedFrame d = bob->Expect(Op(wire::Opcode::kDeliver), 10'000);
  v1::Deliver deliver;
  ASSERT_TRUE(deliver.ParseFromString(d.payload));
  EXPECT_EQ(deliver.message().body(), body);
  EXPECT_EQ(deliver.message().sender(), user_base);
}

int ConnectTcp(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool WaitTcpEof(int fd, int timeout_ms) {
  const int64_t deadline = MonoMs() + timeout_ms;
  char buf[4096];
  for (;;) {
    const int64_t left = deadline - MonoMs();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET || errno == EPIPE;
  }
}

std::optional<double> Metric(const ServerProcess& server, const std::string& series) {
  std::string body;
  if (AdminRequest(server.admin_port(), "GET", "/metrics", "", "", &body) != 200) {
    return std::nullopt;
  }
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

int RunBounded(const std::vector<std::string>& argv, int timeout_ms, std::string* output) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  const int64_t deadline = MonoMs() + timeout_ms;
  bool timed_out = false;
  char buf[4096];
  for (;;) {
    const int64_t left = deadline - MonoMs();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;  // the deadline check above ends the loop
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) break;  // the child closed its output: it is exiting
    output->append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) output->append("\n[killed after " + std::to_string(timeout_ms) + " ms]");
  return status;
}

std::string RawFrame(uint8_t opcode, std::string_view payload) {
  std::string f;
  f.push_back(static_cast<char>(opcode));
  f.push_back(static_cast<char>((payload.size() >> 8) & 0xff));
  f.push_back(static_cast<char>(payload.size() & 0xff));
  f.append(payload);
  return f;
}

}  // namespace iris::testing
