#pragma once
// Client helpers shared by the tests of real clusters on loopback (harness/local_cluster.h).

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "harness/server_process.h"
#include "wire/frame.h"
#include "wire/opcode.h"

namespace iris::testing {

inline constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }
inline int64_t MonoMs() { return SystemClock::Instance().MonoMillis(); }

inline std::unique_ptr<TestClient> Online(ServerProcess& s, uint64_t user) {
  auto c = TestClient::Connect(s);
  c->Login(s, user);
  std::vector<v1::Envelope> ignored;
  c->CatchUp(&ignored);
  return c;
}

// SEND until acknowledged: UNAVAILABLE (a shard whose node is down, or the cluster still
// settling) is retried with the same idempotency key, as a client does. Returns the id.
inline uint64_t SendAcked(TestClient& from, uint64_t request_id, uint64_t to,
                          const std::string& body, int timeout_ms = 30'000) {
  const std::string key = NewKey();
  const int64_t deadline = MonoMs() + timeout_ms;
  std::string last;
  while (MonoMs() < deadline) {
    auto f = from.Send(request_id, to, body, key);
    if (f.opcode == Op(wire::Opcode::kSendAck)) {
      v1::SendAck a;
      EXPECT_TRUE(a.ParseFromString(f.payload));
      return a.message_id();
    }
    v1::Error e;
    e.ParseFromString(f.payload);
    last = e.ShortDebugString();
    if (e.code() != static_cast<uint32_t>(StatusCode::kUnavailable)) break;
  }
  ADD_FAILURE() << "no SEND_ACK for " << body << ": " << last;
  return 0;
}

// Every message a user finds in its inbox (a fresh session's catch-up), in order.
inline std::vector<v1::Envelope> Inbox(ServerProcess& s, uint64_t user) {
  auto c = TestClient::Connect(s);
  c->Login(s, user);
  std::vector<v1::Envelope> got;
  c->CatchUp(&got);
  return got;
}

}  // namespace iris::testing
