// UUIDv7 generation and validation (common/uuid.h, RFC 9562).

#include "common/uuid.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/clock.h"

namespace iris {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;

std::string Bytes(const Uuid& u) { return std::string(UuidBytes(u)); }

TEST(UuidV7Test, VersionAndVariantBits) {
  ManualClock clock(kT0);
  UuidV7Generator gen(clock, /*seed=*/1);
  for (int i = 0; i < 1000; ++i) {
    const Uuid u = gen.Next();
    ASSERT_EQ(u[6] >> 4, 7) << UuidToString(u);     // version nibble
    ASSERT_EQ(u[8] >> 6, 0b10) << UuidToString(u);  // variant bits
    ASSERT_TRUE(IsUuidV7(UuidBytes(u)));
    if (i % 97 == 0) clock.AdvanceMillis(1);
  }
}

TEST(UuidV7Test, TimestampIsTheWallClockMillis) {
  ManualClock clock(0x0123456789ab);
  UuidV7Generator gen(clock, 2);
  const Uuid u = gen.Next();
  EXPECT_EQ(UuidV7Millis(UuidBytes(u)), 0x0123456789abULL);
  EXPECT_EQ(u[0], 0x01);
  EXPECT_EQ(u[5], 0xab);
  EXPECT_EQ(UuidToString(u).substr(0, 13), "01234567-89ab");
}

TEST(UuidV7Test, ToStringIsCanonical) {
  Uuid u{};
  for (int i = 0; i < 16; ++i) u[i] = static_cast<uint8_t>(i * 17);
  EXPECT_EQ(UuidToString(u), "00112233-4455-6677-8899-aabbccddeeff");
  EXPECT_EQ(UuidToString(Uuid{}), "00000000-0000-0000-0000-000000000000");
}

TEST(UuidV7Test, IsUuidV7AcceptsWellFormed) {
  // Example from RFC 9562 appendix A.6: 017F22E2-79B0-7CC3-98C4-DC0C0C07398F.
  const std::string rfc_example("\x01\x7f\x22\xe2\x79\xb0\x7c\xc3\x98\xc4\xdc\x0c\x0c\x07\x39\x8f",
                                16);
  EXPECT_TRUE(IsUuidV7(rfc_example));
  EXPECT_EQ(UuidV7Millis(rfc_example), 0x017F22E279B0ULL);
  // Variant 0b10 with the remaining variant-octet bits all set.
  std::string v = rfc_example;
  v[8] = static_cast<char>(0xbf);
  EXPECT_TRUE(IsUuidV7(v));
}

TEST(UuidV7Test, IsUuidV7RejectsBadInput) {
  const std::string good("\x01\x7f\x22\xe2\x79\xb0\x7c\xc3\x98\xc4\xdc\x0c\x0c\x07\x39\x8f", 16);
  ASSERT_TRUE(IsUuidV7(good));
  EXPECT_FALSE(IsUuidV7(""));
  EXPECT_FALSE(IsUuidV7(good.substr(0, 15)));
  EXPECT_FALSE(IsUuidV7(good + "x"));
  EXPECT_FALSE(IsUuidV7(std::string(16, '\0')));    // nil UUID
  EXPECT_FALSE(IsUuidV7(std::string(16, '\xff')));  // max UUID
  for (int version = 0; version < 16; ++version) {
    if (version == 7) continue;
    std::string b = good;
    b[6] = static_cast<char>((version << 4) | 0x0c);
    EXPECT_FALSE(IsUuidV7(b)) << "version " << version;
  }
  for (int variant : {0b00, 0b01, 0b11}) {
    std::string b = good;
    b[8] = static_cast<char>((variant << 6) | 0x18);
    EXPECT_FALSE(IsUuidV7(b)) << "variant " << variant;
  }
  // A UUIDv4 (random) is not a v7.
  const std::string v4("\x9f\x3b\x1c\x4e\x0a\x2d\x4f\x6b\xa1\x11\x22\x33\x44\x55\x66\x77", 16);
  EXPECT_FALSE(IsUuidV7(v4));
}

TEST(UuidV7Test, StrictlyIncreasingWithinOneMillisecond) {
  ManualClock clock(kT0);
  UuidV7Generator gen(clock, 3);
  Uuid prev = gen.Next();
  for (int i = 0; i < 2000; ++i) {
    const Uuid u = gen.Next();
    ASSERT_LT(Bytes(prev), Bytes(u)) << i;
    ASSERT_LT(prev, u);
    prev = u;
  }
}

TEST(UuidV7Test, StrictlyIncreasingAcrossBackwardsClockSteps) {
  ManualClock clock(kT0);
  UuidV7Generator gen(clock, 4);
  Uuid prev = gen.Next();
  const int64_t steps[] = {-1, -1000, +3, -3'600'000, +1, +1, -kT0 - 5, +7'200'000, -2};
  for (int64_t step : steps) {
    clock.SetWallMillis(clock.WallMillis() + step);
    for (int i = 0; i < 50; ++i) {
      const Uuid u = gen.Next();
      ASSERT_LT(Bytes(prev), Bytes(u)) << "step " << step;
      ASSERT_TRUE(IsUuidV7(UuidBytes(u)));
      prev = u;
    }
  }
  // After backward steps the timestamp stays at the last millisecond used.
  ManualClock c2(kT0);
  UuidV7Generator g2(c2, 5);
  g2.Next();
  c2.SetWallMillis(kT0 - 10'000);
  EXPECT_EQ(UuidV7Millis(UuidBytes(g2.Next())), static_cast<uint64_t>(kT0));
}

TEST(UuidV7Test, CounterOverflowBorrowsTheNextMillisecond) {
  ManualClock clock(kT0);
  UuidV7Generator gen(clock, 6);
  // The 12-bit counter starts below 0x800, so at most 4096 ids fit one millisecond.
  std::vector<Uuid> ids;
  for (int i = 0; i < 4097 + 4096; ++i) ids.push_back(gen.Next());
  for (size_t i = 1; i < ids.size(); ++i) ASSERT_LT(ids[i - 1], ids[i]) << i;
  const uint64_t first_ms = UuidV7Millis(UuidBytes(ids.front()));
  const uint64_t last_ms = UuidV7Millis(UuidBytes(ids.back()));
  EXPECT_EQ(first_ms, static_cast<uint64_t>(kT0));
  // At least 2048 ids fit one millisecond (counter starts <= 0x7ff), at most 4096.
  EXPECT_GE(last_ms, static_cast<uint64_t>(kT0) + 2);
  EXPECT_LE(last_ms, static_cast<uint64_t>(kT0) + 4);
  size_t in_first_ms = 0;
  for (const Uuid& u : ids) in_first_ms += UuidV7Millis(UuidBytes(u)) == first_ms;
  EXPECT_GE(in_first_ms, 2049u);
  EXPECT_LE(in_first_ms, 4096u);
  // Within a millisecond the counter (rand_a) increases by exactly one.
  for (size_t i = 1; i < in_first_ms; ++i) {
    const uint32_t a = ((ids[i - 1][6] & 0x0f) << 8) | ids[i - 1][7];
    const uint32_t b = ((ids[i][6] & 0x0f) << 8) | ids[i][7];
    ASSERT_EQ(b, a + 1);
  }
  // When the wall clock catches up with the borrowed millisecond, order still holds.
  clock.SetWallMillis(static_cast<int64_t>(last_ms));
  const Uuid after = gen.Next();
  EXPECT_LT(ids.back(), after);
}

TEST(UuidV7Test, SameSeedAndClockGiveSameSequence) {
  ManualClock c1(kT0), c2(kT0);
  UuidV7Generator g1(c1, 77), g2(c2, 77), g3(c2, 78);
  bool differs_from_other_seed = false;
  for (int i = 0; i < 100; ++i) {
    const Uuid a = g1.Next();
    const Uuid b = g2.Next();
    const Uuid c = g3.Next();
    ASSERT_EQ(a, b);
    differs_from_other_seed = differs_from_other_seed || a != c;
  }
  EXPECT_TRUE(differs_from_other_seed);
}

}  // namespace
}  // namespace iris
