// DecodeClientFrame (wire/messages.h): opcode dispatch, parsing, RequestIdOf.
// Field validation rules are in validate_test.cc; PeekRequestId in peek_request_id_test.cc.

#include "wire/messages.h"

#include <gtest/gtest.h>

#include <string>

#include "unit/wire/protocol_table.h"
#include "unit/wire/sample_messages.h"
#include "wire/opcode.h"

namespace iris::wire {
namespace {

using namespace samples;  // NOLINT(google-build-using-namespace)

// Whether `sent`, framed as `opcode`, decodes to the same message type with the same fields
// and the expected request id.
template <typename M>
::testing::AssertionResult RoundTrips(uint8_t opcode, const M& sent, uint64_t request_id) {
  const std::string name(OpcodeName(opcode));
  Result<ClientMessage> r = DecodeClientFrame(opcode, sent.SerializeAsString());
  if (!r.ok()) return ::testing::AssertionFailure() << name << ": " << r.status().ToString();
  if (!std::holds_alternative<M>(*r)) {
    return ::testing::AssertionFailure() << name << ": decoded as another message type";
  }
  const M& got = std::get<M>(*r);
  if (got.SerializeAsString() != sent.SerializeAsString()) {
    return ::testing::AssertionFailure() << name << ": fields differ: sent " << sent.DebugString()
                                         << ", decoded " << got.DebugString();
  }
  if (RequestIdOf(*r) != request_id) {
    return ::testing::AssertionFailure() << name << ": request id " << RequestIdOf(*r)
                                         << ", expected " << request_id;
  }
  return ::testing::AssertionSuccess();
}

TEST(DecodeClientFrameTest, DecodesEveryClientOpcode) {
  EXPECT_TRUE(RoundTrips(0x01, SampleHello(), 0));
  EXPECT_TRUE(RoundTrips(0x04, SamplePing(), 0));
  EXPECT_TRUE(RoundTrips(0x05, SamplePong(), 0));
  EXPECT_TRUE(RoundTrips(0x10, SampleSend(), 1001));
  EXPECT_TRUE(RoundTrips(0x13, SampleDeliverAck(), 0));
  EXPECT_TRUE(RoundTrips(0x20, SampleSync(), 0));
  EXPECT_TRUE(RoundTrips(0x22, SampleSyncAck(), 0));
  EXPECT_TRUE(RoundTrips(0x24, SampleHistory(), 1002));
  EXPECT_TRUE(RoundTrips(0x30, SampleReceipt(), 1003));
  EXPECT_TRUE(RoundTrips(0x31, SampleSettings(), 1004));
  EXPECT_TRUE(RoundTrips(0x33, SampleSettingsGet(), 1013));
  EXPECT_TRUE(RoundTrips(0x40, SamplePresenceSubscribe(), 1005));
  EXPECT_TRUE(RoundTrips(0x41, SamplePresenceUnsubscribe(), 1006));
  EXPECT_TRUE(RoundTrips(0x42, SamplePresenceQuery(), 1007));
  EXPECT_TRUE(RoundTrips(0x44, SampleTyping(), 0));
  EXPECT_TRUE(RoundTrips(0x50, SampleKeysUpload(), 1008));
  EXPECT_TRUE(RoundTrips(0x51, SampleKeysFetch(), 1009));
  EXPECT_TRUE(RoundTrips(0x60, SampleGroupCreate(), 1010));
  EXPECT_TRUE(RoundTrips(0x61, SampleGroupUpdate(), 1011));
  EXPECT_TRUE(RoundTrips(0x62, SampleGroupGet(), 1012));
}

TEST(DecodeClientFrameTest, SamplesCoverEveryClientOpcodeOfTheProtocol) {
  int client_opcodes = 0;
  for (const ProtocolOpcode& op : kProtocolOpcodes) client_opcodes += op.client;
  const auto samples = AllSamplePayloads();
  EXPECT_EQ(static_cast<int>(samples.size()), client_opcodes);
  for (const auto& s : samples) {
    const ProtocolOpcode* op = FindProtocolOpcode(s.opcode);
    ASSERT_NE(op, nullptr);
    EXPECT_TRUE(op->client) << op->name;
    EXPECT_TRUE(DecodeClientFrame(s.opcode, s.payload).ok()) << op->name;
  }
}

TEST(DecodeClientFrameTest, ServerOnlyOpcodesAreBadRequest) {
  int server_only = 0;
  for (const ProtocolOpcode& op : kProtocolOpcodes) {
    if (op.client) continue;
    ++server_only;
    SCOPED_TRACE(std::string(op.name));
    // Whatever the payload: a client may not send these.
    EXPECT_EQ(DecodeClientFrame(op.opcode, "").status().code(), StatusCode::kBadRequest);
    EXPECT_EQ(DecodeClientFrame(op.opcode, SampleSend().SerializeAsString()).status().code(),
              StatusCode::kBadRequest);
    EXPECT_EQ(DecodeClientFrame(op.opcode, "\xff\xff").status().code(), StatusCode::kBadRequest);
  }
  EXPECT_EQ(server_only, 12);
}

TEST(DecodeClientFrameTest, UnknownOpcodesAreUnknownOpcode) {
  int unknown = 0;
  for (int v = 0; v < 256; ++v) {
    if (FindProtocolOpcode(static_cast<uint8_t>(v)) != nullptr) continue;
    ++unknown;
    SCOPED_TRACE(v);
    EXPECT_EQ(DecodeClientFrame(static_cast<uint8_t>(v), "").status().code(),
              StatusCode::kUnknownOpcode);
    // Even with a payload that would be valid for some opcode, or garbage.
    EXPECT_EQ(DecodeClientFrame(static_cast<uint8_t>(v), SampleSend().SerializeAsString())
                  .status()
                  .code(),
              StatusCode::kUnknownOpcode);
    EXPECT_EQ(DecodeClientFrame(static_cast<uint8_t>(v), "\xff").status().code(),
              StatusCode::kUnknownOpcode);
  }
  EXPECT_EQ(unknown, 256 - 32);
}

TEST(DecodeClientFrameTest, UnparseablePayloadIsBadRequestForEveryClientOpcode) {
  const std::string garbage[] = {
      std::string("\xff", 1),  // truncated varint tag
      std::string("\x08", 1),  // tag without value
      std::string("\x0a\x05"
                  "ab",
                  4),              // length-delimited overruns
      std::string("\x00\x00", 2),  // field number 0
      std::string("\x0f", 1),      // wire type 7
      std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),  // 11-byte varint
  };
  for (const auto& s : AllSamplePayloads()) {
    for (const std::string& g : garbage) {
      SCOPED_TRACE(std::string(OpcodeName(s.opcode)) + " garbage " + std::to_string(g.size()));
      EXPECT_EQ(DecodeClientFrame(s.opcode, g).status().code(), StatusCode::kBadRequest);
      // A valid payload followed by garbage does not parse either.
      EXPECT_EQ(DecodeClientFrame(s.opcode, s.payload + g).status().code(),
                StatusCode::kBadRequest);
    }
  }
}

TEST(DecodeClientFrameTest, InvalidUtf8InStringFieldIsBadRequest) {
  // proto3 `string` fields must hold UTF-8; the wire bytes are built by hand because the
  // serialiser would refuse them too.
  v1::Hello base = SampleHello();
  base.clear_client();
  const std::string bad_client("\x32\x02\xc3\x28", 4);   // field 6 = "\xc3\x28"
  const std::string good_client("\x32\x02\xc3\xa9", 4);  // field 6 = "\u00e9"
  EXPECT_EQ(DecodeClientFrame(0x01, base.SerializeAsString() + bad_client).status().code(),
            StatusCode::kBadRequest);
  EXPECT_TRUE(DecodeClientFrame(0x01, base.SerializeAsString() + good_client).ok());
}

TEST(DecodeClientFrameTest, EmptyPayloadDecodesToDefaultsOrFailsValidation) {
  // An empty payload is the all-defaults message: valid for these opcodes...
  for (uint8_t op : {0x04, 0x05, 0x13, 0x20, 0x22, 0x24, 0x31}) {
    Result<ClientMessage> r = DecodeClientFrame(op, "");
    ASSERT_TRUE(r.ok()) << OpcodeName(op) << ": " << r.status().ToString();
    EXPECT_EQ(RequestIdOf(*r), 0u);
  }
  // ...and BAD_REQUEST (a required field is missing) for the others.
  for (uint8_t op : {0x01, 0x10, 0x30, 0x40, 0x41, 0x42, 0x44, 0x50, 0x51, 0x60, 0x61, 0x62}) {
    EXPECT_EQ(DecodeClientFrame(op, "").status().code(), StatusCode::kBadRequest) << OpcodeName(op);
  }
}

TEST(DecodeClientFrameTest, UnknownFieldsAreIgnored) {
  const v1::Send send = SampleSend();
  // Field 99 as varint, field 100 as bytes, field 101 as fixed32, field 102 as fixed64.
  const std::string extra(
      "\x98\x06\x05"
      "\xa2\x06\x03xyz"
      "\xad\x06\x01\x02\x03\x04"
      "\xb1\x06\x01\x02\x03\x04\x05\x06\x07\x08");  // no NUL bytes
  Result<ClientMessage> r = DecodeClientFrame(0x10, send.SerializeAsString() + extra);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const v1::Send& got = std::get<v1::Send>(*r);
  EXPECT_EQ(got.request_id(), send.request_id());
  EXPECT_EQ(got.body(), send.body());
  EXPECT_EQ(got.recipient(), send.recipient());
}

TEST(DecodeClientFrameTest, PayloadOfMaximumFrameSizeIsParsed) {
  v1::Send send = SampleSend();
  send.set_body(std::string(64'000, 'b'));
  std::string payload = send.SerializeAsString();
  // Pad with an unknown bytes field up to 65,535 bytes.
  const size_t pad = 65'535 - payload.size() - 4;  // tag (2) + length varint (2)
  ASSERT_LT(pad, 16'384u);
  payload += std::string("\xa2\x06", 2);
  payload.push_back(static_cast<char>(0x80 | (pad & 0x7f)));
  payload.push_back(static_cast<char>(pad >> 7));
  payload += std::string(pad, 'p');
  ASSERT_EQ(payload.size(), 65'535u);
  Result<ClientMessage> r = DecodeClientFrame(0x10, payload);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(std::get<v1::Send>(*r).body().size(), 64'000u);
}

TEST(DecodeClientFrameTest, LaterOccurrenceOfAScalarFieldWins) {
  // Protobuf merges repeated occurrences: the last scalar wins, lists concatenate.
  v1::PresenceQuery a, b;
  a.set_request_id(1);
  a.add_users(5);
  b.set_request_id(2);
  b.add_users(6);
  Result<ClientMessage> r = DecodeClientFrame(0x42, a.SerializeAsString() + b.SerializeAsString());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(RequestIdOf(*r), 2u);
  EXPECT_EQ(std::get<v1::PresenceQuery>(*r).users_size(), 2);
}

}  // namespace
}  // namespace iris::wire
