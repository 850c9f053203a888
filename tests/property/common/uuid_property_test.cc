// Property tests of UuidV7Generator (common/uuid.h): every id is a valid UUIDv7 and ids are
// strictly increasing over random wall-clock sequences, including backward jumps and bursts
// that overflow the per-millisecond counter. Seeded through RC_PARAMS.

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/uuid.h"

namespace iris {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;

RC_GTEST_PROP(UuidV7Property, ValidAndStrictlyIncreasingOverRandomClockSequences, ()) {
  const auto seed = *rc::gen::arbitrary<uint64_t>();
  // Up to 20 clock steps; after each, a few ids or (rarely) a burst past the 12-bit counter.
  const auto step_count = *rc::gen::inRange<size_t>(1, 21);
  const auto steps = *rc::gen::container<std::vector<std::pair<int64_t, int>>>(
      step_count, rc::gen::pair(rc::gen::weightedOneOf<int64_t>(
                                    {{5, rc::gen::inRange<int64_t>(-3, 4)},
                                     {1, rc::gen::inRange<int64_t>(-3'600'000, 3'600'001)}}),
                                rc::gen::weightedOneOf<int>({{10, rc::gen::inRange(1, 10)},
                                                             {1, rc::gen::inRange(1, 5000)},
                                                             {1, rc::gen::just(4097)}})));
  ManualClock clock(kT0);
  UuidV7Generator gen(clock, seed);
  Uuid prev{};
  bool first = true;
  uint64_t max_wall = kT0;
  for (const auto& [delta, calls] : steps) {
    clock.SetWallMillis(clock.WallMillis() + delta);
    max_wall = std::max<uint64_t>(max_wall, static_cast<uint64_t>(clock.WallMillis()));
    for (int i = 0; i < calls; ++i) {
      const Uuid u = gen.Next();
      RC_ASSERT(IsUuidV7(UuidBytes(u)));
      RC_ASSERT(first || prev < u);
      const uint64_t ms = UuidV7Millis(UuidBytes(u));
      RC_ASSERT(ms >= static_cast<uint64_t>(std::max<int64_t>(0, clock.WallMillis())));
      RC_ASSERT(ms <= max_wall + 5000);  // borrowing runs ahead by at most calls/2048 ms
      prev = u;
      first = false;
    }
  }
}

}  // namespace
}  // namespace iris
