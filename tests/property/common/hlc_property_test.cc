// Property tests of HybridLogicalClock (common/hlc.h): monotonic over random wall-clock
// sequences with backward jumps, causality after Observe, the skew bound, Restore.
// Seeded through RC_PARAMS (see CMakeLists.txt).

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/hlc.h"

namespace iris {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;

// A wall-clock step: mostly small moves either way, sometimes large jumps (NTP steps,
// a VM resumed, a clock set by hand).
rc::Gen<int64_t> WallStep() {
  return rc::gen::weightedOneOf<int64_t>({
      {6, rc::gen::inRange<int64_t>(-3, 4)},
      {3, rc::gen::inRange<int64_t>(-1'000, 1'001)},
      {1, rc::gen::inRange<int64_t>(-86'400'000, 86'400'001)},
  });
}

struct Step {
  int64_t wall_delta;
  int calls;
};

rc::Gen<std::vector<Step>> Steps(int max_calls) {
  return rc::gen::container<std::vector<Step>>(rc::gen::construct<Step>(
      WallStep(), rc::gen::weightedOneOf<int>(
                      {{4, rc::gen::inRange(1, 5)}, {1, rc::gen::inRange(1, max_calls + 1)}})));
}

RC_GTEST_PROP(HlcProperty, NextIsStrictlyIncreasingOverRandomClockSequences, ()) {
  const auto node = *rc::gen::arbitrary<uint8_t>();
  const auto steps = *Steps(600);
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, node);
  uint64_t prev = 0;
  int64_t max_wall = kT0;
  int64_t calls = 0;
  for (const Step& s : steps) {
    clock.SetWallMillis(clock.WallMillis() + s.wall_delta);
    max_wall = std::max(max_wall, clock.WallMillis());
    for (int i = 0; i < s.calls; ++i) {
      const uint64_t id = hlc.Next();
      ++calls;
      RC_ASSERT(id > prev);
      const HlcParts p = SplitHlcId(id);
      RC_ASSERT(p.node == node);
      // Never behind the wall clock...
      RC_ASSERT(static_cast<int64_t>(p.millis) >= clock.WallMillis());
      // ...and ahead of the largest wall time seen only by borrowed milliseconds.
      RC_ASSERT(static_cast<int64_t>(p.millis) <= max_wall + calls / 256 + 1);
      RC_ASSERT(hlc.Last() == id);
      prev = id;
    }
  }
}

// Two nodes exchange ids in a random pattern while their clocks wander (within the skew
// bound). Every id a node issues is greater than every id in its causal past: its own
// earlier ids and every id it observed, directly or through a chain of messages.
RC_GTEST_PROP(HlcProperty, CausalityAfterObserve, ()) {
  ManualClock clock_a(kT0);
  ManualClock clock_b(kT0 + *rc::gen::inRange<int64_t>(-10'000, 10'001));
  HybridLogicalClock a(clock_a, 1);
  HybridLogicalClock b(clock_b, 2);
  uint64_t past_a = 0;  // greatest id in a's causal past
  uint64_t past_b = 0;
  const auto events = *rc::gen::container<std::vector<std::pair<int, int64_t>>>(
      rc::gen::pair(rc::gen::inRange(0, 6), rc::gen::inRange<int64_t>(-2'000, 2'001)));
  for (const auto& [kind, delta] : events) {
    switch (kind) {
      case 0:  // a's wall clock moves, staying within 10 s of the start
        clock_a.SetWallMillis(std::clamp(clock_a.WallMillis() + delta, kT0 - 10'000, kT0 + 10'000));
        break;
      case 1:
        clock_b.SetWallMillis(std::clamp(clock_b.WallMillis() + delta, kT0 - 10'000, kT0 + 10'000));
        break;
      case 2: {  // a sends to b
        const uint64_t id = a.Next();
        RC_ASSERT(id > past_a);
        past_a = id;
        RC_ASSERT(b.Observe(id));
        past_b = std::max(past_b, id);
        break;
      }
      case 3: {  // b sends to a
        const uint64_t id = b.Next();
        RC_ASSERT(id > past_b);
        past_b = id;
        RC_ASSERT(a.Observe(id));
        past_a = std::max(past_a, id);
        break;
      }
      case 4: {  // local events
        const uint64_t id = a.Next();
        RC_ASSERT(id > past_a);
        past_a = id;
        break;
      }
      default: {
        const uint64_t id = b.Next();
        RC_ASSERT(id > past_b);
        past_b = id;
        break;
      }
    }
  }
  RC_ASSERT(a.SkewRejections() == 0u);
  RC_ASSERT(b.SkewRejections() == 0u);
  RC_ASSERT(a.Next() > past_a);
  RC_ASSERT(b.Next() > past_b);
}

// A remote id is merged exactly when its physical part is at most max_skew ahead of the
// local wall clock; rejected ones are counted and leave the clock untouched.
RC_GTEST_PROP(HlcProperty, SkewBound, ()) {
  const auto max_skew =
      *rc::gen::element(int64_t{30'000}, int64_t{1}, int64_t{1'000}, int64_t{120'000});
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 3, max_skew);
  uint64_t rejected = 0;
  int64_t nexts = 0;
  const auto remotes = *rc::gen::container<std::vector<std::tuple<int64_t, uint8_t, uint8_t>>>(
      rc::gen::tuple(rc::gen::inRange<int64_t>(-2 * max_skew - 5, 2 * max_skew + 6),
                     rc::gen::arbitrary<uint8_t>(), rc::gen::arbitrary<uint8_t>()));
  for (const auto& [offset, logical, node] : remotes) {
    const int64_t remote_ms = clock.WallMillis() + offset;  // kT0 >> 2 * max_skew: positive
    const uint64_t remote = MakeHlcId(static_cast<uint64_t>(remote_ms), logical, node);
    const uint64_t last_before = hlc.Last();
    const bool merged = hlc.Observe(remote);
    RC_ASSERT(merged == (offset <= max_skew));
    if (merged) {
      ++nexts;
      RC_ASSERT(hlc.Next() > remote);
    } else {
      ++rejected;
      RC_ASSERT(hlc.Last() == last_before);
    }
    RC_ASSERT(hlc.SkewRejections() == rejected);
    // No id the clock issues is more than max_skew (plus borrowed ms) past the wall.
    const uint64_t id = hlc.Next();
    ++nexts;
    RC_ASSERT(static_cast<int64_t>(SplitHlcId(id).millis) <=
              clock.WallMillis() + max_skew + 1 + nexts / 256 + 1);
    clock.AdvanceMillis(*rc::gen::inRange<int64_t>(0, 50));
  }
}

RC_GTEST_PROP(HlcProperty, RestoreMakesLaterIdsGreater, ()) {
  const auto wall = *rc::gen::inRange<int64_t>(0, int64_t{1} << 47);
  const auto high_water = *rc::gen::inRange<uint64_t>(0, uint64_t{1} << 63);
  const auto node = *rc::gen::arbitrary<uint8_t>();
  ManualClock clock(wall);
  HybridLogicalClock hlc(clock, node);
  hlc.Restore(high_water);
  uint64_t prev = high_water;
  for (int i = 0; i < 300; ++i) {
    const uint64_t id = hlc.Next();
    RC_ASSERT(id > prev);
    RC_ASSERT(SplitHlcId(id).node == node);
    prev = id;
  }
}

}  // namespace
}  // namespace iris
