// SIGSTOP / SIGCONT of irisd for longer than the clients' timeouts (issue 17): every client
// times out, reconnects and retries with the same key; after SIGCONT nothing is lost or
// duplicated.
#include <gtest/gtest.h>

#include "harness/chaos.h"

namespace iris::chaos {
namespace {

TEST(ChaosNode, PauseLongerThanClientTimeouts) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(4, 100);
  testing::ServerProcess server(ChaosServerArgs());
  server.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ChaosOptions o;
  o.seed = seed;
  o.reply_timeout_ms = 800;
  o.connect_timeout_ms = 800;
  ChaosRun run(&server, o);
  run.StartClients();
  PauseNemesis pause;
  const uint64_t timeouts_before = run.timeouts();
  ASSERT_TRUE(run.RunSchedule(pause, cycles));
  EXPECT_GE(run.timeouts() - timeouts_before, static_cast<uint64_t>(cycles * o.clients));
  const CheckerReport r = run.FinishAndCheck("pause", cycles);
  EXPECT_GT(r.acknowledged, static_cast<uint64_t>(cycles));
}

}  // namespace
}  // namespace iris::chaos
