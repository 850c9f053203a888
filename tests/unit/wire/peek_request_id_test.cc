// PeekRequestId and CarriesRequestId (wire/messages.h).

#include <gtest/gtest.h>

#include <string>

#include "unit/wire/protocol_table.h"
#include "unit/wire/sample_messages.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris::wire {
namespace {

using namespace samples;  // NOLINT(google-build-using-namespace)

std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
  return out;
}

std::string Tag(uint32_t field, uint32_t wire_type) { return Varint((field << 3) | wire_type); }
std::string RequestIdField(uint64_t id) { return Tag(1, 0) + Varint(id); }

TEST(PeekRequestIdTest, ReadsRequestIdOfValidPayloads) {
  EXPECT_EQ(PeekRequestId(SampleSend().SerializeAsString()), 1001u);
  EXPECT_EQ(PeekRequestId(SampleKeysUpload().SerializeAsString()), 1008u);
  EXPECT_EQ(PeekRequestId(SampleGroupGet().SerializeAsString()), 1012u);
  v1::Send s = SampleSend();
  s.set_request_id(~0ULL);
  EXPECT_EQ(PeekRequestId(s.SerializeAsString()), ~0ULL);
  s.set_request_id(0);  // proto3 omits zero
  EXPECT_EQ(PeekRequestId(s.SerializeAsString()), 0u);
}

TEST(PeekRequestIdTest, AgreesWithTheParserForEverySample) {
  for (const auto& s : AllSamplePayloads()) {
    Result<ClientMessage> r = DecodeClientFrame(s.opcode, s.payload);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(PeekRequestId(s.opcode, s.payload), RequestIdOf(*r)) << OpcodeName(s.opcode);
  }
}

TEST(PeekRequestIdTest, EmptyPayloadHasNone) {
  EXPECT_EQ(PeekRequestId(""), 0u);
  EXPECT_EQ(PeekRequestId(0x10, ""), 0u);
}

TEST(PeekRequestIdTest, FindsRequestIdAfterOtherFieldsOfEveryWireType) {
  const std::string payload = Tag(4, 2) + Varint(3) + "abc"          // bytes
                              + Tag(3, 0) + Varint(300)              // varint
                              + Tag(9, 1) + std::string(8, '\x11')   // fixed64
                              + Tag(10, 5) + std::string(4, '\x22')  // fixed32
                              + RequestIdField(4242) + Tag(12, 0) + Varint(1);
  EXPECT_EQ(PeekRequestId(payload), 4242u);
}

TEST(PeekRequestIdTest, LastOccurrenceWinsAsInProtobuf) {
  const std::string payload = RequestIdField(5) + Tag(3, 0) + Varint(1) + RequestIdField(6);
  EXPECT_EQ(PeekRequestId(payload), 6u);
  v1::History h;
  ASSERT_TRUE(h.ParseFromString(payload));
  EXPECT_EQ(h.request_id(), 6u);
}

TEST(PeekRequestIdTest, SkipsFieldOneWithOtherWireTypes) {
  // Field 1 as bytes / fixed64 / fixed32 is an unknown field to the parser: not the id.
  const std::string payload = Tag(1, 2) + Varint(2) + "zz" + Tag(1, 1) + std::string(8, '\x01') +
                              Tag(1, 5) + std::string(4, '\x01') + RequestIdField(77);
  EXPECT_EQ(PeekRequestId(payload), 77u);
  v1::GroupGet g;
  ASSERT_TRUE(g.ParseFromString(payload));
  EXPECT_EQ(g.request_id(), 77u);
  EXPECT_EQ(PeekRequestId(Tag(1, 2) + Varint(2) + "zz"), 0u);
}

TEST(PeekRequestIdTest, ReadsTagsLikeTheParser) {
  // Tags are at most 5 bytes and keep only their low 32 bits: a padded 5-byte encoding of
  // tag 8 (0x10 in the fifth byte lies beyond bit 32) is field 1, varint.
  const std::string padded_tag("\x88\x80\x80\x80\x10", 5);
  const std::string payload = Tag(2, 0) + Varint(3) + padded_tag + Varint(1234);
  v1::PresenceQuery q;
  ASSERT_TRUE(q.ParseFromString(payload));
  EXPECT_EQ(q.request_id(), 1234u);
  EXPECT_EQ(PeekRequestId(payload), 1234u);
  // A six-byte tag does not parse: nothing after it is read.
  const std::string long_tag("\x88\x80\x80\x80\x80\x00", 6);
  EXPECT_FALSE(q.ParseFromString(long_tag + Varint(1)));
  EXPECT_EQ(PeekRequestId(RequestIdField(9) + long_tag + Varint(1)), 9u);
}

TEST(PeekRequestIdTest, IgnoresFieldOneInsideGroups) {
  // An unknown group (field 9) containing a field 1, then the real request id.
  const std::string inner = Tag(9, 3) + RequestIdField(111) + Tag(9, 4);
  EXPECT_EQ(PeekRequestId(inner), 0u);
  EXPECT_EQ(PeekRequestId(inner + RequestIdField(222)), 222u);
  EXPECT_EQ(PeekRequestId(RequestIdField(333) + inner), 333u);
  // The parser agrees.
  v1::KeysFetch k;
  ASSERT_TRUE(k.ParseFromString(inner));
  EXPECT_EQ(k.request_id(), 0u);
  ASSERT_TRUE(k.ParseFromString(RequestIdField(333) + inner));
  EXPECT_EQ(k.request_id(), 333u);
  // Nested groups.
  const std::string nested =
      Tag(9, 3) + Tag(10, 3) + RequestIdField(1) + Tag(10, 4) + Tag(9, 4) + RequestIdField(2);
  EXPECT_EQ(PeekRequestId(nested), 2u);
}

TEST(PeekRequestIdTest, GroupNestingIsBounded) {
  std::string deep;
  for (int i = 0; i < 10'000; ++i) deep += Tag(9, 3);
  EXPECT_EQ(PeekRequestId(RequestIdField(8) + deep + RequestIdField(9)), 8u);
}

TEST(PeekRequestIdTest, TruncatedPayloadsNeverOverRead) {
  // Every prefix of a payload whose request id comes first: 0 until the id is complete,
  // then the id (the damage after it does not hide it).
  v1::Send s = SampleSend();
  s.set_request_id(0x0102030405060708ULL);
  const std::string full = s.SerializeAsString();
  const size_t id_end = RequestIdField(s.request_id()).size();
  ASSERT_EQ(full.substr(0, id_end), RequestIdField(s.request_id()));
  for (size_t n = 0; n <= full.size(); ++n) {
    // A fresh heap copy so ASan would flag any read past its end.
    const std::string prefix = full.substr(0, n);
    const uint64_t got = PeekRequestId(prefix);
    EXPECT_EQ(got, n < id_end ? 0u : s.request_id()) << "prefix " << n;
  }
}

TEST(PeekRequestIdTest, GarbageGivesZeroOrTheIdReadBeforeIt) {
  const std::string garbage[] = {
      std::string(1, '\xff'),
      std::string(20, '\xff'),                                              // endless varint
      std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),  // 11-byte value
      Tag(3, 6),                                                            // wire type 6
      Tag(3, 7),                                                            // wire type 7
      Tag(5, 4),                          // end group at top level
      std::string("\x00\x05", 2),         // field number 0
      Tag(4, 2) + Varint(100) + "short",  // overrunning length
      Tag(4, 2) + Varint(~0ULL),          // absurd length
      Tag(4, 1) + "1234567",              // short fixed64
      Tag(4, 5) + "123",                  // short fixed32
      Varint(1ULL << 35),                 // six-byte tag
  };
  for (const std::string& g : garbage) {
    EXPECT_EQ(PeekRequestId(g), 0u) << g.size();
    EXPECT_EQ(PeekRequestId(RequestIdField(55) + g), 55u) << g.size();
    EXPECT_EQ(PeekRequestId(g + RequestIdField(55)), 0u) << g.size();  // unreadable before
  }
}

TEST(PeekRequestIdTest, OpcodeOverloadOnlyForMessagesWithRequestId) {
  // For PING field 1 is the nonce, for SYNC the cursor, for TYPING the user.
  const std::string payload = RequestIdField(99);
  for (const ProtocolOpcode& op : kProtocolOpcodes) {
    if (!op.client) {
      EXPECT_FALSE(CarriesRequestId(op.opcode)) << op.name;
      EXPECT_EQ(PeekRequestId(op.opcode, payload), 0u) << op.name;
    }
  }
  for (uint8_t op : {0x01, 0x04, 0x05, 0x13, 0x20, 0x22, 0x44}) {
    EXPECT_FALSE(CarriesRequestId(op)) << OpcodeName(op);
    EXPECT_EQ(PeekRequestId(op, payload), 0u) << OpcodeName(op);
  }
  for (uint8_t op : {0x10, 0x24, 0x30, 0x31, 0x40, 0x41, 0x42, 0x50, 0x51, 0x60, 0x61, 0x62}) {
    EXPECT_TRUE(CarriesRequestId(op)) << OpcodeName(op);
    EXPECT_EQ(PeekRequestId(op, payload), 99u) << OpcodeName(op);
  }
  EXPECT_FALSE(CarriesRequestId(0xee));
  EXPECT_EQ(PeekRequestId(0xee, payload), 0u);
  EXPECT_EQ(PeekRequestId(payload), 99u);  // the opcode-free form reads field 1 regardless
}

TEST(PeekRequestIdTest, NamesTheRequestOfAnInvalidFrame) {
  // A SEND failing validation (empty body) can still be answered with its request id.
  v1::Send s = SampleSend();
  s.clear_body();
  const std::string payload = s.SerializeAsString();
  EXPECT_EQ(DecodeClientFrame(0x10, payload).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(PeekRequestId(0x10, payload), 1001u);
  // And a SEND whose tail does not parse.
  const std::string broken = SampleSend().SerializeAsString() + "\xff";
  EXPECT_EQ(DecodeClientFrame(0x10, broken).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(PeekRequestId(0x10, broken), 1001u);
}

}  // namespace
}  // namespace iris::wire
