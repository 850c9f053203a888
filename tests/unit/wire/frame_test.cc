// Frame codec (wire/frame.h, PROTOCOL.md section 2).

#include "wire/frame.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "iris/v1/client.pb.h"

namespace iris::wire {
namespace {

struct Got {
  uint8_t opcode;
  std::string payload;
  friend bool operator==(const Got&, const Got&) = default;
};

std::span<const uint8_t> Span(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Feeds `chunks` to one decoder and collects every frame.
std::vector<Got> DecodeChunks(const std::vector<std::string_view>& chunks,
                              size_t* pending = nullptr) {
  FrameDecoder dec;
  std::vector<Got> got;
  for (std::string_view c : chunks) {
    const size_t before = got.size();
    const size_t n = dec.Consume(Span(c), [&](const Frame& f) {
      got.push_back({f.opcode, std::string(f.payload)});
      return true;
    });
    EXPECT_EQ(n, got.size() - before);
    EXPECT_LT(dec.pending_bytes(), kMaxFrameBytes);
  }
  if (pending != nullptr) *pending = dec.pending_bytes();
  return got;
}

std::string Encode(const std::vector<Got>& frames) {
  std::string out;
  for (const Got& f : frames) EXPECT_TRUE(AppendFrame(&out, f.opcode, f.payload).ok());
  return out;
}

TEST(FrameCodecTest, HeaderIsOpcodeThenBigEndianLength) {
  std::string out;
  ASSERT_TRUE(AppendFrame(&out, 0x10, std::string(0x0102, 'x')).ok());
  ASSERT_EQ(out.size(), 3u + 0x0102);
  EXPECT_EQ(static_cast<uint8_t>(out[0]), 0x10);
  EXPECT_EQ(static_cast<uint8_t>(out[1]), 0x01);  // high byte first
  EXPECT_EQ(static_cast<uint8_t>(out[2]), 0x02);
  EXPECT_EQ(out.substr(3), std::string(0x0102, 'x'));
}

TEST(FrameCodecTest, AppendAppendsWithoutTouchingExistingBytes) {
  std::string out = "prefix";
  ASSERT_TRUE(AppendFrame(&out, 0x04, "ab").ok());
  EXPECT_EQ(out, std::string("prefix\x04\x00\x02"
                             "ab",
                             11));
}

TEST(FrameCodecTest, DecoderReadsBigEndianLength) {
  // Length bytes 0x00 0x05: five payload bytes. Read little-endian it would be 1280.
  const std::string stream("\x20\x00\x05hello\x21\x00\x00", 11);
  size_t pending = 0;
  const auto got = DecodeChunks({stream}, &pending);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], (Got{0x20, "hello"}));
  EXPECT_EQ(got[1], (Got{0x21, ""}));
  EXPECT_EQ(pending, 0u);
  // 0x05 0x00 means 1280 bytes: the decoder waits for them.
  const std::string wait("\x20\x05\x00hello", 8);
  EXPECT_TRUE(DecodeChunks({wait}, &pending).empty());
  EXPECT_EQ(pending, 8u);
}

TEST(FrameCodecTest, EmptyPayload) {
  std::string out;
  ASSERT_TRUE(AppendFrame(&out, 0x04, "").ok());
  EXPECT_EQ(out, std::string("\x04\x00\x00", 3));
  const auto got = DecodeChunks({out});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], (Got{0x04, ""}));
}

TEST(FrameCodecTest, MaxPayloadOf65535Bytes) {
  const std::string payload(kMaxPayloadBytes, '\xa5');
  std::string out;
  ASSERT_TRUE(AppendFrame(&out, 0x10, payload).ok());
  ASSERT_EQ(out.size(), kMaxFrameBytes);
  EXPECT_EQ(static_cast<uint8_t>(out[1]), 0xff);
  EXPECT_EQ(static_cast<uint8_t>(out[2]), 0xff);
  const auto got = DecodeChunks({out});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, payload);
  // Split one byte short: the decoder holds the largest possible tail.
  size_t pending = 0;
  const std::string_view all(out);
  EXPECT_TRUE(DecodeChunks({all.substr(0, all.size() - 1)}, &pending).empty());
  EXPECT_EQ(pending, kMaxFrameBytes - 1);
  const auto two = DecodeChunks({all.substr(0, all.size() - 1), all.substr(all.size() - 1)});
  ASSERT_EQ(two.size(), 1u);
  EXPECT_EQ(two[0].payload, payload);
}

TEST(FrameCodecTest, AppendFrameRejectsOversizedPayloadWithTooLarge) {
  std::string out = "keep";
  const Status s = AppendFrame(&out, 0x10, std::string(kMaxPayloadBytes + 1, 'x'));
  EXPECT_EQ(s.code(), StatusCode::kTooLarge);
  EXPECT_EQ(out, "keep");  // nothing appended
  EXPECT_EQ(AppendFrame(&out, 0x10, std::string(1 << 20, 'x')).code(), StatusCode::kTooLarge);
  EXPECT_EQ(out, "keep");
}

TEST(FrameCodecTest, AppendMessageFrameSerialisesTheMessage) {
  v1::Ping ping;
  ping.set_nonce(0x1234);
  std::string out;
  ASSERT_TRUE(AppendMessageFrame(&out, 0x04, ping).ok());
  const std::string body = ping.SerializeAsString();
  EXPECT_EQ(out, std::string("\x04\x00", 2) + static_cast<char>(body.size()) + body);
  // An empty message is an empty payload.
  std::string empty;
  ASSERT_TRUE(AppendMessageFrame(&empty, 0x04, v1::Ping()).ok());
  EXPECT_EQ(empty, std::string("\x04\x00\x00", 3));
}

TEST(FrameCodecTest, AppendMessageFrameRejectsOversizedMessageWithTooLarge) {
  v1::Send send;
  send.set_body(std::string(kMaxPayloadBytes, 'b'));  // plus tag and length: too large
  std::string out = "keep";
  EXPECT_EQ(AppendMessageFrame(&out, 0x10, send).code(), StatusCode::kTooLarge);
  EXPECT_EQ(out, "keep");
  // The largest message that fits exactly.
  send.set_body(std::string(kMaxPayloadBytes - 4, 'b'));  // tag 1 byte + varint 3 bytes
  ASSERT_EQ(send.ByteSizeLong(), kMaxPayloadBytes);
  out.clear();
  ASSERT_TRUE(AppendMessageFrame(&out, 0x10, send).ok());
  EXPECT_EQ(out.size(), kMaxFrameBytes);
}

TEST(FrameDecoderTest, SeveralFramesInOneRead) {
  const std::vector<Got> frames = {
      {0x01, "first"}, {0x04, ""}, {0x10, std::string(300, 'z')}, {0xee, "x"}};
  size_t pending = 99;
  EXPECT_EQ(DecodeChunks({Encode(frames)}, &pending), frames);
  EXPECT_EQ(pending, 0u);
}

TEST(FrameDecoderTest, ByteByByte) {
  const std::vector<Got> frames = {{0x01, "abc"}, {0x02, ""}, {0x03, std::string(257, 'q')}};
  const std::string stream = Encode(frames);
  std::vector<std::string_view> chunks;
  for (size_t i = 0; i < stream.size(); ++i)
    chunks.push_back(std::string_view(stream).substr(i, 1));
  EXPECT_EQ(DecodeChunks(chunks), frames);
}

// Split the stream at every byte boundary (and at every pair of boundaries): the decoder
// delivers the same frames in the same order.
TEST(FrameDecoderTest, FramesSplitAtEveryByteBoundary) {
  const std::vector<Got> frames = {{0x10, "hello"},
                                   {0x04, ""},
                                   {0x20, std::string(256, 'k')},
                                   {0x00, "\x00\x01\x02"},
                                   {0xff, std::string(1, '\xff')}};
  const std::string stream = Encode(frames);
  const std::string_view all(stream);
  for (size_t i = 0; i <= all.size(); ++i) {
    size_t pending = 1;
    ASSERT_EQ(DecodeChunks({all.substr(0, i), all.substr(i)}, &pending), frames) << "split " << i;
    ASSERT_EQ(pending, 0u);
  }
  for (size_t i = 0; i <= all.size(); ++i) {
    for (size_t j = i; j <= all.size(); j += 3) {
      ASSERT_EQ(DecodeChunks({all.substr(0, i), all.substr(i, j - i), all.substr(j)}), frames)
          << "splits " << i << " " << j;
    }
  }
}

TEST(FrameDecoderTest, PendingBytesTracksUnfinishedFrame) {
  const std::string stream = Encode({{0x10, "abcdef"}, {0x11, "gh"}});
  FrameDecoder dec;
  std::vector<Got> got;
  auto collect = [&](const Frame& f) {
    got.push_back({f.opcode, std::string(f.payload)});
    return true;
  };
  const std::string_view all(stream);
  EXPECT_EQ(dec.pending_bytes(), 0u);
  EXPECT_EQ(dec.Consume(Span(all.substr(0, 2)), collect), 0u);  // half a header
  EXPECT_EQ(dec.pending_bytes(), 2u);
  EXPECT_EQ(dec.Consume(Span(all.substr(2, 3)), collect), 0u);  // header + 2 payload bytes
  EXPECT_EQ(dec.pending_bytes(), 5u);
  EXPECT_EQ(dec.Consume(Span(all.substr(5, 6)), collect), 1u);  // rest + next frame's header
  EXPECT_EQ(dec.pending_bytes(), 2u);
  EXPECT_EQ(dec.Consume(Span(all.substr(11)), collect), 1u);
  EXPECT_EQ(dec.pending_bytes(), 0u);
  EXPECT_EQ(got, (std::vector<Got>{{0x10, "abcdef"}, {0x11, "gh"}}));
  // An empty read changes nothing.
  EXPECT_EQ(dec.Consume(Span(""), collect), 0u);
  EXPECT_EQ(dec.pending_bytes(), 0u);
}

TEST(FrameDecoderTest, HostileLengthOnlyMakesTheDecoderWait) {
  FrameDecoder dec;
  int frames = 0;
  auto count = [&](const Frame&) {
    ++frames;
    return true;
  };
  const std::string header("\x10\xff\xff", 3);
  EXPECT_EQ(dec.Consume(Span(header), count), 0u);
  const std::string junk(1000, '\x01');
  for (int i = 0; i < 65; ++i) EXPECT_EQ(dec.Consume(Span(junk), count), 0u);
  EXPECT_EQ(frames, 0);
  EXPECT_EQ(dec.pending_bytes(), 3u + 65'000u);
  EXPECT_LT(dec.pending_bytes(), kMaxFrameBytes);
  // The 65,535th payload byte completes it; the rest starts a new frame.
  const std::string rest(535 + 2, '\x02');
  EXPECT_EQ(dec.Consume(Span(rest), count), 1u);
  EXPECT_EQ(dec.pending_bytes(), 2u);
}

TEST(FrameDecoderTest, CallbackReturningFalseStopsDelivery) {
  const std::string stream = Encode({{0x01, "a"}, {0x02, "b"}, {0x03, "c"}});
  FrameDecoder dec;
  std::vector<uint8_t> seen;
  const size_t n = dec.Consume(Span(stream), [&](const Frame& f) {
    seen.push_back(f.opcode);
    return f.opcode != 0x02;
  });
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(seen, (std::vector<uint8_t>{0x01, 0x02}));
}

TEST(FrameDecoderTest, CallbackReturningFalseStopsAFrameFinishedFromTheTail) {
  const std::string stream = Encode({{0x01, "abc"}, {0x02, "d"}});
  FrameDecoder dec;
  int calls = 0;
  auto stop = [&](const Frame&) {
    ++calls;
    return false;
  };
  const std::string_view all(stream);
  EXPECT_EQ(dec.Consume(Span(all.substr(0, 4)), stop), 0u);
  EXPECT_EQ(dec.Consume(Span(all.substr(4)), stop), 1u);
  EXPECT_EQ(calls, 1);
}

TEST(FrameDecoderTest, PayloadViewsPointIntoInputOrTail) {
  // Frames wholly inside the input are not copied: the view points into the input.
  const std::string stream = Encode({{0x01, "abc"}});
  FrameDecoder dec;
  const char* seen = nullptr;
  dec.Consume(Span(stream), [&](const Frame& f) {
    seen = f.payload.data();
    return true;
  });
  EXPECT_EQ(seen, stream.data() + 3);
}

}  // namespace
}  // namespace iris::wire
