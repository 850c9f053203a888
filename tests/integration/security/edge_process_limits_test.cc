// Limits with --edge-processes 2 mean what they mean with one process (security issue 14):
// the per-IP connection rate, the failed-login limit and the per-user send rate are kept in
// the node's shared limiter tables, not per edge process. The kernel spreads connections
// over the edge processes (SO_REUSEPORT by 4-tuple hash), so each test opens enough
// connections that both processes get some; with per-process limits each would fail with
// probability 1 - 2^-(connections - 1) or more.

#include <gtest/gtest.h>

#include "security/security_util.h"

namespace iris::testing {
namespace {

// A token the server did not sign, naming `user`.
std::string Forged(uint64_t user, int i) {
  auth::Claims forged;
  forged.user_id = user;
  forged.iat = WallMs() / 1000;
  forged.exp = forged.iat + 3600;
  forged.jti = "forged-ep-" + std::to_string(user) + "-" + std::to_string(i);
  return auth::MintToken("not-the-server-secret-but-32-bytes-long", forged);
}

TEST(EdgeProcessLimitsTest, SixthConnectionFromOneAddressIsRateLimitedAcrossEdgeProcesses) {
  ServerProcess server({"--edge-processes", "2", "--loops", "1"},
                       ServerProcess::Defaults::kProductionLimits);
  server.Start();
  std::vector<std::unique_ptr<TestClient>> admitted;
  int limited = 0;
  for (uint64_t user = 14101; user <= 14112; ++user) {
    std::unique_ptr<TestClient> c;
    const client::ReceivedFrame f =
        HelloOnNewConnection(server, server.Token(user), &c, "127.0.0.1");
    if (f.opcode == Op(wire::Opcode::kWelcome)) {
      admitted.push_back(std::move(c));
      continue;
    }
    v1::Error e = ParseError(f);
    EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kRateLimited)) << e.message();
    ++limited;
  }
  EXPECT_EQ(admitted.size(), 5u) << "5 new connections per minute per address, node-wide";
  EXPECT_EQ(limited, 7);
}

TEST(EdgeProcessLimitsTest, FailedLoginsFromOneAddressAreThrottledAcrossEdgeProcesses) {
  ServerProcess server({"--edge-processes", "2", "--loops", "1", "--connections-per-ip-per-minute",
                        "600", "--failed-logins-per-ip-per-hour", "5"},
                       ServerProcess::Defaults::kProductionLimits);
  server.Start();
  int unauthenticated = 0;
  int limited = 0;
  for (int i = 0; i < 12; ++i) {
    std::unique_ptr<TestClient> c;
    const client::ReceivedFrame f =
        HelloOnNewConnection(server, Forged(14201 + static_cast<uint64_t>(i), i), &c, "127.0.0.5");
    v1::Error e = ParseError(f);
    if (e.code() == static_cast<uint32_t>(StatusCode::kUnauthenticated)) {
      ++unauthenticated;
    } else {
      EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kRateLimited)) << e.message();
      ++limited;
    }
  }
  EXPECT_EQ(unauthenticated, 5) << "5 failed logins per hour per address, node-wide";
  EXPECT_EQ(limited, 7);
}

// One send per 50 s at most (both buckets hold a single token): after the first SEND the
// user is limited, and stays limited on every new connection, whichever edge process the
// kernel hands it to.
TEST(EdgeProcessLimitsTest, SendLimitHoldsAcrossReconnectsToOtherEdgeProcesses) {
  ServerProcess server({"--edge-processes", "2", "--loops", "1", "--rate-per-sec", "0.01",
                        "--rate-burst-per-sec", "0.02", "--rate-burst-seconds", "100"});
  server.Start();
  {
    auto c = LoggedIn(server, 14301);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->Send(1, 14302, "first", NewKey()).opcode, Op(wire::Opcode::kSendAck));
    const client::ReceivedFrame f = c->Send(2, 14302, "second", NewKey());
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kError));
    EXPECT_EQ(ParseError(f).code(), static_cast<uint32_t>(StatusCode::kRateLimited));
  }
  for (int i = 0; i < 10; ++i) {
    auto c = LoggedIn(server, 14301);
    ASSERT_TRUE(c);
    const client::ReceivedFrame f = c->Send(static_cast<uint64_t>(i + 3), 14302, "again", NewKey());
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kError))
        << "reconnection " << i << " got a fresh send budget";
    EXPECT_EQ(ParseError(f).code(), static_cast<uint32_t>(StatusCode::kRateLimited));
  }
}

}  // namespace
}  // namespace iris::testing
