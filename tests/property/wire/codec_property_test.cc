// Property tests of the wire codec: AppendMessageFrame -> FrameDecoder (random chunking)
// -> DecodeClientFrame round trips for every client message type; every truncation and
// random corruption of a frame stream yields an error or a wait for more bytes, never a
// crash (run under ASan/UBSan in CI). Seeded through RC_PARAMS (see CMakeLists.txt).

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "property/wire/message_gen.h"
#include "unit/wire/protocol_table.h"
#include "wire/frame.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::wire {
namespace {

struct Decoded {
  uint8_t opcode;
  std::string payload;
  friend bool operator==(const Decoded&, const Decoded&) = default;
};

struct DecodeRun {
  std::vector<Decoded> frames;
  size_t pending = 0;
};

// Feeds `stream` to one decoder in chunks of the given sizes (cycled; a 0 is an empty
// read), checking the decoder's bookkeeping after every read.
DecodeRun Feed(std::string_view stream, const std::vector<size_t>& chunk_sizes) {
  FrameDecoder dec;
  DecodeRun run;
  size_t at = 0;
  size_t i = 0;
  do {
    size_t n = stream.size() - at;
    if (!chunk_sizes.empty() && i < 4 * stream.size() + 8) {  // then finish in one read
      n = std::min(n, chunk_sizes[i % chunk_sizes.size()]);
    }
    ++i;
    // An exact-size heap copy of the chunk, so ASan flags any read past its end.
    std::unique_ptr<uint8_t[]> chunk(new uint8_t[n]);
    if (n > 0) std::memcpy(chunk.get(), stream.data() + at, n);
    at += n;
    const size_t before = run.frames.size();
    const size_t delivered =
        dec.Consume(std::span<const uint8_t>(chunk.get(), n), [&](const Frame& f) {
          run.frames.push_back({f.opcode, std::string(f.payload)});
          return true;
        });
    RC_ASSERT(delivered == run.frames.size() - before);
    RC_ASSERT(dec.pending_bytes() < kMaxFrameBytes);
  } while (at < stream.size());
  run.pending = dec.pending_bytes();
  return run;
}

rc::Gen<std::vector<size_t>> ChunkSizes() {
  return rc::gen::container<std::vector<size_t>>(rc::gen::weightedOneOf<size_t>({
      {1, rc::gen::just<size_t>(0)},
      {6, rc::gen::inRange<size_t>(1, 8)},
      {3, rc::gen::inRange<size_t>(1, 300)},
      {1, rc::gen::inRange<size_t>(1, 70'000)},
  }));
}

std::string EncodeAll(const std::vector<gen::Encoded>& msgs) {
  std::string out;
  for (const auto& e : msgs)
    RC_ASSERT(AppendMessageFrame(&out, e.opcode, gen::AsProto(e.message)).ok());
  return out;
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

// Decodes a payload held in an exact-size heap buffer (over-reads are caught by ASan).
Result<ClientMessage> DecodeExact(uint8_t opcode, std::string_view payload,
                                  uint64_t* peeked = nullptr) {
  std::unique_ptr<char[]> buf(new char[payload.size()]);
  if (!payload.empty()) std::memcpy(buf.get(), payload.data(), payload.size());
  const std::string_view exact(buf.get(), payload.size());
  if (peeked != nullptr) *peeked = PeekRequestId(opcode, exact);
  PeekRequestId(exact);  // the opcode-free form must be safe on anything too
  return DecodeClientFrame(opcode, exact);
}

bool IsClientOpcode(uint8_t opcode) {
  const ProtocolOpcode* op = FindProtocolOpcode(opcode);
  return op != nullptr && op->client;
}

uint64_t RequestIdOfEncoded(const gen::Encoded& e) { return RequestIdOf(e.message); }

// Round trip: valid messages of every client type, encoded into one stream, fed to the
// decoder in random chunk sizes, decode to equal messages in the same order.
RC_GTEST_PROP(CodecProperty, RoundTripThroughChunkedDecoder, ()) {
  const auto count = *rc::gen::inRange<size_t>(1, 13);
  const auto msgs = *rc::gen::container<std::vector<gen::Encoded>>(count, gen::GenValidMessage());
  const auto chunks = *ChunkSizes();
  const std::string stream = EncodeAll(msgs);
  const DecodeRun run = Feed(stream, chunks);
  RC_ASSERT(run.pending == 0u);
  RC_ASSERT(run.frames.size() == msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    RC_ASSERT(run.frames[i].opcode == msgs[i].opcode);
    RC_ASSERT(run.frames[i].payload == gen::AsProto(msgs[i].message).SerializeAsString());
    uint64_t peeked = 0;
    Result<ClientMessage> r = DecodeExact(run.frames[i].opcode, run.frames[i].payload, &peeked);
    RC_ASSERT(r.ok());
    RC_ASSERT(SameMessage(*r, msgs[i].message));
    RC_ASSERT(RequestIdOf(*r) == RequestIdOfEncoded(msgs[i]));
    RC_ASSERT(peeked == RequestIdOf(*r));
  }
}

// Messages with values across and beyond the limits: decoding accepts them unchanged or
// refuses them with BAD_REQUEST or TOO_LARGE, never another code; the request id can be
// peeked either way.
RC_GTEST_PROP(CodecProperty, ArbitraryMessagesDecodeOrFailWithAProtocolCode, ()) {
  const auto msg = *gen::GenArbitraryMessage();
  const std::string payload = gen::AsProto(msg.message).SerializeAsString();
  RC_ASSERT(payload.size() <= kMaxPayloadBytes);
  uint64_t peeked = 0;
  Result<ClientMessage> r = DecodeExact(msg.opcode, payload, &peeked);
  RC_ASSERT(peeked == RequestIdOf(msg.message));
  if (r.ok()) {
    RC_ASSERT(SameMessage(*r, msg.message));
  } else {
    const StatusCode code = r.status().code();
    RC_ASSERT(code == StatusCode::kBadRequest || code == StatusCode::kTooLarge);
    RC_CLASSIFY(code == StatusCode::kBadRequest, "BAD_REQUEST");
    RC_CLASSIFY(code == StatusCode::kTooLarge, "TOO_LARGE");
  }
  RC_CLASSIFY(r.ok(), "accepted");
  RC_TAG(std::string(OpcodeName(msg.opcode)));
}

// Every truncation of a valid stream: the decoder delivers exactly the complete frames
// and holds the rest, waiting for more bytes.
RC_GTEST_PROP(CodecProperty, EveryTruncationDeliversCompleteFramesAndWaits, ()) {
  const auto count = *rc::gen::inRange<size_t>(1, 7);
  const auto msgs =
      *rc::gen::container<std::vector<gen::Encoded>>(count, gen::GenValidMessage(/*small=*/true));
  const std::string stream = EncodeAll(msgs);
  std::vector<size_t> ends;  // end offset of each frame
  {
    size_t at = 0;
    for (const auto& m : msgs) {
      at += kFrameHeaderBytes + gen::AsProto(m.message).ByteSizeLong();
      ends.push_back(at);
    }
    RC_ASSERT(at == stream.size());
  }
  const auto split_seed = *rc::gen::arbitrary<uint32_t>();
  for (size_t len = 0; len <= stream.size(); ++len) {
    const std::string_view prefix = std::string_view(stream).substr(0, len);
    const size_t split = len == 0 ? 0 : (split_seed + len * 7919) % (len + 1);
    const DecodeRun run = Feed(prefix, {split, len});
    const size_t complete =
        static_cast<size_t>(std::upper_bound(ends.begin(), ends.end(), len) - ends.begin());
    RC_ASSERT(run.frames.size() == complete);
    RC_ASSERT(run.pending == len - (complete == 0 ? 0 : ends[complete - 1]));
  }
  // Every truncation of every payload: accepted (a shorter valid message) or BAD_REQUEST.
  for (const auto& m : msgs) {
    const std::string payload = gen::AsProto(m.message).SerializeAsString();
    for (size_t k = 0; k < payload.size(); ++k) {
      uint64_t peeked = 0;
      Result<ClientMessage> r =
          DecodeExact(m.opcode, std::string_view(payload).substr(0, k), &peeked);
      if (r.ok()) {
        RC_ASSERT(peeked == RequestIdOf(*r));
      } else {
        RC_ASSERT(r.status().code() == StatusCode::kBadRequest);
      }
    }
  }
}

struct Mutation {
  int kind;
  size_t pos;
  size_t len;
  uint8_t byte;
};

std::string Mutate(std::string s, const Mutation& m) {
  const size_t pos = s.empty() ? 0 : m.pos % (s.size() + 1);
  switch (m.kind) {
    case 0:  // flip bits of one byte
      if (!s.empty()) s[pos % s.size()] = static_cast<char>(s[pos % s.size()] ^ (m.byte | 1));
      break;
    case 1:  // overwrite one byte
      if (!s.empty()) s[pos % s.size()] = static_cast<char>(m.byte);
      break;
    case 2:  // insert bytes
      s.insert(pos, std::string(1 + m.len % 4, static_cast<char>(m.byte)));
      break;
    case 3:  // delete a range
      s.erase(pos, 1 + m.len % 16);
      break;
    case 4:  // duplicate a range
      s.insert(pos, s.substr(pos, 1 + m.len % 32));
      break;
    case 5:  // a hostile length field: make some position a frame-like header
      s.insert(pos, std::string{static_cast<char>(m.byte), '\xff', '\xff'});
      break;
    default:  // truncate
      s.resize(pos);
      break;
  }
  return s;
}

// Random corruption of a frame stream (bit flips, overwrites, insertions, deletions,
// duplicated ranges, hostile lengths, truncation): never a crash; chunking does not change
// what is decoded; every byte is either in a delivered frame or held as pending; every
// frame decodes or fails with the protocol's code for its opcode.
RC_GTEST_PROP(CodecProperty, RandomCorruptionYieldsErrorsOrWaitsNeverCrashes, ()) {
  const auto count = *rc::gen::inRange<size_t>(1, 9);
  const auto msgs = *rc::gen::container<std::vector<gen::Encoded>>(
      count, gen::GenArbitraryMessage(/*small=*/true));
  const auto mutations = *rc::gen::container<std::vector<Mutation>>(
      rc::gen::construct<Mutation>(rc::gen::inRange(0, 7), rc::gen::arbitrary<size_t>(),
                                   rc::gen::inRange<size_t>(0, 64), rc::gen::arbitrary<uint8_t>()));
  RC_PRE(!mutations.empty());
  std::string stream = EncodeAll(msgs);
  for (const Mutation& m : mutations) stream = Mutate(std::move(stream), m);
  const auto chunks = *ChunkSizes();

  const DecodeRun whole = Feed(stream, {});
  const DecodeRun pieces = Feed(stream, chunks);
  RC_ASSERT(whole.frames == pieces.frames);
  RC_ASSERT(whole.pending == pieces.pending);
  size_t accounted = whole.pending;
  for (const Decoded& f : whole.frames) accounted += kFrameHeaderBytes + f.payload.size();
  RC_ASSERT(accounted == stream.size());

  for (const Decoded& f : whole.frames) {
    uint64_t peeked = 0;
    Result<ClientMessage> r = DecodeExact(f.opcode, f.payload, &peeked);
    if (r.ok()) {
      RC_ASSERT(IsClientOpcode(f.opcode));
      RC_ASSERT(peeked == RequestIdOf(*r));
      continue;
    }
    const StatusCode code = r.status().code();
    if (FindProtocolOpcode(f.opcode) == nullptr) {
      RC_ASSERT(code == StatusCode::kUnknownOpcode);
    } else if (!IsClientOpcode(f.opcode)) {
      RC_ASSERT(code == StatusCode::kBadRequest);
    } else {
      RC_ASSERT(code == StatusCode::kBadRequest || code == StatusCode::kTooLarge);
    }
  }
}

// Arbitrary bytes (not derived from a valid stream) behave the same way.
RC_GTEST_PROP(CodecProperty, RandomBytesYieldErrorsOrWaits, ()) {
  const auto stream = *gen::Bytes(0, 4000);
  const auto chunks = *ChunkSizes();
  const DecodeRun whole = Feed(stream, {});
  const DecodeRun pieces = Feed(stream, chunks);
  RC_ASSERT(whole.frames == pieces.frames);
  RC_ASSERT(whole.pending == pieces.pending);
  size_t accounted = whole.pending;
  for (const Decoded& f : whole.frames) {
    accounted += kFrameHeaderBytes + f.payload.size();
    Result<ClientMessage> r = DecodeExact(f.opcode, f.payload);
    RC_ASSERT(r.ok() || r.status().code() != StatusCode::kInternal);
  }
  RC_ASSERT(accounted == stream.size());
}

}  // namespace
}  // namespace iris::wire
