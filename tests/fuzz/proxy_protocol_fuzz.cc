// libFuzzer target for the PROXY protocol v2 header parser (net/proxy_protocol.h) as a
// connection from a load balancer uses it; CMake lines in tests/fuzz/CMakeLists.txt.
//
// Byte 0 of the input picks how the rest is cut into pieces (the socket's reads); the rest
// is what arrives. Oracles: no crash or sanitizer report; every split gives the same result
// (state, address, error) as the whole input at once; the parser never takes a byte past
// the header (what it took equals 16 + the announced length when it is done), never takes
// more than wanted(), and never more than the bound.
// Seeds: tests/fuzz/corpus/proxy_protocol/.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "net/proxy_protocol.h"

using iris::net::ProxyHeaderParser;

namespace {

// Feeds `in` in pieces of 1 + (seed-driven) bytes, each at most wanted(); returns the bytes
// taken.
size_t FeedInPieces(ProxyHeaderParser& p, std::span<const uint8_t> in, uint8_t seed) {
  size_t at = 0;
  uint32_t x = seed | 1u;
  while (at < in.size() && p.state() == ProxyHeaderParser::State::kNeedMore) {
    x = x * 1103515245u + 12345u;
    const size_t want = p.wanted();
    if (want == 0) std::abort();
    const size_t n = std::min({in.size() - at, want, size_t{1} + (x >> 16) % 17});
    const size_t took = p.Feed(in.subspan(at, n));
    if (took > n) std::abort();
    at += took;
    if (took < n && p.state() == ProxyHeaderParser::State::kNeedMore) std::abort();
  }
  return at;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t seed = data[0];
  const std::span<const uint8_t> in(data + 1, size - 1);

  ProxyHeaderParser whole;
  const size_t whole_took = whole.Feed(in);
  ProxyHeaderParser pieces;
  const size_t pieces_took = FeedInPieces(pieces, in, seed);

  if (whole.state() != pieces.state()) std::abort();
  if (whole.state() == ProxyHeaderParser::State::kDone) {
    if (whole_took != pieces_took) std::abort();
    const size_t announced = static_cast<size_t>(in[14]) << 8 | in[15];
    if (whole_took != ProxyHeaderParser::kFixedBytes + announced) std::abort();
    if (announced > ProxyHeaderParser::kMaxVariableBytes) std::abort();
    if (whole.header().local != pieces.header().local ||
        whole.header().source_ip != pieces.header().source_ip ||
        whole.header().source_port != pieces.header().source_port) {
      std::abort();
    }
    if (!whole.header().local && whole.header().source_ip.empty()) std::abort();
  } else if (whole.state() == ProxyHeaderParser::State::kError) {
    if (whole.error() != pieces.error() || whole.error().empty()) std::abort();
  } else if (whole_took != in.size()) {
    std::abort();  // still waiting, so everything given was taken
  }
  return 0;
}
