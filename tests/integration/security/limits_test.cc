// Limits against a real irisd (RFC-001 NFR-17, NFR-18; PROTOCOL.md sections 6, 7 and 8):
// the per-user send rate, the per-IP connection rate with its allow-list, the failed-login
// limit, the bounded output queue (slow readers are cut off, nothing is lost for them and
// nobody else notices), and the idle timeout. Waits are on sockets with deadlines.

#include <gtest/gtest.h>

#include <thread>

#include "security/security_util.h"

namespace iris::testing {
namespace {

// Everything the client reads until the connection ends (or `timeout_ms` passes); counts
// DELIVER frames in *delivers. True when the server closed the connection.
bool DrainUntilClosed(TestClient& c, int timeout_ms, size_t* delivers) {
  std::vector<client::ReceivedFrame> frames;
  const bool closed = WaitClosed(c, timeout_ms, &frames);
  *delivers = 0;
  for (const auto& f : frames) *delivers += f.opcode == Op(wire::Opcode::kDeliver);
  return closed;
}

// NFR-17: 5/s sustained with bursts of 20/s: a burst of 40 SENDs gets about 20 SEND_ACKs
// and RATE_LIMITED (non-fatal, retry_after_ms set, request_id echoed) for the rest, in
// order; the connection stays usable, other users are not affected, and after the
// advertised wait a SEND goes through again.
TEST(LimitsTest, SendRateLimitAnswersRateLimitedAndKeepsTheSession) {
  ServerProcess server({"--rate-per-sec", "5", "--rate-burst-per-sec", "20",
                        "--rate-burst-seconds", "10"});
  server.Start();
  auto c = TestClient::Connect(server);
  ASSERT_TRUE(c);
  v1::Welcome w = c->Login(server, 6001);
  EXPECT_EQ(w.limits().rate_per_sec(), 5u);
  EXPECT_EQ(w.limits().rate_burst(), 20u);
  std::vector<v1::Envelope> none;
  c->CatchUp(&none);

  constexpr int kBurst = 40;
  std::string batch;
  for (int i = 1; i <= kBurst; ++i) {
    v1::Send s;
    s.set_request_id(static_cast<uint64_t>(i));
    s.set_recipient(6002);
    s.set_body("burst");
    s.set_idempotency_key(NewKey());
    batch += RawFrame(Op(wire::Opcode::kSend), s.SerializeAsString());
  }
  ASSERT_TRUE(c->SendRaw(batch).ok());  // one write: the burst arrives at once
  int acked = 0;
  uint32_t retry_after = 0;
  for (int i = 1; i <= kBurst; ++i) {
    auto f = c->Next(10'000);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    if (f->opcode == Op(wire::Opcode::kSendAck)) {
      v1::SendAck a;
      ASSERT_TRUE(a.ParseFromString(f->payload));
      EXPECT_EQ(a.request_id(), static_cast<uint64_t>(i));
      ++acked;
      continue;
    }
    v1::Error e = ParseError(*f);
    EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kRateLimited)) << e.message();
    EXPECT_EQ(e.request_id(), static_cast<uint64_t>(i));
    EXPECT_FALSE(e.fatal());
    EXPECT_GT(e.retry_after_ms(), 0u);
    EXPECT_LE(e.retry_after_ms(), 1'000u);
    retry_after = std::max(retry_after, e.retry_after_ms());
  }
  EXPECT_GE(acked, 20) << "the burst allowance is 20";
  EXPECT_LE(acked, 25) << "the limit did not hold";
  ExpectPong(*c, 1);

  // The budget is per user.
  auto other = LoggedIn(server, 6003);
  ASSERT_TRUE(other);
  EXPECT_EQ(other->Send(1, 6002, "other user", NewKey()).opcode, Op(wire::Opcode::kSendAck));

  // Wait out retry_after_ms, blocked on the socket (nothing may arrive meanwhile).
  const int64_t until = MonoMs() + retry_after;
  while (MonoMs() < until) {
    auto f = c->Next(static_cast<int>(until - MonoMs()) + 1);
    ASSERT_FALSE(f.ok()) << "unexpected " << wire::OpcodeName(f->opcode);
  }
  EXPECT_EQ(c->Send(kBurst + 1, 6002, "after the wait", NewKey()).opcode,
            Op(wire::Opcode::kSendAck));
}

// NFR-17: 5 new connections per minute per IP; the 6th is answered RATE_LIMITED (fatal) at
// HELLO with retry_after_ms. Other addresses have their own budget, and allow-listed
// addresses none. Runs with irisd's production limits (no loopback allow-list).
TEST(LimitsTest, SixthConnectionFromOneAddressInAMinuteIsRateLimited) {
  ServerProcess server({"--connection-allowlist", "127.0.0.3/32"},
                       ServerProcess::Defaults::kProductionLimits);
  server.Start();
  std::vector<std::unique_ptr<TestClient>> admitted;
  for (uint64_t user = 6101; user <= 6105; ++user) {
    admitted.push_back(LoggedIn(server, user, "127.0.0.1"));
    ASSERT_TRUE(admitted.back()) << "connection " << admitted.size() << " was refused";
  }
  v1::Error e =
      ExpectHelloRefused(server, server.Token(6106), StatusCode::kRateLimited, "127.0.0.1");
  EXPECT_GT(e.retry_after_ms(), 0u);
  EXPECT_LE(e.retry_after_ms(), 60'000u);
  ExpectHelloRefused(server, server.Token(6107), StatusCode::kRateLimited, "127.0.0.1");
  for (auto& c : admitted) ExpectPong(*c, 6100);  // the admitted sessions are untouched

  auto elsewhere = LoggedIn(server, 6108, "127.0.0.2");
  EXPECT_TRUE(elsewhere) << "another address was limited too";
  for (uint64_t user = 6110; user < 6117; ++user) {
    EXPECT_TRUE(LoggedIn(server, user, "127.0.0.3")) << "the allow-listed address was limited";
  }
}

// A token the server did not sign, naming `user` (its signature cannot verify).
std::string ForgedToken(uint64_t user, int i) {
  auth::Claims forged;
  forged.user_id = user;
  forged.iat = WallMs() / 1000;
  forged.exp = forged.iat + 3600;
  forged.jti = "forged-" + std::to_string(user) + "-" + std::to_string(i);
  return auth::MintToken("not-the-server-secret-but-32-bytes-long", forged);
}

// PROTOCOL.md section 8: the failed-login limit never refuses a valid token, so bad tokens
// naming an account cannot lock its owner out. Past 10 bad tokens naming one account in an
// hour, further bad tokens naming it are answered RATE_LIMITED (fatal, retry_after_ms)
// instead of UNAUTHENTICATED; other accounts keep their own budget. (Loopback is
// allow-listed here, so only the per-account count is at work.)
TEST(LimitsTest, ForgedTokensNamingAnAccountDoNotLockItsOwnerOut) {
  ServerProcess server;
  server.Start();
  for (int i = 0; i < 10; ++i) ExpectHelloRefused(server, ForgedToken(6201, i));
  {
    std::unique_ptr<TestClient> c;
    ASSERT_EQ(HelloOnNewConnection(server, server.Token(6201), &c).opcode,
              Op(wire::Opcode::kWelcome))
        << "a valid token was refused after 10 forged ones";
  }
  v1::Error e = ExpectHelloRefused(server, ForgedToken(6201, 10), StatusCode::kRateLimited);
  EXPECT_GT(e.retry_after_ms(), 0u);
  EXPECT_LE(e.retry_after_ms(), 3'600'000u);
  for (int i = 11; i < 20; ++i) {
    ExpectHelloRefused(server, ForgedToken(6201, i), StatusCode::kRateLimited);
  }
  // The owner's valid token is still accepted while forged ones keep coming.
  auto owner = LoggedIn(server, 6201);
  ASSERT_TRUE(owner) << "the account was locked by tokens its owner never sent";
  ExpectPong(*owner, 1);
  ExpectHelloRefused(server, ForgedToken(6202, 0));  // another account: its own budget
  std::unique_ptr<TestClient> other;
  EXPECT_EQ(HelloOnNewConnection(server, server.Token(6202), &other).opcode,
            Op(wire::Opcode::kWelcome));
}

// Failures are also counted per source address: past its budget an address's bad tokens
// are answered RATE_LIMITED, whatever account they name (or none), while its valid tokens
// are still accepted and other addresses are not affected. Runs without the loopback
// allow-list (allow-listed addresses are exempt from per-address limits).
TEST(LimitsTest, FailedLoginsFromOneAddressAreThrottled) {
  ServerProcess server(
      {"--connections-per-ip-per-minute", "600", "--failed-logins-per-ip-per-hour", "5"},
      ServerProcess::Defaults::kProductionLimits);
  server.Start();
  const std::string attacker = "127.0.0.5";
  for (uint64_t user = 6301; user <= 6305; ++user) {
    ExpectHelloRefused(server, ForgedToken(user, 0), StatusCode::kUnauthenticated, attacker);
  }
  v1::Error e =
      ExpectHelloRefused(server, ForgedToken(6306, 0), StatusCode::kRateLimited, attacker);
  EXPECT_GT(e.retry_after_ms(), 0u);
  EXPECT_LE(e.retry_after_ms(), 720'000u);  // 5 per hour: one every 12 minutes
  ExpectHelloRefused(server, "garbage", StatusCode::kRateLimited, attacker);  // no account
  // A valid token from the throttled address is accepted.
  std::unique_ptr<TestClient> valid;
  EXPECT_EQ(HelloOnNewConnection(server, server.Token(6306), &valid, attacker).opcode,
            Op(wire::Opcode::kWelcome));
  // Another address, naming the same accounts, has its own budget.
  ExpectHelloRefused(server, ForgedToken(6306, 1), StatusCode::kUnauthenticated, "127.0.0.6");
}

// A reader that does not drain its socket: once its output queue passes --max-output-bytes
// it is disconnected, the sender is not slowed or refused, nothing is lost (the messages
// are in the store for the next session), and the server serves everyone else.
TEST(LimitsTest, SlowReaderIsDisconnectedAndLosesNothing) {
  ServerProcess server({"--max-output-bytes", "131076"});
  server.Start();
  const double cut_before = Metric(server, "iris_slow_reader_disconnects_total").value_or(0);
  auto reader = LoggedIn(server, 6301);
  auto sender = LoggedIn(server, 6302);
  ASSERT_TRUE(reader && sender);

  // 12 MB of pushes: far beyond the loopback socket buffers plus 64 KiB.
  constexpr int kMessages = 200;
  const std::string body(60'000, 'p');
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) sender->SendAsync(i + 1, 6301, body, NewKey());
  });
  int acked = 0;
  for (int i = 0; i < kMessages; ++i) {
    auto f = sender->Expect(Op(wire::Opcode::kSendAck), 30'000);
    if (f.opcode != Op(wire::Opcode::kSendAck)) break;
    ++acked;
  }
  writer.join();
  ASSERT_EQ(acked, kMessages) << "the sender was held back by the slow reader";

  size_t delivered = 0;
  EXPECT_TRUE(DrainUntilClosed(*reader, 20'000, &delivered)) << "the slow reader stayed connected";
  EXPECT_LT(delivered, static_cast<size_t>(kMessages));
  EXPECT_GE(FreshMetric(server, "iris_slow_reader_disconnects_total").value_or(0),
            cut_before + 1);

  // A session that reads gets everything from the store.
  auto again = TestClient::Connect(server);
  again->Login(server, 6301);
  std::vector<v1::Envelope> got;
  again->CatchUp(&got, 60'000);
  ASSERT_EQ(got.size(), static_cast<size_t>(kMessages));
  for (size_t i = 1; i < got.size(); ++i) EXPECT_LT(got[i - 1].id(), got[i].id());
  ExpectServerServes(server, 6310);
}

// The same when the slow reader floods itself: SENDs to itself, never reading.
TEST(LimitsTest, ClientSendingToItselfWithoutReadingIsDisconnected) {
  ServerProcess server({"--max-output-bytes", "131076"});
  server.Start();
  auto self = LoggedIn(server, 6401);
  ASSERT_TRUE(self);
  const std::string body(60'000, 's');
  int sent = 0;
  for (; sent < 400; ++sent) {
    v1::Send s;
    s.set_request_id(static_cast<uint64_t>(sent + 1));
    s.set_recipient(6401);
    s.set_body(body);
    s.set_idempotency_key(NewKey());
    if (!self->conn().SendFrame(Op(wire::Opcode::kSend), s).ok()) break;  // cut off
  }
  size_t delivered = 0;
  EXPECT_TRUE(DrainUntilClosed(*self, 20'000, &delivered)) << "the slow reader stayed connected";
  EXPECT_LT(delivered, static_cast<size_t>(sent));
  ExpectServerServes(server, 6410);
}

// PROTOCOL.md section 6: a connection with no frame from the client for idle_timeout_ms is
// closed; one that sends PING every idle_timeout_ms / 3 stays open. Bytes that never
// complete a frame are not activity: a client dribbling a frame byte by byte is closed too.
TEST(LimitsTest, IdleTimeoutClosesSilentConnectionsOnly) {
  // 3 s against PINGs every 0.5 s: a 6x margin for a loaded machine.
  constexpr int kIdleMs = 3'000;
  ServerProcess server({"--idle-timeout-ms", std::to_string(kIdleMs)});
  server.Start();
  auto pinger = TestClient::Connect(server);
  ASSERT_TRUE(pinger);
  EXPECT_EQ(pinger->Login(server, 6501).limits().idle_timeout_ms(), static_cast<uint32_t>(kIdleMs));
  std::vector<v1::Envelope> none;
  pinger->CatchUp(&none);
  auto silent = LoggedIn(server, 6502);
  const int64_t silent_since = MonoMs();
  auto dribbler = LoggedIn(server, 6503);
  ASSERT_TRUE(silent && dribbler);
  ASSERT_TRUE(dribbler->SendRaw(RawFrame(Op(wire::Opcode::kPing), "").substr(0, 1) +
                                       std::string(1, '\x01')).ok());  // length 0x01.. pending
  bool dribbler_open = true;

  int64_t silent_closed_at = -1;
  const int64_t end = MonoMs() + kIdleMs + 3'500;
  uint64_t nonce = 0;
  while (MonoMs() < end) {
    ExpectPong(*pinger, ++nonce, 1'000);
    if (dribbler_open) dribbler_open = dribbler->SendRaw(std::string(1, '\x00')).ok();
    // Pace by 500 ms, blocked on the silent client's socket (then on the pinger's).
    const int64_t tick = std::min(end, MonoMs() + 500);
    while (MonoMs() < tick) {
      TestClient& waiter = silent_closed_at < 0 ? *silent : *pinger;
      auto f = waiter.Next(static_cast<int>(tick - MonoMs()) + 1);
      if (f.ok()) {
        ADD_FAILURE() << "unexpected " << wire::OpcodeName(f->opcode);
        continue;
      }
      if (silent_closed_at < 0 && f.status().code() == StatusCode::kUnavailable) {
        silent_closed_at = MonoMs();
      }
    }
  }
  ASSERT_GE(silent_closed_at, 0) << "the silent connection was not closed";
  EXPECT_GE(silent_closed_at - silent_since, kIdleMs - 100);
  EXPECT_LE(silent_closed_at - silent_since, kIdleMs + 2'500);  // swept once a second
  ExpectPong(*pinger, ++nonce);  // the pinging connection is still open
  EXPECT_TRUE(WaitClosed(*dribbler, 1'000)) << "a never-completed frame kept the connection open";
}

// A connection that is being closed (idle timeout) while its output cannot drain, because
// the client stopped reading, is dropped after a bounded time instead of holding its socket
// and queue forever.
TEST(LimitsTest, CloseThatCannotDrainIsBounded) {
  constexpr int kIdleMs = 1'500;
  ServerProcess server({"--idle-timeout-ms", std::to_string(kIdleMs), "--max-output-bytes",
                        std::to_string(64 << 20)});
  server.Start();
  auto sender = LoggedIn(server, 6602);
  ASSERT_TRUE(sender);
  const auto baseline = FreshMetric(server, "iris_connections_open");
  ASSERT_TRUE(baseline.has_value());
  auto stuck = LoggedIn(server, 6601);
  ASSERT_TRUE(stuck);
  // 9 MB to a client that never reads: a few MB fill the socket buffers, the rest waits in
  // the server's output queue, within its 64 MiB bound.
  constexpr int kMessages = 150;
  const std::string body(60'000, 'q');
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) sender->SendAsync(i + 1, 6601, body, NewKey());
  });
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_EQ(sender->Expect(Op(wire::Opcode::kSendAck), 30'000).opcode,
              Op(wire::Opcode::kSendAck));
  }
  writer.join();
  // The sender keeps itself alive with PINGs that also pace the wait; the stuck connection
  // must be gone within the idle timeout plus a bounded grace.
  const int64_t deadline = MonoMs() + 4 * kIdleMs + 3'000;
  std::optional<double> open = Metric(server, "iris_connections_open");
  uint64_t nonce = 0;
  while (open != baseline && MonoMs() < deadline) {
    ExpectPong(*sender, ++nonce);
    auto f = sender->Next(200);
    ASSERT_FALSE(f.ok()) << "unexpected " << wire::OpcodeName(f->opcode);
    open = Metric(server, "iris_connections_open");
  }
  EXPECT_EQ(open, baseline) << "a closing connection that cannot drain is never released";
}

}  // namespace
}  // namespace iris::testing
