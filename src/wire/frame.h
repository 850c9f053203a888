#pragma once
// Frame codec (PROTOCOL.md section 2): opcode (1 byte) · length (2 bytes, big-endian) ·
// payload (length bytes).
//
// FrameDecoder is incremental over a byte stream: Consume() takes whatever a read returned
// (several frames, or a piece of one), hands every complete frame to a callback without
// copying it, and keeps only the unfinished tail. Because the length field is 16 bits, the
// tail is never more than kMaxFrameBytes - 1 bytes: memory is bounded by construction, a
// hostile length can only make the decoder wait (the session's timeouts end that wait).
// When nothing is pending the buffer is released (idle connections hold no decode memory).
//
// Not thread-safe: one decoder per connection, used by the connection's loop thread.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace iris::wire {

constexpr size_t kFrameHeaderBytes = 3;
constexpr size_t kMaxPayloadBytes = 65535;
constexpr size_t kMaxFrameBytes = kFrameHeaderBytes + kMaxPayloadBytes;

struct Frame {
  uint8_t opcode;
  std::string_view payload;  // valid only during the callback
};

class FrameDecoder {
 public:
  // Calls on_frame(const Frame&) for every complete frame in the stream so far, in order.
  // on_frame returns true to continue, false to stop: the rest of the input is then
  // discarded and the decoder must not be used again (the connection is closing).
  // Returns the number of frames delivered.
  template <typename F>
  size_t Consume(std::span<const uint8_t> in, F&& on_frame);

  // Bytes of an unfinished frame held between calls (always < kMaxFrameBytes).
  size_t pending_bytes() const { return tail_.size(); }

 private:
  std::string tail_;
};

// Appends one frame to *out. Fails with TOO_LARGE when the payload exceeds 65,535 bytes.
Status AppendFrame(std::string* out, uint8_t opcode, std::string_view payload);
// Serialises `msg` and appends it as one frame.
Status AppendMessageFrame(std::string* out, uint8_t opcode, const google::protobuf::MessageLite& msg);

// ---- implementation ----

template <typename F>
size_t FrameDecoder::Consume(std::span<const uint8_t> in, F&& on_frame) {
  size_t delivered = 0;
  // 1. Finish a frame begun in an earlier call, copying only what it still needs.
  if (!tail_.empty()) {
    size_t need;
    if (tail_.size() < kFrameHeaderBytes) {
      size_t take = std::min(kFrameHeaderBytes - tail_.size(), in.size());
      tail_.append(reinterpret_cast<const char*>(in.data()), take);
      in = in.subspan(take);
      if (tail_.size() < kFrameHeaderBytes) return 0;
    }
    const auto* h = reinterpret_cast<const uint8_t*>(tail_.data());
    need = kFrameHeaderBytes + ((static_cast<size_t>(h[1]) << 8) | h[2]) - tail_.size();
    size_t take = std::min(need, in.size());
    tail_.append(reinterpret_cast<const char*>(in.data()), take);
    in = in.subspan(take);
    if (take < need) return 0;
    const Frame f{static_cast<uint8_t>(tail_[0]),
                  std::string_view(tail_).substr(kFrameHeaderBytes)};
    ++delivered;
    const bool go_on = on_frame(f);
    std::string().swap(tail_);  // release the memory
    if (!go_on) return delivered;
  }
  // 2. Frames entirely inside this input: no copy.
  while (in.size() >= kFrameHeaderBytes) {
    const size_t len = (static_cast<size_t>(in[1]) << 8) | in[2];
    if (in.size() < kFrameHeaderBytes + len) break;
    const Frame f{in[0], std::string_view(reinterpret_cast<const char*>(in.data()) +
                                              kFrameHeaderBytes, len)};
    in = in.subspan(kFrameHeaderBytes + len);
    ++delivered;
    if (!on_frame(f)) return delivered;
  }
  // 3. Keep the unfinished rest.
  if (!in.empty()) tail_.assign(reinterpret_cast<const char*>(in.data()), in.size());
  return delivered;
}

}  // namespace iris::wire
