// The etcd HTTP client's chunked-body decoder (ChunkedDecoder): a body split anywhere
// across reads decodes to the same bytes. A real run found the split between the last
// chunk's size line ("0\r\n") and the end of its trailer section: the size line was
// consumed and the next read failed with "bad chunk size from etcd".

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "cluster/http_client.h"

namespace iris::cluster {
namespace {

// Feeds `wire` in pieces ending at the given offsets; returns the body and whether the
// decoder saw the end (and nothing left over).
std::string DecodeInPieces(const std::string& wire, const std::vector<size_t>& cuts,
                           bool* finished) {
  ChunkedDecoder d;
  std::string in, out;
  size_t from = 0;
  *finished = false;
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t to = i < cuts.size() ? cuts[i] : wire.size();
    if (to == from) continue;  // nothing new to read
    in.append(wire, from, to - from);
    from = to;
    EXPECT_FALSE(*finished) << "finished before the end";
    bool done = false;
    const Status s = d.Decode(&in, &out, &done);
    EXPECT_TRUE(s.ok()) << s.message() << " after " << to << " bytes";
    *finished = *finished || done;
  }
  EXPECT_TRUE(in.empty()) << "left over: " << in.size() << " bytes";
  return out;
}

TEST(ChunkedDecoderTest, EverySplitOfABodyDecodesTheSame) {
  const std::string body = "{\"header\":{\"revision\":\"42\"},\"kvs\":[]}";
  const std::string wire = "5\r\n" + body.substr(0, 5) + "\r\n" + "1a\r\n" + body.substr(5, 26) +
                           "\r\n" + std::to_string(body.size() - 31) + "\r\n" + body.substr(31) +
                           "\r\n0\r\n\r\n";
  for (size_t cut = 0; cut <= wire.size(); ++cut) {
    bool finished = false;
    EXPECT_EQ(DecodeInPieces(wire, {cut}, &finished), body) << "split at " << cut;
    EXPECT_TRUE(finished) << "split at " << cut;
  }
  // One byte at a time, and seeded random splits.
  std::vector<size_t> every;
  for (size_t i = 1; i < wire.size(); ++i) every.push_back(i);
  bool finished = false;
  EXPECT_EQ(DecodeInPieces(wire, every, &finished), body);
  EXPECT_TRUE(finished);
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < wire.size(); ++i) {
      if (rng() % 4 == 0) cuts.push_back(i);
    }
    EXPECT_EQ(DecodeInPieces(wire, cuts, &finished), body) << "round " << round;
    EXPECT_TRUE(finished);
  }
}

TEST(ChunkedDecoderTest, ATrailerSectionIsSkippedAndABadSizeIsAnError) {
  bool finished = false;
  EXPECT_EQ(DecodeInPieces("3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", {10, 12, 20}, &finished),
            "abc");
  EXPECT_TRUE(finished);
  ChunkedDecoder d;
  std::string in = "zz\r\nabc\r\n", out;
  EXPECT_FALSE(d.Decode(&in, &out, &finished).ok());
}

}  // namespace
}  // namespace iris::cluster
