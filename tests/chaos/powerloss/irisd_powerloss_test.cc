// Power loss under irisd (issue 17): irisd runs with its data directory on iris_lossyfs; a
// client sends messages to several recipients and records every SEND_ACK; at a seeded
// random number of acks (with more sends in flight) the power goes out (everything not
// fsynced is dropped), irisd is SIGKILLed, the file system remounted and irisd restarted on
// what survived. Every acknowledged message must then be delivered to its recipient with
// its acknowledged id and body, every cycle, over everything acknowledged so far.
//
// Before the first power loss the data directory is synced once (irisd's generated TLS key
// and secrets stand for files an operator installs). CI: 5 power losses;
// IRIS_POWERLOSS_CYCLES=N, or IRIS_CHAOS_LONG=1 for 100. IRIS_CHAOS_SEED=S replays a run.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <map>
#include <random>

#include "chaos/powerloss/lossy_mount.h"
#include "harness/server_process.h"
#include "store/store_db.h"
#include "unit/store/store_test_util.h"
#include "wire/opcode.h"

namespace iris::powerloss {
namespace {

constexpr uint8_t kSendAck = static_cast<uint8_t>(wire::Opcode::kSendAck);
constexpr uint64_t kSender = 100;
constexpr uint64_t kFirstRecipient = 101;
constexpr uint64_t kRecipients = 4;

struct Sent {
  uint64_t recipient;
  std::string body;
};

class IrisdPowerLoss : public ::testing::Test {
 protected:
  void TearDown() override {
    unsetenv("LD_PRELOAD");  // the mutation's, also when it failed half-way
    server_.Stop(SIGKILL);   // before the unmount: nothing may hold the mount
    mount_.Unmount();
  }

  // `refused` (may be null): set when, with `stop_at_loss`, the store refused to open after a
  // power loss because it lost writes its durability mark recorded as durable.
  void Run(uint64_t seed, uint64_t cycles, bool stop_at_loss, uint64_t* acks, uint64_t* lost,
           bool* refused = nullptr);

  store::testing::TempDir tmp_;
  iris::testing::ServerProcess server_;
  LossyMount mount_{tmp_.Sub("backing"), server_.data_dir()};
};

// Runs `cycles` power losses; counts acknowledged and lost messages. With `stop_at_loss`
// it returns after the first cycle that lost something.
void IrisdPowerLoss::Run(uint64_t seed, uint64_t cycles, bool stop_at_loss, uint64_t* acks,
                         uint64_t* lost, bool* refused) {
  std::mt19937_64 rng(seed);
  std::string err;
  ASSERT_TRUE(mount_.Mount(&err)) << err;
  server_.Start();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_TRUE(mount_.Sync());

  // recipient -> message id -> body, for every acknowledged message.
  std::map<uint64_t, std::map<uint64_t, std::string>> acked;
  uint64_t request = 0;
  for (uint64_t cycle = 0; cycle < cycles; ++cycle) {
    const uint64_t crash_after = 20 + rng() % 300;
    const uint64_t in_flight = 1 + rng() % 64;
    {
      auto alice = iris::testing::TestClient::Connect(server_);
      ASSERT_NE(alice, nullptr);
      alice->Login(server_, kSender);
      std::vector<v1::Envelope> none;
      alice->CatchUp(&none);
      std::map<uint64_t, Sent> sent;  // request id -> what
      for (uint64_t i = 0; i < crash_after + in_flight; ++i) {
        const uint64_t to = kFirstRecipient + rng() % kRecipients;
        const std::string body = "c" + std::to_string(cycle) + "-m" + std::to_string(i);
        sent[++request] = Sent{to, body};
        alice->SendAsync(request, to, body, iris::testing::NewKey());
      }
      for (uint64_t n = 0; n < crash_after; ++n) {
        client::ReceivedFrame f = alice->Expect(kSendAck, 30'000);
        ASSERT_FALSE(HasFatalFailure()) << "cycle " << cycle;
        v1::SendAck a;
        ASSERT_TRUE(a.ParseFromString(f.payload));
        auto it = sent.find(a.request_id());
        ASSERT_NE(it, sent.end()) << "ack of an unknown request " << a.request_id();
        ASSERT_FALSE(a.duplicate());
        acked[it->second.recipient][a.message_id()] = it->second.body;
        ++*acks;
      }
      ASSERT_TRUE(mount_.Crash()) << "cycle " << cycle;
      server_.Stop(SIGKILL);
    }
    mount_.Unmount();
    ASSERT_TRUE(mount_.Mount(&err)) << "cycle " << cycle << ": " << err;
    if (stop_at_loss && refused != nullptr) {
      // The mutation may be caught before irisd starts: the store refuses to open.
      store::StoreDbOptions o;
      o.path = server_.data_dir() + "/store";
      o.durability_mark_interval_ms = 0;
      auto db = store::StoreDb::Open(o);
      if (!db.ok()) {
        std::printf("irisd power loss: cycle %llu: the store refused to open: %s\n",
                    static_cast<unsigned long long>(cycle), db.status().ToString().c_str());
        *refused = db.status().message().find("the write-ahead log was truncated or lost") !=
                   std::string::npos;
        return;
      }
    }
    server_.Start();
    ASSERT_FALSE(HasFatalFailure()) << "cycle " << cycle << ": irisd did not restart";

    uint64_t lost_now = 0;
    for (auto& [to, messages] : acked) {
      auto bob = iris::testing::TestClient::Connect(server_);
      ASSERT_NE(bob, nullptr);
      bob->Login(server_, to);
      std::vector<v1::Envelope> got;
      bob->CatchUp(&got);
      ASSERT_FALSE(HasFatalFailure());
      std::map<uint64_t, std::string> stored;
      for (const v1::Envelope& e : got) stored[e.id()] = e.body();
      for (auto it = messages.begin(); it != messages.end();) {
        auto s = stored.find(it->first);
        if (s != stored.end() && s->second == it->second) {
          ++it;
          continue;
        }
        if (++lost_now <= 3) {
          std::printf(
              "irisd power loss: cycle %llu: acknowledged message %s (id %llu) to %llu "
              "lost\n",
              static_cast<unsigned long long>(cycle), it->second.c_str(),
              static_cast<unsigned long long>(it->first), static_cast<unsigned long long>(to));
        }
        it = messages.erase(it);  // report each loss once
      }
    }
    *lost += lost_now;
    if (lost_now > 0 && stop_at_loss) return;
  }
}

TEST_F(IrisdPowerLoss, AcknowledgedMessagesSurvivePowerLoss) {
  const uint64_t seed = Seed();
  const uint64_t cycles = Cycles(5);
  std::printf("irisd power loss: seed=%llu cycles=%llu (IRIS_CHAOS_SEED replays)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(cycles));
  std::fflush(stdout);
  uint64_t acks = 0, lost = 0;
  Run(seed, cycles, false, &acks, &lost);
  std::printf("irisd power loss: %llu power losses, %llu acknowledged, %llu lost\n",
              static_cast<unsigned long long>(cycles), static_cast<unsigned long long>(acks),
              static_cast<unsigned long long>(lost));
  EXPECT_EQ(lost, 0u) << "seed " << seed;
  EXPECT_GT(acks, 0u);
}

// The mutation: irisd's WAL syncs become no-ops (LD_PRELOAD of nowalsync.cc into irisd), so
// it acknowledges before the data is durable; the power loss must cost acknowledged messages.
TEST_F(IrisdPowerLoss, AckBeforeFsyncIsCaught) {
  const uint64_t seed = Seed();
  std::printf("irisd power loss (mutation: WAL not synced): seed=%llu\n",
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  setenv("LD_PRELOAD", NoWalSyncPath().c_str(), 1);  // inherited by irisd only: exec'd later
  uint64_t acks = 0, lost = 0;
  bool refused = false;
  Run(seed, 3, true, &acks, &lost, &refused);
  unsetenv("LD_PRELOAD");
  std::printf("irisd power loss (mutation): %llu acknowledged, %llu lost%s\n",
              static_cast<unsigned long long>(acks), static_cast<unsigned long long>(lost),
              refused ? ", then the store refused to open" : "");
  EXPECT_TRUE(lost > 0 || refused) << "acknowledging before the WAL is durable went unnoticed";
}

}  // namespace
}  // namespace iris::powerloss
