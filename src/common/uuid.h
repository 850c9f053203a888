#pragma once
// UUIDv7 (RFC 9562 section 5.7): 48-bit Unix milliseconds, version 7, 12 bits rand_a,
// variant 0b10, 62 bits rand_b. This generator uses rand_a as a counter (RFC 9562 section
// 6.2, method 1) so ids are strictly increasing within one generator, also within one
// millisecond and when the wall clock steps backwards; on counter overflow it borrows the
// next millisecond.
//
// Thread-safety: UuidV7Generator::Next is safe to call concurrently (internal mutex).

#include <array>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <string_view>

#include "common/clock.h"

namespace iris {

using Uuid = std::array<uint8_t, 16>;

// True when `bytes` is exactly 16 bytes with version nibble 7 and variant bits 10.
bool IsUuidV7(std::string_view bytes);
// The Unix milliseconds of a UUIDv7 (first 48 bits). Precondition: 16 bytes.
uint64_t UuidV7Millis(std::string_view bytes);
// Canonical 8-4-4-4-12 lower-case hex text.
std::string UuidToString(const Uuid& u);
inline std::string_view UuidBytes(const Uuid& u) {
  return {reinterpret_cast<const char*>(u.data()), u.size()};
}

class UuidV7Generator {
 public:
  // `clock` must outlive the generator; `seed` makes the random bits reproducible in tests.
  explicit UuidV7Generator(const Clock& clock, uint64_t seed = std::random_device{}());

  Uuid Next();

 private:
  const Clock& clock_;
  std::mutex mu_;
  std::mt19937_64 rng_;
  uint64_t last_ms_ = 0;
  uint32_t counter_ = 0;  // 12 bits
};

}  // namespace iris
