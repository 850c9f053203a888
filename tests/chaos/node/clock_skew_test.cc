// Clock skew of irisd itself (issue 17): irisd is restarted (kill -9) under libfaketime with
// its clock stepped back and forth by 30 s (offsets 0, -30 s, +30 s, 0, ...) while clients
// send. Before a step counts, a handshake confirms it: a probe's WELCOME.server_time_ms must
// be our wall clock plus the offset. Message ids (HLC) must keep increasing within every
// inbox across the steps, and nothing acknowledged may be lost.
//
// ServerProcess runs $IRIS_BUILD_DIR/src/server/irisd; the test points IRIS_BUILD_DIR at a
// directory whose src/server/irisd is a script that execs the real irisd with LD_PRELOAD =
// libfaketime and FAKETIME = the offset the test wrote to a file (the `faketime -f` form).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/clock.h"
#include "harness/chaos.h"
#include "support/wait_for.h"

namespace iris::chaos {
namespace {

std::string FindLibFaketime() {
  for (const char* p :
       {"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "";
}

class ClockSkewNemesis : public Nemesis {
 public:
  explicit ClockSkewNemesis(std::string offset_file) : offset_file_(std::move(offset_file)) {}
  std::string name() const override { return "clock-skew"; }

  void Inject(ChaosRun& run, std::mt19937_64& /*rng*/) override {
    static constexpr int kOffsets[] = {-30, 30, 0};
    offset_s_ = kOffsets[steps_ % 3];
    ++steps_;
    // libfaketime's relative form needs the sign ("+30", "-30"); 0 runs irisd unfaked.
    std::ofstream(offset_file_, std::ios::trunc) << (offset_s_ > 0 ? "+" : "") << offset_s_ << "\n";
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
  std::string offset_file_;
  int offset_s_ = 0;
  int steps_ = 0;
  int confirmed_ = 0;
};

// IRIS_BUILD_DIR points ServerProcess at a directory whose src/server/irisd runs the real
// irisd under libfaketime as `offset_file` says: "0" unfaked, "+30"/"-30" a fixed offset
// (FAKETIME, the `faketime -f` form), "strobe" the offset read from `strobe_file` (rewritten
// by the test while irisd runs; re-read every second; CLOCK_MONOTONIC left alone, as a real
// wall-clock step would). Set up before any thread exists (setenv is not thread-safe);
// IRIS_BUILD_DIR is restored on destruction.
class FaketimeIrisd {
 public:
  FaketimeIrisd() {
    const std::string lib = FindLibFaketime();
    if (lib.empty()) {
      error_ = "libfaketime not found: install the faketime package";
      return;
    }
    const char* build = std::getenv("IRIS_BUILD_DIR");
    saved_build_ = build != nullptr ? build : ".";
    const std::string real_irisd =
        std::filesystem::absolute(saved_build_ + "/src/server/irisd").string();
    if (!std::filesystem::exists(real_irisd)) {
      error_ = "irisd not found at " + real_irisd;
      return;
    }
    char tmpl[] = "/tmp/iris-chaos-skew-XXXXXX";
    dir_ = mkdtemp(tmpl);
    offset_file_ = dir_ + "/offset";
    strobe_file_ = dir_ + "/strobe";
    std::filesystem::create_directories(dir_ + "/src/server");
    const std::string wrapper = dir_ + "/src/server/irisd";
    {
      std::ofstream(offset_file_) << "0\n";
      std::ofstream(strobe_file_) << "+0\n";
      std::ofstream w(wrapper);
      w << "#!/bin/sh\n"
        << "off=$(cat '" << offset_file_ << "')\n"
        << "if [ \"$off\" = strobe ]; then\n"
        << "  export LD_PRELOAD='" << lib << "' FAKETIME_TIMESTAMP_FILE='" << strobe_file_
        << "' FAKETIME_CACHE_DURATION=1 FAKETIME_DONT_FAKE_MONOTONIC=1\n"
        << "elif [ \"$off\" != 0 ]; then\n"
        << "  export LD_PRELOAD='" << lib << "' FAKETIME=\"$off\"\n"
        << "fi\n"
        << "exec '" << real_irisd << "' \"$@\"\n";
    }
    if (chmod(wrapper.c_str(), 0755) != 0) {
      error_ = "chmod " + wrapper + " failed";
      return;
    }
    setenv("IRIS_BUILD_DIR", dir_.c_str(), 1);
    active_ = true;
  }
  ~FaketimeIrisd() {
    if (active_) setenv("IRIS_BUILD_DIR", saved_build_.c_str(), 1);
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  const std::string& error() const { return error_; }
  const std::string& offset_file() const { return offset_file_; }
  // Replaces the strobe file atomically (libfaketime may read it at any moment).
  void SetStrobe(int offset_s) const {
    const std::string tmp = strobe_file_ + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << (offset_s >= 0 ? "+" : "") << offset_s << "\n";
    std::filesystem::rename(tmp, strobe_file_);
  }

 private:
  std::string error_;
  std::string saved_build_;
  std::string dir_;
  std::string offset_file_;
  std::string strobe_file_;
  bool active_ = false;
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
  ClockSkewNemesis skew(ft.offset_file());
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
  std::ofstream(ft.offset_file(), std::ios::trunc) << "strobe\n";
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
