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
#include "obs/prometheus_text.h"
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

// The value of the unlabelled sample `name` in a scrape; -1 when absent or unparsable.
double Sample(const std::string& text, const std::string& name) {
  auto fs = obs::ParsePrometheusText(text);
  if (!fs.ok()) return -1;
  for (const auto& f : *fs) {
    for (const auto& s : f.samples) {
      if (s.name == name && s.labels.empty()) return s.value;
    }
  }
  return -1;
}

// The node's /metrics (the core process's admin port) counts what every edge process did,
// as one process would: messages, acks, latency observations, and the open connections of
// both edge processes.
TEST(EdgeProcessesTest, NodeMetricsIncludeEveryEdgeProcess) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  const auto kids = Children(server.pid());
  ASSERT_EQ(kids.size(), 2u);
  std::vector<int> before;
  for (pid_t k : kids) before.push_back(SocketCount(k));

  constexpr int kUsers = 16;
  constexpr int kPerUser = 5;
  std::vector<std::unique_ptr<TestClient>> users;
  for (int i = 0; i < kUsers; ++i) users.push_back(Online(server, 2000 + i));
  for (size_t k = 0; k < kids.size(); ++k) {
    ASSERT_GE(SocketCount(kids[k]) - before[k], 2) << "edge process " << k << " got no clients";
  }
  for (int i = 0; i < kUsers; ++i) {
    for (int j = 0; j < kPerUser; ++j) {
      users[i]->SendAsync(j + 1, 2000 + (i + 1) % kUsers, "m" + std::to_string(j), NewKey());
    }
  }
  for (int i = 0; i < kUsers; ++i) {
    for (int j = 0; j < kPerUser; ++j) Ack(users[i]->Expect(Op(wire::Opcode::kSendAck)));
  }
  constexpr double kSent = kUsers * kPerUser;

  // Wait (deadline) until the node's scrape has caught up with what was acknowledged.
  const int64_t deadline = SystemClock::Instance().MonoMillis() + 15'000;
  std::string text;
  for (;;) {
    ASSERT_EQ(AdminRequest(server.admin_port(), "GET", "/metrics", "", "", &text), 200);
    if (Sample(text, "iris_msg_in_total") == kSent &&
        Sample(text, "iris_connections_open") == kUsers) {
      break;
    }
    ASSERT_LT(SystemClock::Instance().MonoMillis(), deadline)
        << "iris_msg_in_total " << Sample(text, "iris_msg_in_total") << " (want " << kSent
        << "), iris_connections_open " << Sample(text, "iris_connections_open") << " (want "
        << kUsers << ")";
  }
  EXPECT_EQ(Sample(text, "iris_ack_sent_total"), kSent);
  EXPECT_EQ(Sample(text, "iris_send_ack_latency_seconds_count"), kSent);
  EXPECT_EQ(Sample(text, "iris_sessions_opened_total"), kUsers);
  // One family block each, as a single process serves it.
  for (const std::string family : {"iris_msg_in_total", "iris_connections_open",
                                   "iris_send_ack_latency_seconds", "process_open_fds"}) {
    size_t n = 0;
    for (size_t at = 0; (at = text.find("# TYPE " + family + " ", at)) != std::string::npos; ++at) {
      ++n;
    }
    EXPECT_EQ(n, 1u) << family;
  }

  // Each edge process still serves its own (for debugging) on the port it wrote down; the
  // node's connections are the sum of both, each of which has some.
  double per_edge_sum = 0;
  for (int i = 0; i < 2; ++i) {
    std::ifstream in(server.data_dir() + "/edge-" + std::to_string(i) + ".admin");
    unsigned port = 0;
    ASSERT_TRUE(in >> port) << "edge " << i << " wrote no admin port";
    std::string own;
    ASSERT_EQ(AdminRequest(static_cast<uint16_t>(port), "GET", "/metrics", "", "", &own), 200);
    const double open = Sample(own, "iris_connections_open");
    EXPECT_GE(open, 1) << "edge " << i;
    per_edge_sum += open;
  }
  EXPECT_EQ(per_edge_sum, kUsers);
}

// Waits (deadline) until the node's /metrics shows `name` == `want`; returns the scrape.
std::string WaitForSample(const ServerProcess& server, const std::string& name, double want) {
  const int64_t deadline = SystemClock::Instance().MonoMillis() + 15'000;
  std::string text;
  for (;;) {
    if (AdminRequest(server.admin_port(), "GET", "/metrics", "", "", &text) == 200 &&
        Sample(text, name) == want) {
      return text;
    }
    if (SystemClock::Instance().MonoMillis() > deadline) {
      ADD_FAILURE() << name << " is " << Sample(text, name) << ", want " << want;
      return text;
    }
  }
}

// One process would never forget what it counted: neither does the node when one of its
// edge processes is killed and replaced.
TEST(EdgeProcessesTest, NodeCountersSurviveAnEdgeProcessRestart) {
  ServerProcess server({"--edge-processes", "2"});
  server.Start();
  constexpr int kUsers = 8;
  auto send_round = [&](int round) {
    std::vector<std::unique_ptr<TestClient>> users;
    for (int i = 0; i < kUsers; ++i) users.push_back(Online(server, 3000 + i));
    for (int i = 0; i < kUsers; ++i) {
      users[i]->SendAsync(1, 3000 + (i + 1) % kUsers, "r" + std::to_string(round), NewKey());
    }
    for (int i = 0; i < kUsers; ++i) Ack(users[i]->Expect(Op(wire::Opcode::kSendAck)));
  };
  send_round(0);
  WaitForSample(server, "iris_msg_in_total", kUsers);

  // Kill an edge process that accepted some of them (its own /metrics says so).
  int victim = -1;
  unsigned port = 0;
  pid_t old_pid = 0;
  for (int i = 0; i < 2 && victim < 0; ++i) {
    std::ifstream in(server.data_dir() + "/edge-" + std::to_string(i) + ".admin");
    ASSERT_TRUE(in >> port >> old_pid);
    std::string own;
    ASSERT_EQ(AdminRequest(static_cast<uint16_t>(port), "GET", "/metrics", "", "", &own), 200);
    if (Sample(own, "iris_msg_in_total") > 0) victim = i;
  }
  ASSERT_GE(victim, 0);
  const std::string file = server.data_dir() + "/edge-" + std::to_string(victim) + ".admin";
  ASSERT_EQ(kill(old_pid, SIGKILL), 0);
  // The replacement writes its own port file once it serves (deadline).
  const int64_t deadline = SystemClock::Instance().MonoMillis() + 20'000;
  for (;;) {
    std::ifstream again(file);
    pid_t pid = 0;
    if (again >> port >> pid && pid != old_pid) break;
    ASSERT_LT(SystemClock::Instance().MonoMillis(), deadline) << "edge process not replaced";
    std::string body;
    AdminRequest(server.admin_port(), "GET", "/healthz", "", "", &body);  // pacing round trip
  }
  send_round(1);
  WaitForSample(server, "iris_msg_in_total", 2 * kUsers);
  WaitForSample(server, "iris_sessions_opened_total", 2 * kUsers);
}

}  // namespace
}  // namespace iris::testing
