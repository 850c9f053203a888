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

}  // namespace
}  // namespace iris::client::e2ee
