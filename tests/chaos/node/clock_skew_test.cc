// Clock skew of irisd itself (issue 17): irisd is restarted (kill -9) under libfaketime with
// its clock stepped back and forth by 30 s (offsets 0, -30 s, +30 s, 0, ...) while clients
// send. Before a step counts, a handshake confirms it: a probe's WELCOME.server_time_ms must
// be our wall clock plus the offset. Message ids (HLC) must keep increasing within every
// inbox across the steps, and nothing acknowledged may be lost.
//
// irisd runs under libfaketime through harness/faketime.h.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>

#include "common/clock.h"
#include "harness/chaos.h"
#include "harness/faketime.h"
#include "support/wait_for.h"

namespace iris::chaos {
namespace {

class ClockSkewNemesis : public Nemesis {
 public:
  explicit ClockSkewNemesis(const FaketimeIrisd& ft) : ft_(ft) {}
  std::string name() const override { return "clock-skew"; }

  void Inject(ChaosRun& run, std::mt19937_64& /*rng*/) override {
    static constexpr int kOffsets[] = {-30, 30, 0};
    offset_s_ = kOffsets[steps_ % 3];
    ++steps_;
    // libfaketime's relative form needs the sign ("+30", "-30"); 0 runs irisd unfaked.
    ft_.SetMode((offset_s_ > 0 ? "+" : "") + std::to_string(offset_s_));
    const int status = run.server().Stop(SIGKILL);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  }

  void Heal(ChaosRun& run) override {
    run.server().Start();
    if (::testing::Test::HasFatalFailure()) return;
    // The handshake: the step is only counted once irisd's own clock shows it.
    const v1::Welcome w = run.Probe(kProbeUser);
    const int64_t ours = SystemClock::Instance().WallMillis();
    const int64_t skew_ms = static_cast<int64_t>(w.server_time_ms()) - ours;
    ASSERT_NEAR(static_cast<double>(skew_ms), offset_s_ * 1000.0, 5000.0)
        << "irisd's clock is off by " << skew_ms << " ms, wanted " << offset_s_ << " s";
    ++confirmed_;
    run.ServerUp();
  }

  int confirmed() const { return confirmed_; }
  static constexpr uint64_t kProbeUser = 990;

 private:
  const FaketimeIrisd& ft_;
  int offset_s_ = 0;
  int steps_ = 0;
  int confirmed_ = 0;
};

// irisd's clock, as a probe's WELCOME shows it, minus ours (ms).
int64_t ServerSkewMs(ChaosRun& run) {
  const v1::Welcome w = run.Probe(ClockSkewNemesis::kProbeUser);
  return static_cast<int64_t>(w.server_time_ms()) - SystemClock::Instance().WallMillis();
}

// Steps the clock of a running irisd (no restart) through -30 s, +30 s, 0, ... by rewriting
// the strobe file; each step counts once a probe's WELCOME shows it.
class ClockStrobeNemesis : public Nemesis {
 public:
  explicit ClockStrobeNemesis(const FaketimeIrisd& ft) : ft_(ft) {}
  std::string name() const override { return "clock-strobe"; }
  void Inject(ChaosRun& run, std::mt19937_64& /*rng*/) override {
    static constexpr int kOffsets[] = {-30, 30, 0};
    const int offset_s = kOffsets[steps_ % 3];
    ++steps_;
    ft_.SetStrobe(offset_s);
    int64_t skew_ms = 0;
    ASSERT_TRUE(testing::PollUntil(
        [&] {
          skew_ms = ServerSkewMs(run);
          return std::llabs(skew_ms - offset_s * 1000) < 5000;
        },
        15'000, 100))
        << "irisd's clock did not step to " << offset_s << " s (off by " << skew_ms << " ms)";
    ++confirmed_;
  }
  void Heal(ChaosRun& /*run*/) override {}
  int confirmed() const { return confirmed_; }

 private:
  const FaketimeIrisd& ft_;
  int steps_ = 0;
  int confirmed_ = 0;
};

TEST(ChaosNode, ClockStepsKeepIdsIncreasingAndLoseNothing) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(6, 60);
  FaketimeIrisd ft;
  ASSERT_TRUE(ft.error().empty()) << ft.error();
  testing::ServerProcess server(ChaosServerArgs());
  server.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ChaosOptions o;
  o.seed = seed;
  ChaosRun run(&server, o);
  run.StartClients();
  ClockSkewNemesis skew(ft);
  ASSERT_TRUE(run.RunSchedule(skew, cycles));
  EXPECT_EQ(skew.confirmed(), cycles);
  const CheckerReport r = run.FinishAndCheck("clock-skew", cycles);
  EXPECT_GT(r.acknowledged, static_cast<uint64_t>(cycles));
}

// Strobing: the wall clock of a RUNNING irisd jumps back and forth by 30 s while clients
// send; the HLC must keep ids increasing within every inbox, nothing may be lost.
TEST(ChaosNode, ClockStrobingUnderARunningServer) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(6, 60);
  FaketimeIrisd ft;
  ASSERT_TRUE(ft.error().empty()) << ft.error();
  ft.SetMode("strobe");
  testing::ServerProcess server(ChaosServerArgs());
  server.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ChaosOptions o;
  o.seed = seed;
  ChaosRun run(&server, o);
  run.StartClients();
  ClockStrobeNemesis strobe(ft);
  ASSERT_TRUE(run.RunSchedule(strobe, cycles));
  EXPECT_EQ(strobe.confirmed(), cycles);
  const CheckerReport r = run.FinishAndCheck("clock-strobe", cycles);
  EXPECT_GT(r.acknowledged, static_cast<uint64_t>(cycles));
}

}  // namespace
}  // namespace iris::chaos
