// kill -9 of irisd with sends in flight, restarted on the same data directory, repeated
// (issue 17). Every kill must be a death by SIGKILL; clients retry with the same keys; the
// checker then finds nothing lost, duplicated, reordered or unexpected.
#include <gtest/gtest.h>

#include "harness/chaos.h"

namespace iris::chaos {
namespace {

TEST(ChaosNode, Kill9WithSendsInFlight) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(15, 1000);
  testing::ServerProcess server(ChaosServerArgs());
  server.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ChaosOptions o;
  o.seed = seed;
  ChaosRun run(&server, o);
  run.StartClients();
  KillNemesis kill9;
  ASSERT_TRUE(run.RunSchedule(kill9, cycles));
  EXPECT_EQ(kill9.kills(), cycles);
  const CheckerReport r = run.FinishAndCheck("kill9", cycles);
  EXPECT_GT(r.acknowledged, static_cast<uint64_t>(cycles));
}

}  // namespace
}  // namespace iris::chaos
