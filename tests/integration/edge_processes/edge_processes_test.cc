// --edge-processes: several edge processes share the client port (SO_REUSEPORT) in front of
// one core process over the internal link. Real processes on loopback.

#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }

std::vector<pid_t> Children(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  pid_t c;
  while (in >> c) out.push_back(c);
  return out;
}

int SocketCount(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      char target[256];
      const std::string path = dir + "/" + e->d_name;
      const ssize_t len = readlink(path.c_str(), target, sizeof(target) - 1);
      if (len > 0 && std::string(target, static_cast<size_t>(len)).rfind("socket:", 0) == 0) ++n;
    }
    closedir(d);
  }
  return n;
}

std::unique_ptr<TestClient> Online(const ServerProcess& s, uint64_t user,
                                   std::vector<v1::Envelope>* got = nullptr) {
  auto c = TestClient::Connect(s);
  if (!c) throw std::runtime_error("cannot connect to irisd");  // gtest reports it; no crash
  c->Login(s, user);
  std::vector<v1::Envelope> ignored;
  c->CatchUp(got != nullptr ? got : &ignored);
  return c;
}

v1::SendAck Ack(const client::ReceivedFrame& f) {
  v1::SendAck a;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kSendAck));
  EXPECT_TRUE(a.ParseFromString(f.payload));
  return a;
}

TEST(EdgeProcessesTest, UsersOnDifferentEdgeProcessesExchangeMessages) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  const auto kids = Children(server.pid());
  ASSERT_EQ(kids.size(), 2u);
  std::vector<int> before;
  for (pid_t k : kids) before.push_back(SocketCount(k));

  constexpr int kUsers = 24;
  std::vector<std::unique_ptr<TestClient>> users;
  for (int i = 0; i < kUsers; ++i) users.push_back(Online(server, 1000 + i));
  // The kernel spread the connections over both edge processes.
  for (size_t k = 0; k < kids.size(); ++k) {
    EXPECT_GE(SocketCount(kids[k]) - before[k], 3) << "edge process " << k << " got no clients";
  }
  // Everyone sends 10 messages to the next user; everyone receives them, in order.
  for (int i = 0; i < kUsers; ++i) {
    for (int j = 0; j < 10; ++j) {
      users[i]->SendAsync(j + 1, 1000 + (i + 1) % kUsers, std::to_string(i) + ":" + std::to_string(j),
                          NewKey());
    }
  }
  for (int i = 0; i < kUsers; ++i) {
    for (int j = 0; j < 10; ++j) Ack(users[i]->Expect(Op(wire::Opcode::kSendAck)));
  }
  for (int i = 0; i < kUsers; ++i) {
    const int from = (i + kUsers - 1) % kUsers;
    for (int j = 0; j < 10; ++j) {
      auto f = users[i]->Expect(Op(wire::Opcode::kDeliver));
      v1::Deliver d;
      ASSERT_TRUE(d.ParseFromString(f.payload));
      EXPECT_EQ(d.message().body(), std::to_string(from) + ":" + std::to_string(j));
    }
  }
}

TEST(EdgeProcessesTest, KilledEdgeProcessIsReplacedAndNothingAcknowledgedIsLost) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  auto sender = Online(server, 1);
  std::vector<uint64_t> acked;
  for (int i = 0; i < 100; ++i) sender->SendAsync(i + 1, 2, "k" + std::to_string(i), NewKey());
  for (int i = 0; i < 100; ++i) acked.push_back(Ack(sender->Expect(Op(wire::Opcode::kSendAck))).message_id());

  const auto kids = Children(server.pid());
  ASSERT_EQ(kids.size(), 2u);
  kill(kids[0], SIGKILL);
  // The core process restarts it: wait (deadline) until there are two live edge children
  // again, one of them new.
  const int64_t deadline = SystemClock::Instance().MonoMillis() + 20'000;
  std::vector<pid_t> now;
  for (;;) {
    now = Children(server.pid());
    std::set<pid_t> live;
    for (pid_t p : now) {
      std::ifstream st("/proc/" + std::to_string(p) + "/stat");
      std::string a, b, state;
      st >> a >> b >> state;
      if (state != "Z" && p != kids[0]) live.insert(p);
    }
    if (live.size() == 2) break;
    ASSERT_LT(SystemClock::Instance().MonoMillis(), deadline) << "edge process not restarted";
    // Block on the server's admin socket as the pacing wait (an observable round trip).
    std::string body;
    AdminRequest(server.admin_port(), "GET", "/healthz", "", "", &body);
  }
  // New connections are served; the recipient gets every acknowledged message.
  std::vector<v1::Envelope> got;
  auto bob = Online(server, 2, &got);
  ASSERT_EQ(got.size(), acked.size());
  for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ(got[i].id(), acked[i]);
}

TEST(EdgeProcessesTest, RevocationReachesSessionsInEdgeProcesses) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  std::vector<std::unique_ptr<TestClient>> sessions;
  for (int i = 0; i < 6; ++i) sessions.push_back(Online(server, 500 + i));
  std::string resp;
  ASSERT_EQ(AdminRequest(server.admin_port(), "POST", "/v1/revoke", server.admin_token(),
                         R"({"user": 503})", &resp),
            200)
      << resp;
  auto f = sessions[3]->Expect(Op(wire::Opcode::kError), 10'000);
  v1::Error e;
  ASSERT_TRUE(e.ParseFromString(f.payload));
  EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kUnauthenticated));
  EXPECT_TRUE(e.fatal());
  // Others still work.
  auto ack = sessions[0]->Send(1, 501, "still here", NewKey());
  EXPECT_EQ(ack.opcode, Op(wire::Opcode::kSendAck));
}

// Edge processes that start after a revocation (here: all of them, after a kill and
// restart of the node) get every revocation in force from the core before they accept.
TEST(EdgeProcessesTest, EdgeProcessesStartedLaterKnowEarlierRevocations) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  const std::string revoked = server.Token(601);
  std::string resp;
  ASSERT_EQ(AdminRequest(server.admin_port(), "POST", "/v1/revoke", server.admin_token(),
                         R"({"user": 601})", &resp),
            200)
      << resp;
  server.KillAndRestart();
  // Several connections, so that both edge processes are asked (SO_REUSEPORT spreads them).
  for (int i = 0; i < 8; ++i) {
    std::unique_ptr<TestClient> c = TestClient::Connect(server);
    ASSERT_TRUE(c);
    const client::ReceivedFrame f = c->Hello(revoked);
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kError)) << "attempt " << i << ": revoked token accepted";
    v1::Error e;
    ASSERT_TRUE(e.ParseFromString(f.payload));
    EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kUnauthenticated));
  }
  EXPECT_TRUE(Online(server, 602)) << "an unrevoked user logs in";
}

TEST(EdgeProcessesTest, SessionReplacementAcrossEdgeProcesses) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  // Open sessions of one user until the replaced one is told so: whichever edge processes
  // they land on, the older session always gets SESSION_REPLACED.
  auto first = Online(server, 77);
  for (int i = 0; i < 4; ++i) {
    auto next = Online(server, 77);
    auto f = first->Expect(Op(wire::Opcode::kError), 10'000);
    v1::Error e;
    ASSERT_TRUE(e.ParseFromString(f.payload));
    EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kSessionReplaced));
    first = std::move(next);
  }
}

}  // namespace
}  // namespace iris::testing
