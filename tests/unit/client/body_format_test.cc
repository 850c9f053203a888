#include "client/e2ee/body_format.h"

#include <gtest/gtest.h>

namespace iris::client::e2ee {
namespace {

TEST(BodyFormatTest, RoundTripsBody) {
  SealedBody b{kBodyPreKeyMessage, std::string("\x33\x00\x01", 3)};
  const std::string wire = EncodeBody(b);
  EXPECT_EQ(wire[0], '\x01');
  EXPECT_EQ(wire[1], '\x03');
  auto back = DecodeBody(wire);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->type, kBodyPreKeyMessage);
  EXPECT_EQ(back->ciphertext, b.ciphertext);
}

TEST(BodyFormatTest, RejectsUnknownVersionTypeAndEmpty) {
  EXPECT_EQ(DecodeBody("").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeBody(std::string("\x01\x02", 2)).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeBody(std::string("\x02\x02xyz", 5)).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeBody(std::string("\x01\x07xyz", 5)).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeBody("plain text").status().code(), StatusCode::kBadRequest);
}

TEST(BodyFormatTest, PlaintextIsPaddedToBlocksAndRoundTrips) {
  for (size_t n : {0, 1, 58, 59, 60, 200}) {
    const std::string text(n, 'x');
    const std::string p = EncodePlaintext(text);
    EXPECT_EQ(p.size() % kPlaintextPadding, 0u) << n;
    EXPECT_GE(p.size(), n + 5);
    auto back = DecodePlaintext(p);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, text);
  }
}

TEST(BodyFormatTest, RejectsBadPlaintextFraming) {
  EXPECT_EQ(DecodePlaintext("").status().code(), StatusCode::kBadRequest);
  std::string p = EncodePlaintext("hello");
  p[0] = 9;
  EXPECT_EQ(DecodePlaintext(p).status().code(), StatusCode::kBadRequest);
  p = EncodePlaintext("hello");
  p[1] = '\x7f';  // length far beyond the frame
  EXPECT_EQ(DecodePlaintext(p).status().code(), StatusCode::kBadRequest);
}

TEST(BodyFormatTest, ContentFormat2RoundTripsAndFormat1IsStillRead) {
  Content c;
  c.type = kContentReceipt;
  c.data = std::string("\x08\x02", 2);
  c.sender_ms = 1'700'000'000'123;
  c.epoch = 0x0102030405060708ULL;
  c.counter = 77;
  const std::string p = EncodeContent(c);
  EXPECT_EQ(p.size() % kPlaintextPadding, 0u);
  EXPECT_EQ(static_cast<uint8_t>(p[0]), kPlaintextV2);
  auto back = DecodeContent(p);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->has_order);
  EXPECT_EQ(back->type, kContentReceipt);
  EXPECT_EQ(back->data, c.data);
  EXPECT_EQ(back->sender_ms, c.sender_ms);
  EXPECT_EQ(back->epoch, c.epoch);
  EXPECT_EQ(back->counter, 77u);
  auto old = DecodeContent(EncodePlaintext("from an older client"));
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old->has_order);
  EXPECT_EQ(old->type, kContentText);
  EXPECT_EQ(old->data, "from an older client");
  std::string bad = p;
  bad[1] = 9;  // unknown content type
  EXPECT_EQ(DecodeContent(bad).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeContent(p.substr(0, 10)).status().code(), StatusCode::kBadRequest);
}

// Merge of issue 18's two halves: the session-reset control message is content type 0x03 of
// plaintext format 2 (no collision with format 2's own first byte 0x02, nor with receipts).
TEST(BodyFormatTest, ControlIsContentType3OfFormat2) {
  EXPECT_NE(kContentControl, kContentText);
  EXPECT_NE(kContentControl, kContentReceipt);
  ControlContent ctl;
  ctl.message_ids = {7, 0x0102030405060708ULL};
  Content c;
  c.type = kContentControl;
  c.data = EncodeControl(ctl);
  const std::string p = EncodeContent(c);
  EXPECT_EQ(static_cast<uint8_t>(p[0]), kPlaintextV2);
  EXPECT_EQ(static_cast<uint8_t>(p[1]), 3);
  auto back = DecodeContent(p);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->type, kContentControl);
  auto ctl_back = DecodeControl(back->data);
  ASSERT_TRUE(ctl_back.ok()) << ctl_back.status().ToString();
  EXPECT_EQ(ctl_back->kind, kControlSessionReset);
  EXPECT_EQ(ctl_back->message_ids, ctl.message_ids);
  // A payload queued locally in the pre-merge layout (0x02 || kind || count || ids || zeros).
  std::string legacy = std::string(1, '\x02') + EncodeControl(ctl);
  legacy.resize(64, '\0');
  auto old = DecodeControl(legacy);
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(old->message_ids, ctl.message_ids);
  // Bad framing: unknown kind, ids beyond the data, too many ids.
  std::string bad = EncodeControl(ctl);
  bad[0] = 9;
  EXPECT_EQ(DecodeControl(bad).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(DecodeControl(EncodeControl(ctl).substr(0, 10)).status().code(),
            StatusCode::kBadRequest);
  // The other kinds: a sender-key request (group, device) and a filler (no ids).
  for (ControlContent other : {ControlContent{kControlSenderKeyRequest, {77, 2}},
                               ControlContent{kControlFiller, {}}}) {
    auto round = DecodeControl(EncodeControl(other));
    ASSERT_TRUE(round.ok()) << round.status().ToString();
    EXPECT_EQ(round->kind, other.kind);
    EXPECT_EQ(round->message_ids, other.message_ids);
  }
  ControlContent many;
  many.message_ids.assign(kMaxControlIds + 1, 1);
  EXPECT_EQ(DecodeControl(EncodeControl(many)).status().code(), StatusCode::kBadRequest);
}

}  // namespace
// Sent-message transcripts (content types 5, 6 and 7): recipient, optional copy ids, text.
TEST(BodyFormatTest, TranscriptsRoundTripWithAndWithoutCopyIds) {
  const Transcript plain{42, "hello", {}};
  auto back = DecodeTranscript(EncodeTranscript(plain));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->recipient, 42u);
  EXPECT_EQ(back->text, "hello");
  EXPECT_TRUE(back->copy_ids.empty());
  const Transcript named{42, "hi", {1000, 1256, 1512}};
  back = DecodeTranscript(EncodeTranscript(named, true), true);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->copy_ids, named.copy_ids);
  EXPECT_EQ(back->text, "hi");
  EXPECT_TRUE(IsTranscript(kContentTranscriptIds));
  EXPECT_FALSE(IsTranscript(kContentText));
  // Malformed: user 0, no ids, ids beyond the data.
  EXPECT_EQ(DecodeTranscript(EncodeTranscript({0, "x", {}})).status().code(),
            StatusCode::kBadRequest);
  EXPECT_EQ(DecodeTranscript(EncodeTranscript({42, "x", {}}, true), true).status().code(),
            StatusCode::kBadRequest);
  EXPECT_EQ(DecodeTranscript(EncodeTranscript(named, true).substr(0, 20), true).status().code(),
            StatusCode::kBadRequest);
}

}  // namespace iris::client::e2ee
