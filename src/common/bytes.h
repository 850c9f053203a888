#pragma once
// Fixed-width big-endian encoding for everything serialised (keys, frame headers).
// Big-endian keys make byte order equal numeric order, so RocksDB iterates in id order.

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace iris {

inline void PutBigEndian64(uint64_t v, char* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}

inline void AppendBigEndian64(std::string* out, uint64_t v) {
  char buf[8];
  PutBigEndian64(v, buf);
  out->append(buf, 8);
}

inline void AppendBigEndian16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v & 0xff));
}

// Precondition: at least 8 bytes readable at p.
inline uint64_t GetBigEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

// Precondition: at least 2 bytes readable at p.
inline uint16_t GetBigEndian16(const uint8_t* p) {
  return static_cast<uint16_t>((static_cast<uint16_t>(p[0]) << 8) | p[1]);
}

// Lower-case hex of arbitrary bytes.
std::string HexEncode(std::string_view bytes);

}  // namespace iris
