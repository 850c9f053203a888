// ProxyHeaderParser (net/proxy_protocol.h): PROXY protocol v2 headers whole and in pieces,
// never a byte past the header, and malformed headers refused with a reason.
#include "net/proxy_protocol.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace iris::net {
namespace {

using Bytes = std::vector<uint8_t>;
using State = ProxyHeaderParser::State;

const Bytes kSig = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

// A header: signature, ver/cmd, fam, length of `rest`, `rest`.
Bytes Header(uint8_t ver_cmd, uint8_t fam, const Bytes& rest) {
  Bytes b = kSig;
  b.push_back(ver_cmd);
  b.push_back(fam);
  b.push_back(static_cast<uint8_t>(rest.size() >> 8));
  b.push_back(static_cast<uint8_t>(rest.size() & 0xff));
  b.insert(b.end(), rest.begin(), rest.end());
  return b;
}

// PROXY TCP4 10.1.2.3:40000 -> 192.0.2.1:7443, with `tlv_bytes` bytes of TLVs after.
Bytes Tcp4(size_t tlv_bytes = 0) {
  Bytes rest = {10, 1, 2, 3, 192, 0, 2, 1, 0x9C, 0x40, 0x1D, 0x13};
  for (size_t i = 0; i < tlv_bytes; ++i) rest.push_back(static_cast<uint8_t>(i));
  return Header(0x21, 0x11, rest);
}

Bytes Tcp6() {
  Bytes rest(36, 0);
  rest[0] = 0x20, rest[1] = 0x01, rest[2] = 0x0d, rest[3] = 0xb8, rest[15] = 0x07;  // 2001:db8::7
  rest[32] = 0x01, rest[33] = 0xBB;                                                 // port 443
  return Header(0x21, 0x21, rest);
}

// Feeds `b` in one piece; returns how many bytes the parser took.
size_t FeedAll(ProxyHeaderParser& p, const Bytes& b) {
  return p.Feed(std::span(b.data(), b.size()));
}

TEST(ProxyHeaderParserTest, ParsesTcp4Whole) {
  ProxyHeaderParser p;
  EXPECT_EQ(p.wanted(), 16u);
  const Bytes h = Tcp4();
  EXPECT_EQ(FeedAll(p, h), h.size());
  ASSERT_EQ(p.state(), State::kDone) << p.error();
  EXPECT_FALSE(p.header().local);
  EXPECT_EQ(p.header().source_ip, "10.1.2.3");
  EXPECT_EQ(p.header().source_port, 40000);
  EXPECT_EQ(p.wanted(), 0u);
}

TEST(ProxyHeaderParserTest, ParsesTcp6AndSkipsTlvs) {
  ProxyHeaderParser p;
  EXPECT_EQ(FeedAll(p, Tcp6()), Tcp6().size());
  ASSERT_EQ(p.state(), State::kDone) << p.error();
  EXPECT_EQ(p.header().source_ip, "2001:db8::7");
  EXPECT_EQ(p.header().source_port, 443);

  ProxyHeaderParser q;
  const Bytes with_tlvs = Tcp4(40);
  EXPECT_EQ(FeedAll(q, with_tlvs), with_tlvs.size());
  ASSERT_EQ(q.state(), State::kDone) << q.error();
  EXPECT_EQ(q.header().source_ip, "10.1.2.3");
}

// Every split of the header into pieces (here: one byte at a time, and random pieces)
// gives the same result; the parser never asks for more than the header.
TEST(ProxyHeaderParserTest, FragmentsGiveTheSameResult) {
  const Bytes h = Tcp4(7);
  ProxyHeaderParser bytewise;
  for (size_t i = 0; i < h.size(); ++i) {
    ASSERT_EQ(bytewise.state(), State::kNeedMore) << "at byte " << i;
    ASSERT_GE(bytewise.wanted(), 1u);
    ASSERT_LE(bytewise.wanted(), h.size() - i);
    ASSERT_EQ(bytewise.Feed(std::span(&h[i], 1)), 1u);
  }
  ASSERT_EQ(bytewise.state(), State::kDone) << bytewise.error();
  EXPECT_EQ(bytewise.header().source_ip, "10.1.2.3");

  std::mt19937 rng(20);  // seeded
  for (int round = 0; round < 200; ++round) {
    ProxyHeaderParser p;
    size_t at = 0;
    while (at < h.size()) {
      const size_t n = std::uniform_int_distribution<size_t>(1, h.size() - at)(rng);
      at += p.Feed(std::span(h.data() + at, n));
    }
    ASSERT_EQ(p.state(), State::kDone) << p.error();
    EXPECT_EQ(p.header().source_port, 40000);
  }
}

// What follows the header (the TLS ClientHello) is not taken.
TEST(ProxyHeaderParserTest, StopsAtTheEndOfTheHeader) {
  Bytes h = Tcp4();
  const size_t header_len = h.size();
  h.insert(h.end(), {0x16, 0x03, 0x01, 0x00, 0x10});
  ProxyHeaderParser p;
  EXPECT_EQ(FeedAll(p, h), header_len);
  EXPECT_EQ(p.state(), State::kDone);
  EXPECT_EQ(p.Feed(std::span(h.data() + header_len, 5)), 0u);
}

TEST(ProxyHeaderParserTest, LocalCommandAndUnspecFamilyUseTheSocketPeer) {
  ProxyHeaderParser local;
  FeedAll(local, Header(0x20, 0x00, {}));
  ASSERT_EQ(local.state(), State::kDone) << local.error();
  EXPECT_TRUE(local.header().local);

  // LOCAL with addresses: they are ignored.
  ProxyHeaderParser local_addr;
  Bytes tcp4 = Tcp4();
  tcp4[12] = 0x20;
  FeedAll(local_addr, tcp4);
  ASSERT_EQ(local_addr.state(), State::kDone) << local_addr.error();
  EXPECT_TRUE(local_addr.header().local);

  ProxyHeaderParser unspec;
  FeedAll(unspec, Header(0x21, 0x00, {}));
  ASSERT_EQ(unspec.state(), State::kDone) << unspec.error();
  EXPECT_TRUE(unspec.header().local);
}

TEST(ProxyHeaderParserTest, RefusesMalformedHeaders) {
  struct Case {
    const char* name;
    Bytes bytes;
    const char* error_part;
  };
  Bytes bad_sig = Tcp4();
  bad_sig[5] = 0x0E;
  Bytes too_short = Header(0x21, 0x11, {10, 1, 2, 3, 192, 0, 2, 1});  // 8 of 12 bytes
  Bytes v6_short = Header(0x21, 0x21, Bytes(12, 0));
  Bytes too_long = Header(0x21, 0x11, {});
  too_long[14] = 0x04, too_long[15] = 0x01;  // 1025 bytes announced
  const std::vector<Case> cases = {
      {"TLS ClientHello", {0x16, 0x03, 0x01, 0x02, 0x00}, "signature (byte 0)"},
      {"PROXY v1 text", {'P', 'R', 'O', 'X', 'Y', ' '}, "signature (byte 0)"},
      {"signature byte 5", bad_sig, "signature (byte 5)"},
      {"version 1", Header(0x11, 0x11, Bytes(12, 0)), "version 1"},
      {"version 3", Header(0x31, 0x11, Bytes(12, 0)), "version 3"},
      {"command 2", Header(0x22, 0x11, Bytes(12, 0)), "command 2"},
      {"family 4", Header(0x21, 0x41, Bytes(12, 0)), "family"},
      {"transport 3", Header(0x21, 0x13, Bytes(12, 0)), "family"},
      {"INET shorter than its addresses", too_short, "shorter than its addresses"},
      {"INET6 shorter than its addresses", v6_short, "shorter than its addresses"},
      {"longer than the bound", too_long, "too long"},
  };
  for (const Case& c : cases) {
    ProxyHeaderParser p;
    // Byte by byte: the error comes at the first wrong byte, and nothing after it is taken.
    size_t taken = 0;
    for (size_t i = 0; i < c.bytes.size() && p.state() == State::kNeedMore; ++i) {
      taken += p.Feed(std::span(&c.bytes[i], 1));
    }
    EXPECT_EQ(p.state(), State::kError) << c.name;
    EXPECT_NE(p.error().find(c.error_part), std::string::npos) << c.name << ": " << p.error();
    EXPECT_EQ(p.wanted(), 0u) << c.name;
    EXPECT_EQ(p.Feed(std::span(c.bytes.data(), c.bytes.size())), 0u) << c.name;
    (void)taken;
  }
}

}  // namespace
}  // namespace iris::net
