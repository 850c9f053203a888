// Tls13Records on its own: a client-side and a server-side object built from the same
// secrets must understand each other in both directions, through key updates, and must
// refuse anything tampered with or malformed. (Interoperability with OpenSSL's own record
// layer is connection_test.cc's job.)
#include "net/tls_records.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace iris::net {
namespace {

std::vector<uint8_t> Secret(size_t len, uint8_t seed) {
  std::vector<uint8_t> s(len);
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<uint8_t>(seed + 7 * i);
  return s;
}

struct Pair {
  Tls13Records client;
  Tls13Records server;
};

Pair MakePair(uint16_t suite) {
  const size_t len = suite == 0x1302 ? 48 : 32;
  const std::vector<uint8_t> c = Secret(len, 1), s = Secret(len, 99);
  Result<Tls13Records> client = Tls13Records::ForClient(suite, c, s);
  Result<Tls13Records> server = Tls13Records::ForServer(suite, c, s);
  EXPECT_TRUE(client.ok()) << client.status().message();
  EXPECT_TRUE(server.ok()) << server.status().message();
  return Pair{std::move(*client), std::move(*server)};
}

// Opens every record in `wire` with `to`, returning the application data and the control
// records' outcome.
struct Received {
  std::string data;
  bool close_notify = false;
  Status error;
  std::string reply;  // what `to` sent back (KeyUpdate answers)
};
Received OpenAll(Tls13Records& to, std::string wire) {
  Received r;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(wire.data()), wire.size());
  while (!buf.empty()) {
    Result<size_t> len = Tls13Records::CompleteRecordLength(buf);
    if (!len.ok()) {
      r.error = len.status();
      return r;
    }
    if (*len == 0) {
      r.error = BadRequest("incomplete record");
      return r;
    }
    Result<Tls13Records::Opened> o = to.Open(buf.first(*len));
    if (!o.ok()) {
      r.error = o.status();
      return r;
    }
    if (o->type == Tls13Records::kApplicationData) {
      r.data.append(reinterpret_cast<const char*>(o->content.data()), o->content.size());
    } else {
      Result<Tls13Records::Event> ev = to.HandleControl(*o, &r.reply);
      if (!ev.ok()) {
        r.error = ev.status();
        return r;
      }
      if (*ev == Tls13Records::Event::kCloseNotify) r.close_notify = true;
    }
    buf = buf.subspan(*len);
  }
  return r;
}

class SuiteTest : public ::testing::TestWithParam<uint16_t> {};

TEST_P(SuiteTest, RoundTripsBothWaysAcrossRecordBoundaries) {
  Pair p = MakePair(GetParam());
  std::mt19937 rng(42);
  std::string big(100'000, '\0');
  for (char& ch : big) ch = static_cast<char>(rng());
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData(big, &wire).ok());
  // 100,000 bytes take ceil(100000 / 16384) = 7 records.
  EXPECT_EQ(p.client.write_sequence(), 7u);
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(r.data, big);

  std::string back;
  ASSERT_TRUE(p.server.SealApplicationData("pong", &back).ok());
  r = OpenAll(p.client, back);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(r.data, "pong");
}

TEST_P(SuiteTest, KeyUpdateRequestedIsAnsweredAndBothSidesMoveOn) {
  Pair p = MakePair(GetParam());
  std::string wire;
  ASSERT_TRUE(p.client.UpdateSendingKey(/*request_peer_update=*/true, &wire).ok());
  ASSERT_TRUE(p.client.SealApplicationData("after update", &wire).ok());
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(r.data, "after update");
  EXPECT_TRUE(r.reply.empty()) << "the answer goes out with the next data, not on its own";
  EXPECT_TRUE(p.server.key_update_owed()) << "the server must answer an update_requested";
  std::string back;
  ASSERT_TRUE(p.server.SealApplicationData("server, new key", &back).ok());
  EXPECT_FALSE(p.server.key_update_owed());
  Received c = OpenAll(p.client, back);
  ASSERT_TRUE(c.error.ok()) << c.error.message();
  EXPECT_EQ(c.data, "server, new key");
  EXPECT_FALSE(p.client.key_update_owed()) << "update_not_requested needs no answer";
}

// The number of records in a run of sealed bytes.
size_t RecordCount(const std::string& wire) {
  size_t n = 0;
  for (size_t at = 0; at + Tls13Records::kHeaderBytes <= wire.size(); ++n) {
    at += Tls13Records::kHeaderBytes + ((static_cast<uint8_t>(wire[at + 3]) << 8) |
                                        static_cast<uint8_t>(wire[at + 4]));
  }
  return n;
}

TEST_P(SuiteTest, ManyRequestedKeyUpdatesWhileSilentGetOneAnswer) {
  // RFC 8446 section 4.6.3: a receiver of several KeyUpdates while silent answers once.
  Pair p = MakePair(GetParam());
  std::string wire;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(p.client.UpdateSendingKey(/*request_peer_update=*/true, &wire).ok());
  }
  ASSERT_TRUE(p.client.SealApplicationData("x", &wire).ok());
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  std::string back;
  ASSERT_TRUE(p.server.SealApplicationData("y", &back).ok());
  EXPECT_EQ(RecordCount(back), 2u) << "one KeyUpdate, then the data";
  Received c = OpenAll(p.client, back);
  ASSERT_TRUE(c.error.ok()) << c.error.message();
  EXPECT_EQ(c.data, "y");
}

TEST(Tls13RecordsTest, RunOfKeyUpdatesWithoutDataIsRefused) {
  Pair p = MakePair(0x1301);
  std::string wire;
  // Interleaved with data, any number is fine.
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(p.client.UpdateSendingKey(true, &wire).ok());
    ASSERT_TRUE(p.client.SealApplicationData("d", &wire).ok());
  }
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(r.data, std::string(100, 'd'));
  // A run with nothing between them is not.
  wire.clear();
  for (uint32_t i = 0; i <= Tls13Records::kMaxKeyUpdatesWithoutData; ++i) {
    ASSERT_TRUE(p.client.UpdateSendingKey(true, &wire).ok());
  }
  r = OpenAll(p.server, wire);
  ASSERT_FALSE(r.error.ok());
  EXPECT_NE(r.error.message().find("too many KeyUpdates"), std::string::npos)
      << r.error.message();
  EXPECT_EQ(p.server.alert(), Tls13Records::kAlertUnexpectedMessage);
}

TEST(Tls13RecordsTest, SendingKeyIsReplacedBeforeTheRecordLimit) {
  Pair p = MakePair(0x1301);
  // Both sides agree that the server's key has protected nearly kRecordsPerKey records.
  const uint64_t used = Tls13Records::kRecordsPerKey - 70;
  p.server.SetSequencesForTesting(0, used);
  p.client.SetSequencesForTesting(used, 0);
  std::string back;
  // 20 records of 16 KiB cross the point where the key must change.
  ASSERT_TRUE(p.server.SealApplicationData(std::string(20 * 16384, 'k'), &back).ok());
  EXPECT_LT(p.server.write_sequence(), 20u) << "the sending key was not replaced";
  Received c = OpenAll(p.client, back);
  ASSERT_TRUE(c.error.ok()) << c.error.message();
  EXPECT_EQ(c.data.size(), 20u * 16384);
  EXPECT_LT(p.client.read_sequence(), 20u);
}

TEST(Tls13RecordsTest, PeerIsAskedToUpdateAtHalfLifeAndCutOffAtTheLimit) {
  Pair p = MakePair(0x1303);
  const uint64_t half = Tls13Records::kRecordsPerKey / 2;
  p.server.SetSequencesForTesting(half, 0);
  p.client.SetSequencesForTesting(0, half);
  std::string back;
  ASSERT_TRUE(p.server.SealApplicationData("please update", &back).ok());
  Received c = OpenAll(p.client, back);
  ASSERT_TRUE(c.error.ok()) << c.error.message();
  EXPECT_TRUE(p.client.key_update_owed()) << "the server should have requested an update";
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData("updated", &wire).ok());
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok()) << r.error.message();
  EXPECT_EQ(p.server.read_sequence(), 1u) << "the client's new key starts a new count";

  // A peer that ignores the request is cut off when its key reaches the limit.
  Pair q = MakePair(0x1303);
  q.server.SetSequencesForTesting(Tls13Records::kRecordsPerKey, 0);
  q.client.SetSequencesForTesting(0, Tls13Records::kRecordsPerKey);
  wire.clear();
  ASSERT_TRUE(q.client.SealApplicationData("one too many", &wire).ok());
  r = OpenAll(q.server, wire);
  ASSERT_FALSE(r.error.ok());
  EXPECT_NE(r.error.message().find("record limit"), std::string::npos) << r.error.message();
}

TEST(Tls13RecordsTest, PaddingCountsTowardTheInnerPlaintextLimit) {
  // RFC 8446 section 5.4: content, type and padding together at most 2^14 + 1 bytes.
  Pair p = MakePair(0x1301);
  std::string wire;
  ASSERT_TRUE(p.client
                  .SealPaddedForTesting(Tls13Records::kApplicationData,
                                        std::string(Tls13Records::kMaxPlaintext, 'a'), 0, &wire)
                  .ok());
  ASSERT_TRUE(OpenAll(p.server, wire).error.ok()) << "exactly at the limit";
  wire.clear();
  ASSERT_TRUE(p.client
                  .SealPaddedForTesting(Tls13Records::kApplicationData,
                                        std::string(Tls13Records::kMaxPlaintext - 100, 'a'),
                                        101, &wire)
                  .ok());
  Received r = OpenAll(p.server, wire);
  ASSERT_FALSE(r.error.ok()) << "content within the limit, padding over it";
  EXPECT_NE(r.error.message().find("record_overflow"), std::string::npos) << r.error.message();
  EXPECT_EQ(p.server.alert(), Tls13Records::kAlertRecordOverflow);
}

TEST(Tls13RecordsTest, ErrorsNameTheAlertRfc8446Requires) {
  Pair p = MakePair(0x1301);
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData("integrity", &wire).ok());
  wire[wire.size() - 1] ^= 1;
  ASSERT_FALSE(OpenAll(p.server, wire).error.ok());
  EXPECT_EQ(p.server.alert(), Tls13Records::kAlertBadRecordMac);
  uint8_t alert = Tls13Records::kNoAlert;
  const std::string overflow("\x17\x03\x03\x41\x01", 5);
  EXPECT_FALSE(Tls13Records::CompleteRecordLength(
                   std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(overflow.data()),
                                            overflow.size()),
                   &alert)
                   .ok());
  EXPECT_EQ(alert, Tls13Records::kAlertRecordOverflow);
  // A fatal alert from the peer is not answered with one.
  Pair q = MakePair(0x1301);
  uint8_t fatal[2] = {2, 40};
  EXPECT_FALSE(q.server.HandleControl({Tls13Records::kAlert, fatal}).ok());
  EXPECT_EQ(q.server.alert(), Tls13Records::kNoAlert);
}

TEST(Tls13RecordsTest, AMovedFromObjectKeepsNoKeys) {
  Pair p = MakePair(0x1301);
  Tls13Records moved = std::move(p.server);
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData("secret", &wire).ok());
  EXPECT_TRUE(OpenAll(moved, wire).error.ok()) << "the keys moved with the object";
  // The husk's keys were wiped: what it seals, the client cannot open.
  std::string husk;
  ASSERT_TRUE(p.server.SealApplicationData("from the husk", &husk).ok());
  EXPECT_FALSE(OpenAll(p.client, husk).error.ok());
}

TEST_P(SuiteTest, CloseNotifyIsReported) {
  Pair p = MakePair(GetParam());
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData("last words", &wire).ok());
  ASSERT_TRUE(p.client.SealAlert(0, &wire).ok());
  Received r = OpenAll(p.server, wire);
  ASSERT_TRUE(r.error.ok());
  EXPECT_EQ(r.data, "last words");
  EXPECT_TRUE(r.close_notify);
}


INSTANTIATE_TEST_SUITE_P(AllSuites, SuiteTest, ::testing::Values(0x1301, 0x1302, 0x1303));

TEST(Tls13RecordsTest, EveryTamperedByteIsRejected) {
  Pair p = MakePair(0x1301);
  std::string wire;
  ASSERT_TRUE(p.client.SealApplicationData("integrity matters", &wire).ok());
  for (size_t i = 0; i < wire.size(); ++i) {
    Pair fresh = MakePair(0x1301);
    std::string bad = wire;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    Received r = OpenAll(fresh.server, bad);
    EXPECT_FALSE(r.error.ok()) << "flipped byte " << i << " was accepted";
    EXPECT_TRUE(r.data.empty());
  }
}

TEST(Tls13RecordsTest, ReplayedOrReorderedRecordsFail) {
  Pair p = MakePair(0x1303);
  std::string first, second;
  ASSERT_TRUE(p.client.SealApplicationData("one", &first).ok());
  ASSERT_TRUE(p.client.SealApplicationData("two", &second).ok());
  Received r = OpenAll(p.server, second);  // the sequence number says it is record 1, not 0
  EXPECT_EQ(r.error.code(), StatusCode::kBadRequest);
  Pair q = MakePair(0x1303);
  EXPECT_TRUE(OpenAll(q.server, first).error.ok());
  EXPECT_FALSE(OpenAll(q.server, first).error.ok()) << "a replayed record must not open";
}

TEST(Tls13RecordsTest, MalformedHeadersAreErrors) {
  const auto length = [](std::string h) {
    return Tls13Records::CompleteRecordLength(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(h.data()), h.size()));
  };
  EXPECT_EQ(*length(std::string("\x17\x03", 2)), 0u) << "incomplete header waits";
  EXPECT_EQ(*length(std::string("\x17\x03\x03\x00\x20", 5)), 0u) << "incomplete body waits";
  EXPECT_FALSE(length(std::string("\x16\x03\x03\x00\x20", 5)).ok()) << "plaintext handshake";
  EXPECT_FALSE(length(std::string("\x14\x03\x03\x00\x01", 5)).ok()) << "change_cipher_spec";
  EXPECT_FALSE(length(std::string("\x17\x03\x01\x00\x20", 5)).ok()) << "wrong version";
  EXPECT_FALSE(length(std::string("\x17\x03\x03\x41\x01", 5)).ok()) << "record_overflow";
  EXPECT_FALSE(length(std::string("\x17\x03\x03\x00\x05", 5)).ok()) << "shorter than a tag";
}

TEST(Tls13RecordsTest, ControlMessagesOtherThanKeyUpdateAreRefused) {
  Pair p = MakePair(0x1301);
  std::string out;
  // A fatal alert (handshake_failure, 40) from the peer.
  Tls13Records::Opened alert{Tls13Records::kAlert, {}};
  uint8_t fatal[2] = {2, 40};
  alert.content = fatal;
  Result<Tls13Records::Event> ev = p.server.HandleControl(alert, &out);
  ASSERT_FALSE(ev.ok());
  EXPECT_NE(ev.status().message().find("alert 40"), std::string::npos);
  // A NewSessionTicket (4) from a client.
  uint8_t ticket[5] = {4, 0, 0, 1, 0};
  EXPECT_FALSE(p.server.HandleControl({Tls13Records::kHandshake, ticket}, &out).ok());
  // A KeyUpdate with a bad value, and one cut short.
  uint8_t bad_update[5] = {24, 0, 0, 1, 7};
  EXPECT_FALSE(p.server.HandleControl({Tls13Records::kHandshake, bad_update}, &out).ok());
  uint8_t short_update[3] = {24, 0, 0};
  EXPECT_FALSE(p.server.HandleControl({Tls13Records::kHandshake, short_update}, &out).ok());
  EXPECT_TRUE(out.empty());
}

TEST(Tls13RecordsTest, UnsupportedSuitesAndSecretLengthsAreRefused) {
  const std::vector<uint8_t> s32 = Secret(32, 3);
  EXPECT_FALSE(Tls13Records::ForServer(0x1304, s32, s32).ok()) << "AES-CCM is not offered";
  EXPECT_FALSE(Tls13Records::ForServer(0x1302, s32, s32).ok()) << "SHA-384 needs 48 bytes";
}

}  // namespace
}  // namespace iris::net
