// Integration tests of the messaging core against a real irisd process (RFC-001 FR-1, FR-2,
// FR-3, FR-5 and the sync protocol of PROTOCOL.md section 6).

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <thread>

#include "harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

constexpr uint8_t kSendAck = static_cast<uint8_t>(wire::Opcode::kSendAck);
constexpr uint8_t kDeliver = static_cast<uint8_t>(wire::Opcode::kDeliver);
constexpr uint8_t kError = static_cast<uint8_t>(wire::Opcode::kError);

v1::SendAck ParseAck(const client::ReceivedFrame& f) {
  v1::SendAck a;
  EXPECT_EQ(f.opcode, kSendAck) << "got opcode " << int(f.opcode);
  EXPECT_TRUE(a.ParseFromString(f.payload));
  return a;
}

// Reads DELIVER frames until `n` messages arrived; acknowledges them cumulatively.
std::vector<v1::Envelope> ReceivePushes(TestClient& c, size_t n) {
  std::vector<v1::Envelope> got;
  while (got.size() < n) {
    auto f = c.Expect(kDeliver, 20'000);
    if (f.opcode != kDeliver) break;
    v1::Deliver d;
    EXPECT_TRUE(d.ParseFromString(f.payload));
    got.push_back(d.message());
    v1::DeliverAck ack;
    ack.set_cursor(d.message().id());
    EXPECT_TRUE(c.conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kDeliverAck), ack).ok());
  }
  return got;
}

int64_t MonoMillisForTest() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class MessagingTest : public ::testing::Test {
 protected:
  void SetUp() override { server_.Start(); }
  ServerProcess server_;
};

// FR-1: send 1,000 messages, receive 1,000, in order, each once.
TEST_F(MessagingTest, Fr1ThousandMessagesArriveInOrderExactlyOnce) {
  auto alice = TestClient::Connect(server_);
  auto bob = TestClient::Connect(server_);
  ASSERT_TRUE(alice && bob);
  alice->Login(server_, 1);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  bob->Login(server_, 2);
  bob->CatchUp(&none);
  ASSERT_TRUE(none.empty());

  constexpr int kCount = 1000;
  std::vector<uint64_t> acked;
  std::thread sender([&] {
    for (int i = 0; i < kCount; ++i) alice->SendAsync(i + 1, 2, "m" + std::to_string(i), NewKey());
  });
  for (int i = 0; i < kCount; ++i) {
    v1::SendAck a = ParseAck(alice->Expect(kSendAck, 20'000));
    ASSERT_EQ(a.request_id(), static_cast<uint64_t>(i + 1)) << "acks must come in send order";
    ASSERT_FALSE(a.duplicate());
    acked.push_back(a.message_id());
  }
  sender.join();
  auto got = ReceivePushes(*bob, kCount);
  ASSERT_EQ(got.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(got[i].body(), "m" + std::to_string(i));
    EXPECT_EQ(got[i].id(), acked[i]);
    EXPECT_EQ(got[i].sender(), 1u);
    EXPECT_EQ(got[i].recipient(), 2u);
    if (i > 0) {
      EXPECT_LT(got[i - 1].id(), got[i].id());
    }
  }
}

// FR-2: messages to an offline user are stored and delivered when it connects.
TEST_F(MessagingTest, Fr2OfflineRecipientGetsMessagesOnConnect) {
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 10);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  for (int i = 0; i < 700; ++i) {
    ParseAck(alice->Send(i + 1, 11, "offline-" + std::to_string(i), NewKey()));
  }
  // Small pages force several SYNC_ACK round trips.
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 11, 0, 64);
  std::vector<v1::Envelope> got;
  const uint64_t cursor = bob->CatchUp(&got);
  ASSERT_EQ(got.size(), 700u);
  for (int i = 0; i < 700; ++i) EXPECT_EQ(got[i].body(), "offline-" + std::to_string(i));
  EXPECT_EQ(cursor, got.back().id());
}

// FR-3: SEND_ACK only after persistence: SIGKILL right after acknowledgements, restart,
// every acknowledged message is there.
TEST_F(MessagingTest, Fr3AcknowledgedMessagesSurviveSigkill) {
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 20);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  constexpr int kCount = 300;
  for (int i = 0; i < kCount; ++i) alice->SendAsync(i + 1, 21, "d" + std::to_string(i), NewKey());
  std::vector<uint64_t> acked;
  for (int i = 0; i < kCount; ++i) acked.push_back(ParseAck(alice->Expect(kSendAck)).message_id());
  server_.KillAndRestart();
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 21);
  std::vector<v1::Envelope> got;
  bob->CatchUp(&got);
  ASSERT_EQ(got.size(), acked.size());
  for (size_t i = 0; i < acked.size(); ++i) {
    EXPECT_EQ(got[i].id(), acked[i]);
    EXPECT_EQ(got[i].body(), "d" + std::to_string(i));
  }
}

// FR-5: M1, M2, M3 arrive in order, also when the sender retries across a reconnect; the
// retry is answered with the original ids and duplicate = true, and nothing is stored twice.
TEST_F(MessagingTest, Fr5OrderHoldsAcrossRetriesAndReconnects) {
  std::vector<std::string> keys = {NewKey(), NewKey(), NewKey()};
  std::vector<uint64_t> first_ids;
  {
    auto alice = TestClient::Connect(server_);
    alice->Login(server_, 30);
    std::vector<v1::Envelope> none;
    alice->CatchUp(&none);
    for (int i = 0; i < 3; ++i) {
      first_ids.push_back(
          ParseAck(alice->Send(i + 1, 31, "M" + std::to_string(i + 1), keys[i])).message_id());
    }
    alice->conn().Abort();  // the sender "did not see" the acks and retries after reconnecting
  }
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 30);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  for (int i = 0; i < 3; ++i) {
    v1::SendAck a = ParseAck(alice->Send(10 + i, 31, "M" + std::to_string(i + 1), keys[i]));
    EXPECT_TRUE(a.duplicate());
    EXPECT_EQ(a.message_id(), first_ids[i]);
  }
  ParseAck(alice->Send(20, 31, "M4", NewKey()));
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 31);
  std::vector<v1::Envelope> got;
  bob->CatchUp(&got);
  ASSERT_EQ(got.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i].body(), "M" + std::to_string(i + 1));
}

// Sync: a connection cut in the middle of catch-up resumes from the persisted cursor with
// nothing lost or repeated.
TEST_F(MessagingTest, SyncResumesFromCursorAfterCutMidCatchUp) {
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 40);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  for (int i = 0; i < 500; ++i) alice->SendAsync(i + 1, 41, "s" + std::to_string(i), NewKey());
  for (int i = 0; i < 500; ++i) ParseAck(alice->Expect(kSendAck));

  std::vector<v1::Envelope> persisted;
  {
    auto bob = TestClient::Connect(server_);
    bob->Login(server_, 41, 0, 100);
    // Take two pages, "persist" them, then drop the connection without acknowledging more.
    for (int page = 0; page < 2; ++page) {
      auto f = bob->Expect(static_cast<uint8_t>(wire::Opcode::kSyncPage));
      v1::SyncPage p;
      ASSERT_TRUE(p.ParseFromString(f.payload));
      ASSERT_TRUE(p.has_more());
      for (const auto& e : p.messages()) persisted.push_back(e);
      if (page == 0) {
        v1::SyncAck a;
        a.set_cursor(p.cursor());
        ASSERT_TRUE(bob->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kSyncAck), a).ok());
      }
    }
    bob->conn().Abort();
  }
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 41, persisted.back().id(), 100);
  bob->CatchUp(&persisted);
  ASSERT_EQ(persisted.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(persisted[i].body(), "s" + std::to_string(i));
}

// Sync: catch-up racing with concurrent sends loses and duplicates nothing across the
// switch to push mode.
TEST_F(MessagingTest, CatchUpRacingConcurrentSendsLosesNothing) {
  constexpr int kBefore = 400, kDuring = 600;
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 50);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  for (int i = 0; i < kBefore; ++i) alice->SendAsync(i + 1, 51, std::to_string(i), NewKey());
  for (int i = 0; i < kBefore; ++i) ParseAck(alice->Expect(kSendAck));

  std::thread sender([&] {
    for (int i = kBefore; i < kBefore + kDuring; ++i) {
      alice->SendAsync(i + 1, 51, std::to_string(i), NewKey());
    }
  });
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 51, 0, 50);
  std::vector<v1::Envelope> got;
  bob->CatchUp(&got);
  sender.join();
  for (int i = 0; i < kDuring; ++i) ParseAck(alice->Expect(kSendAck, 20'000));
  const size_t remaining = kBefore + kDuring - got.size();
  auto pushed = ReceivePushes(*bob, remaining);
  got.insert(got.end(), pushed.begin(), pushed.end());
  EXPECT_TRUE(DeliveredOnceInOrder(got, kBefore + kDuring));
  // Nothing more arrives: no duplicates after the last message.
  EXPECT_TRUE(NoFurtherDeliver(*bob));
}

// Sync with the catch-up page read off the loop (security issue 14): a recipient that
// re-syncs over and over while messages stream in loses none of them. Every SYNC starts a
// scan on a core worker; commits that land while it is out must be held and replayed after
// the page, or they fall between the scan's snapshot and the switch to push mode.
TEST_F(MessagingTest, RepeatedSyncsRacingAStreamOfSendsLoseNothing) {
  constexpr int kMessages = 10000;
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 70);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 71, 0, 50);
  bob->CatchUp(&none);

  std::atomic<bool> acked_all{false};
  std::thread sender([&] {
    for (int i = 0; i < kMessages; ++i) {
      alice->SendAsync(static_cast<uint64_t>(i + 1), 71, std::to_string(i), NewKey());
      if (i % 10 == 9) {  // keep about 10 in flight: a stream, not one batch
        for (int j = 0; j < 10; ++j) ParseAck(alice->Expect(kSendAck, 20'000));
      }
    }
    acked_all.store(true);
  });

  std::set<uint64_t> ids;
  std::set<std::string> bodies;
  uint64_t cursor = 0;
  auto take = [&](const v1::Envelope& e) {
    ids.insert(e.id());
    bodies.insert(e.body());
    cursor = std::max(cursor, e.id());
  };
  // Re-sync from the highest id seen, again and again, while the stream runs.
  int syncs = 0;
  const int64_t deadline = MonoMillisForTest() + 60'000;
  while (static_cast<int>(bodies.size()) < kMessages && MonoMillisForTest() < deadline) {
    const bool final_round = acked_all.load();
    v1::Sync sync;
    sync.set_cursor(cursor);
    ASSERT_TRUE(bob->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kSync), sync).ok());
    ++syncs;
    for (;;) {
      auto f = bob->Next(20'000);
      ASSERT_TRUE(f.ok()) << f.status().ToString();
      if (f->opcode == kDeliver) {
        v1::Deliver d;
        ASSERT_TRUE(d.ParseFromString(f->payload));
        take(d.message());
      } else if (f->opcode == static_cast<uint8_t>(wire::Opcode::kSyncPage)) {
        v1::SyncPage page;
        ASSERT_TRUE(page.ParseFromString(f->payload));
        for (const auto& e : page.messages()) take(e);
        if (page.has_more()) {
          v1::SyncAck ack;
          ack.set_cursor(page.cursor());
          ASSERT_TRUE(
              bob->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kSyncAck), ack).ok());
        }
      } else if (f->opcode == static_cast<uint8_t>(wire::Opcode::kSyncDone)) {
        break;
      } else {
        FAIL() << "unexpected opcode " << int(f->opcode);
      }
    }
    if (final_round) {
      // Everything was acknowledged before this SYNC: its catch-up returned the rest.
      break;
    }
    // Stay in push mode for a moment: later pushes move the cursor past anything the
    // switch lost, so a loss cannot be healed by the next SYNC.
    for (int k = 0; k < 20; ++k) {
      auto f = bob->Next(5);
      if (!f.ok()) break;
      ASSERT_EQ(f->opcode, kDeliver);
      v1::Deliver d;
      ASSERT_TRUE(d.ParseFromString(f->payload));
      take(d.message());
    }
  }
  sender.join();
  std::printf("%d SYNCs while %d messages streamed\n", syncs, kMessages);
  EXPECT_EQ(bodies.size(), static_cast<size_t>(kMessages))
      << "messages lost across " << syncs << " catch-up/push switches";
  EXPECT_EQ(ids.size(), static_cast<size_t>(kMessages));
  EXPECT_GT(syncs, 10);
}

// A newer session of the same user replaces the older one.
TEST_F(MessagingTest, NewerSessionReplacesOlder) {
  auto first = TestClient::Connect(server_);
  first->Login(server_, 60);
  std::vector<v1::Envelope> none;
  first->CatchUp(&none);
  auto second = TestClient::Connect(server_);
  second->Login(server_, 60);
  second->CatchUp(&none);
  auto f = first->Expect(kError);
  v1::Error e;
  ASSERT_TRUE(e.ParseFromString(f.payload));
  EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kSessionReplaced));
  EXPECT_TRUE(e.fatal());
}

// SIGTERM: in-flight sends are acknowledged or refused, never acknowledged and lost.
TEST_F(MessagingTest, GracefulShutdownLosesNoAcknowledgedMessage) {
  auto alice = TestClient::Connect(server_);
  alice->Login(server_, 70);
  std::vector<v1::Envelope> none;
  alice->CatchUp(&none);
  for (int i = 0; i < 200; ++i) alice->SendAsync(i + 1, 71, std::to_string(i), NewKey());
  // Wait for the first ack so the stream is flowing, then stop the server.
  std::vector<uint64_t> acked;
  acked.push_back(ParseAck(alice->Expect(kSendAck)).message_id());
  const int status = server_.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  for (;;) {
    auto f = alice->Next(2000);
    if (!f.ok()) break;
    if (f->opcode == kSendAck) acked.push_back(ParseAck(*f).message_id());
  }
  server_.Start();
  auto bob = TestClient::Connect(server_);
  bob->Login(server_, 71);
  std::vector<v1::Envelope> got;
  bob->CatchUp(&got);
  std::set<uint64_t> stored;
  for (const auto& e : got) stored.insert(e.id());
  for (uint64_t id : acked) EXPECT_TRUE(stored.count(id)) << "acknowledged id " << id << " lost";
}

}  // namespace
}  // namespace iris::testing
