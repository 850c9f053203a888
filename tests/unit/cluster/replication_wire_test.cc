// The replication messages on the wire (cluster/replication/replication_wire.h): every kind
// survives ToProto -> bytes -> FromProto field for field.

#include "cluster/replication/replication_wire.h"

#include <gtest/gtest.h>

namespace iris::cluster::repl {
namespace {

namespace ipb = internal::v1;

Message RoundTrip(ShardNo shard, const Message& m) {
  ipb::ReplicationMessage out;
  ToProto(shard, m, &out);
  std::string bytes;
  EXPECT_TRUE(out.SerializeToString(&bytes));
  ipb::ReplicationMessage in;
  EXPECT_TRUE(in.ParseFromString(bytes));
  Result<std::pair<ShardNo, Message>> back = FromProto(in);
  EXPECT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->first, shard);
  EXPECT_EQ(back->second.index(), m.index());
  return back->second;
}

const Batch kB1{3, 11, 1001, std::string("pay\0load", 8)};
const Batch kB2{4, 12, 1002, ""};

TEST(ReplicationWireTest, EveryMessageKindRoundTrips) {
  {
    auto m = std::get<ShipBatch>(RoundTrip(9, ShipBatch{4, kB1, 10}));
    EXPECT_EQ(m.epoch, 4u);
    EXPECT_EQ(m.batch, kB1);
    EXPECT_EQ(m.commit_lsn, 10u);
  }
  {
    auto m = std::get<BatchAck>(RoundTrip(1, BatchAck{4, true, 12, 5, 11, 13}));
    EXPECT_EQ(m.epoch, 4u);
    EXPECT_TRUE(m.ok);
    EXPECT_EQ(m.durable_lsn, 12u);
    EXPECT_EQ(m.promised, 5u);
    EXPECT_EQ(m.commit_lsn, 11u);
    EXPECT_EQ(m.matched_lsn, 13u);
  }
  {
    auto m = std::get<Level>(RoundTrip(1, Level{4, 10, 3, {kB1, kB2}, 9, 20}));
    EXPECT_EQ(m.epoch, 4u);
    EXPECT_EQ(m.from_lsn, 10u);
    EXPECT_EQ(m.from_epoch, 3u);
    EXPECT_EQ(m.batches, (std::vector<Batch>{kB1, kB2}));
    EXPECT_EQ(m.commit_lsn, 9u);
    EXPECT_EQ(m.last_lsn, 20u);
  }
  EXPECT_EQ(std::get<PromiseRequest>(RoundTrip(1, PromiseRequest{8})).epoch, 8u);
  {
    auto m = std::get<Promise>(RoundTrip(1, Promise{8, true, 8, 4, 12, 11}));
    EXPECT_EQ(m.epoch, 8u);
    EXPECT_TRUE(m.granted);
    EXPECT_EQ(m.promised, 8u);
    EXPECT_EQ(m.accepted, 4u);
    EXPECT_EQ(m.durable_lsn, 12u);
    EXPECT_EQ(m.commit_lsn, 11u);
  }
  {
    auto m = std::get<FetchRequest>(RoundTrip(1, FetchRequest{8, 10, 3}));
    EXPECT_EQ(m.epoch, 8u);
    EXPECT_EQ(m.from_lsn, 10u);
    EXPECT_EQ(m.from_epoch, 3u);
  }
  {
    FetchReply r{8, true, std::nullopt, 10, 3, {kB1, kB2}};
    auto m = std::get<FetchReply>(RoundTrip(1, r));
    EXPECT_TRUE(m.ok);
    EXPECT_FALSE(m.snapshot.has_value());
    EXPECT_EQ(m.batches, (std::vector<Batch>{kB1, kB2}));
    r.snapshot = Snapshot{10, 3, 1000, "state"};
    m = std::get<FetchReply>(RoundTrip(1, r));
    ASSERT_TRUE(m.snapshot.has_value());
    EXPECT_EQ(m.snapshot->lsn, 10u);
    EXPECT_EQ(m.snapshot->epoch, 3u);
    EXPECT_EQ(m.snapshot->hlc, 1000u);
    EXPECT_EQ(m.snapshot->state, "state");
  }
  {
    auto m = std::get<InstallSnapshot>(RoundTrip(1, InstallSnapshot{8, Snapshot{20, 7, 5, "s"}}));
    EXPECT_EQ(m.epoch, 8u);
    EXPECT_EQ(m.snapshot.lsn, 20u);
    EXPECT_EQ(m.snapshot.state, "s");
  }
  {
    auto m = std::get<Heartbeat>(RoundTrip(1, Heartbeat{9, 41}));
    EXPECT_EQ(m.epoch, 9u);
    EXPECT_EQ(m.commit_lsn, 41u);
  }
}

TEST(ReplicationWireTest, AMessageWithoutABodyIsRefused) {
  ipb::ReplicationMessage empty;
  empty.set_shard(3);
  Result<std::pair<ShardNo, Message>> r = FromProto(empty);
  EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
}

TEST(ReplicationWireTest, RebuildTransfersRoundTripAndAreNotProtocolMessages) {
  ipb::ReplicationMessage wire;
  ToProto(4, Transfer{RebuildChunk{77, 3, 9, true, std::string("a\0b", 3)}}, &wire);
  ipb::ReplicationMessage parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire.SerializeAsString()));
  ASSERT_TRUE(IsTransfer(parsed));
  EXPECT_EQ(parsed.shard(), 4u);
  EXPECT_EQ(FromProto(parsed).status().code(), StatusCode::kBadRequest);
  const Transfer t = TransferFromProto(parsed);
  const auto* c = std::get_if<RebuildChunk>(&t);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->rebuild, 77u);
  EXPECT_EQ(c->seq, 3u);
  EXPECT_EQ(c->epoch, 9u);
  EXPECT_TRUE(c->last);
  EXPECT_EQ(c->payload, std::string("a\0b", 3));

  ToProto(5, Transfer{RebuildAck{77, 3, true}}, &wire);
  ASSERT_TRUE(IsTransfer(wire));
  const Transfer a = TransferFromProto(wire);
  const auto* ack = std::get_if<RebuildAck>(&a);
  ASSERT_NE(ack, nullptr);
  EXPECT_EQ(ack->rebuild, 77u);
  EXPECT_EQ(ack->seq, 3u);
  EXPECT_TRUE(ack->ok);

  ToProto(5, Message{PromiseRequest{2}}, &wire);
  EXPECT_FALSE(IsTransfer(wire));
}

}  // namespace
}  // namespace iris::cluster::repl
