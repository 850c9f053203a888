// libFuzzer target for the client-facing wire path: frame decode (FrameDecoder) ->
// payload parse + validation (DecodeClientFrame) -> PeekRequestId, on arbitrary bytes.
//
// The input is a byte stream as a client would send it. It is decoded three ways: in one
// read, in chunks whose sizes derive from the input (so a crash reproduces from the file
// alone), and with the callback stopping after some frame. Beyond "no crash, no sanitizer
// report, no unbounded memory", it checks:
//   - chunking never changes which frames are delivered; every byte is in a frame or pending;
//   - a decode error carries the protocol's code for the opcode class (UNKNOWN_OPCODE for
//     unknown opcodes, BAD_REQUEST for server-only ones, BAD_REQUEST / TOO_LARGE otherwise);
//   - for an accepted frame, PeekRequestId(opcode, payload) equals the parsed request id, and
//     re-encoding the parsed message decodes to an accepted, equal message.
//
// Build: cmake -DIRIS_FUZZ=ON with clang. Run: iris_wire_fuzz <scratch_dir> tests/fuzz/corpus/wire

#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "wire/frame.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace {

using iris::Result;
using iris::StatusCode;
using iris::wire::ClientMessage;

// Aborts with a message: libFuzzer records the input as a crash.
#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

struct Decoded {
  uint8_t opcode;
  std::string payload;
  bool operator==(const Decoded&) const = default;
};

struct Run {
  std::vector<Decoded> frames;
  size_t pending = 0;
  size_t returned = 0;  // sum of Consume()'s return values
};

// A small deterministic generator seeded from the input (splitmix64).
uint64_t Mix(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Decodes `data` with reads of the sizes chosen by `next_chunk` (0 = whole rest). Stops
// delivering after `stop_after` frames when non-zero (the callback returns false).
template <typename NextChunk>
Run Decode(const uint8_t* data, size_t size, NextChunk next_chunk, size_t stop_after = 0) {
  iris::wire::FrameDecoder dec;
  Run run;
  size_t at = 0;
  bool stopped = false;
  do {
    size_t n = next_chunk();
    if (n == 0 || n > size - at) n = size - at;
    // An exact-size copy so ASan sees any read past the chunk.
    std::unique_ptr<uint8_t[]> chunk(new uint8_t[n]);
    if (n > 0) std::memcpy(chunk.get(), data + at, n);
    at += n;
    run.returned +=
        dec.Consume(std::span<const uint8_t>(chunk.get(), n), [&](const iris::wire::Frame& f) {
          run.frames.push_back({f.opcode, std::string(f.payload)});
          return stop_after == 0 || run.frames.size() < stop_after;
        });
    if (stop_after != 0 && run.frames.size() >= stop_after) {
      stopped = true;
      break;  // the decoder must not be used again
    }
    FUZZ_CHECK(dec.pending_bytes() < iris::wire::kMaxFrameBytes);
  } while (at < size);
  run.pending = stopped ? 0 : dec.pending_bytes();
  return run;
}

bool SameMessage(const ClientMessage& a, const ClientMessage& b) {
  if (a.index() != b.index()) return false;
  return std::visit(
      [&b](const auto& ma) {
        using M = std::decay_t<decltype(ma)>;
        return google::protobuf::util::MessageDifferencer::Equals(ma, std::get<M>(b));
      },
      a);
}

void CheckFrame(const Decoded& f) {
  // Exact-size copy of the payload.
  std::unique_ptr<char[]> buf(new char[f.payload.size()]);
  if (!f.payload.empty()) std::memcpy(buf.get(), f.payload.data(), f.payload.size());
  const std::string_view payload(buf.get(), f.payload.size());

  (void)iris::wire::PeekRequestId(payload);
  const uint64_t peeked = iris::wire::PeekRequestId(f.opcode, payload);
  Result<ClientMessage> r = iris::wire::DecodeClientFrame(f.opcode, payload);
  const iris::wire::Direction dir = iris::wire::OpcodeDirection(f.opcode);
  const bool client_may_send = iris::wire::ClientMaySend(f.opcode);
  if (!r.ok()) {
    const StatusCode code = r.status().code();
    if (dir == iris::wire::Direction::kUnknown) {
      FUZZ_CHECK(code == StatusCode::kUnknownOpcode);
    } else if (!client_may_send) {
      FUZZ_CHECK(code == StatusCode::kBadRequest);
    } else {
      FUZZ_CHECK(code == StatusCode::kBadRequest || code == StatusCode::kTooLarge);
    }
    return;
  }
  FUZZ_CHECK(client_may_send);
  FUZZ_CHECK(peeked == iris::wire::RequestIdOf(*r));

  // Re-encode the parsed message: it must decode to an accepted, equal message.
  std::string again;
  const iris::Status s = std::visit(
      [&](const auto& m) { return iris::wire::AppendMessageFrame(&again, f.opcode, m); }, *r);
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == StatusCode::kTooLarge);
    return;
  }
  Result<ClientMessage> r2 = iris::wire::DecodeClientFrame(
      f.opcode, std::string_view(again).substr(iris::wire::kFrameHeaderBytes));
  FUZZ_CHECK(r2.ok());
  FUZZ_CHECK(SameMessage(*r, *r2));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // proto3 parsing logs every invalid UTF-8 string; keep the fuzzer's output readable.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. One read.
  const Run whole = Decode(data, size, [] { return size_t{0}; });
  size_t accounted = whole.pending;
  for (const Decoded& f : whole.frames)
    accounted += iris::wire::kFrameHeaderBytes + f.payload.size();
  FUZZ_CHECK(accounted == size);
  FUZZ_CHECK(whole.returned == whole.frames.size());

  // 2. Chunks of input-derived sizes: mostly tiny (splitting headers), sometimes large.
  uint64_t seed = size;
  for (size_t i = 0; i < size && i < 64; ++i) seed = seed * 131 + data[i];
  const Run pieces = Decode(data, size, [&seed] {
    const uint64_t r = Mix(&seed);
    return static_cast<size_t>(r % 4 == 0 ? 1 + (r >> 8) % 70'000 : 1 + (r >> 8) % 7);
  });
  FUZZ_CHECK(pieces.frames == whole.frames);
  FUZZ_CHECK(pieces.pending == whole.pending);

  // 3. The callback stops after some frame: exactly that many are delivered.
  if (!whole.frames.empty()) {
    const size_t stop_after = 1 + Mix(&seed) % whole.frames.size();
    uint64_t seed2 = seed;
    const Run stopped = Decode(
        data, size, [&seed2] { return static_cast<size_t>(1 + Mix(&seed2) % 300); }, stop_after);
    FUZZ_CHECK(stopped.frames.size() == stop_after);
    FUZZ_CHECK(stopped.returned == stop_after);
    for (size_t i = 0; i < stop_after; ++i) FUZZ_CHECK(stopped.frames[i] == whole.frames[i]);
  }

  // 4. Every frame through parse + validation + PeekRequestId.
  for (const Decoded& f : whole.frames) CheckFrame(f);
  return 0;
}
