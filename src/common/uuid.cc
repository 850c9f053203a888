#include "common/uuid.h"

#include <algorithm>

namespace iris {

bool IsUuidV7(std::string_view b) {
  if (b.size() != 16) return false;
  const auto version = static_cast<uint8_t>(b[6]) >> 4;
  const auto variant = static_cast<uint8_t>(b[8]) >> 6;
  return version == 7 && variant == 0b10;
}

uint64_t UuidV7Millis(std::string_view b) {
  uint64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = (ms << 8) | static_cast<uint8_t>(b[i]);
  return ms;
}

std::string UuidToString(const Uuid& u) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[u[i] >> 4]);
    s.push_back(kHex[u[i] & 0xf]);
  }
  return s;
}

UuidV7Generator::UuidV7Generator(const Clock& clock, uint64_t seed) : clock_(clock), rng_(seed) {}

Uuid UuidV7Generator::Next() {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t wall = static_cast<uint64_t>(std::max<int64_t>(0, clock_.WallMillis()));
  if (wall > last_ms_) {
    last_ms_ = wall;
    // Start the counter in the lower half so a burst has room before borrowing.
    counter_ = static_cast<uint32_t>(rng_() & 0x7ff);
  } else if (++counter_ > 0xfff) {
    ++last_ms_;  // borrow the next millisecond
    counter_ = static_cast<uint32_t>(rng_() & 0x7ff);
  }
  const uint64_t rand_b = rng_();
  Uuid u{};
  for (int i = 0; i < 6; ++i) u[i] = static_cast<uint8_t>(last_ms_ >> (8 * (5 - i)));
  u[6] = static_cast<uint8_t>(0x70 | ((counter_ >> 8) & 0x0f));
  u[7] = static_cast<uint8_t>(counter_ & 0xff);
  u[8] = static_cast<uint8_t>(0x80 | ((rand_b >> 56) & 0x3f));
  for (int i = 9; i < 16; ++i) u[i] = static_cast<uint8_t>(rand_b >> (8 * (15 - i)));
  return u;
}

}  // namespace iris
