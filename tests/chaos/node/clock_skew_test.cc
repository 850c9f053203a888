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

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/clock.h"
#include "harness/chaos.h"

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

TEST(ChaosNode, ClockStepsKeepIdsIncreasingAndLoseNothing) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(6, 60);
  const std::string lib = FindLibFaketime();
  ASSERT_FALSE(lib.empty()) << "libfaketime not found: install the faketime package";

  const char* build = std::getenv("IRIS_BUILD_DIR");
  const std::string real_irisd =
      std::filesystem::absolute(std::string(build != nullptr ? build : ".") + "/src/server/irisd")
          .string();
  ASSERT_TRUE(std::filesystem::exists(real_irisd)) << real_irisd;
  char tmpl[] = "/tmp/iris-chaos-skew-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string offset_file = dir + "/offset";
  std::filesystem::create_directories(dir + "/src/server");
  const std::string wrapper = dir + "/src/server/irisd";
  {
    std::ofstream(offset_file) << "0\n";
    std::ofstream w(wrapper);
    w << "#!/bin/sh\n"
      << "off=$(cat '" << offset_file << "')\n"
      << "if [ \"$off\" != 0 ]; then\n"
      << "  export LD_PRELOAD='" << lib << "' FAKETIME=\"$off\"\n"
      << "fi\n"
      << "exec '" << real_irisd << "' \"$@\"\n";
  }
  ASSERT_EQ(chmod(wrapper.c_str(), 0755), 0);
  // Before any thread exists (setenv is not thread-safe); restored on every way out.
  struct Restore {
    std::string build, dir;
    ~Restore() {
      setenv("IRIS_BUILD_DIR", build.c_str(), 1);
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } restore{build != nullptr ? build : ".", dir};
  setenv("IRIS_BUILD_DIR", dir.c_str(), 1);

  {
    testing::ServerProcess server;
    server.Start();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ChaosOptions o;
    o.seed = seed;
    ChaosRun run(&server, o);
    run.StartClients();
    ClockSkewNemesis skew(offset_file);
    ASSERT_TRUE(run.RunSchedule(skew, cycles));
    EXPECT_EQ(skew.confirmed(), cycles);
    const CheckerReport r = run.FinishAndCheck("clock-skew", cycles);
    EXPECT_GT(r.acknowledged, static_cast<uint64_t>(cycles));
  }
}

}  // namespace
}  // namespace iris::chaos
