// Scenario tests of the replication state machine (cluster/replication/replica.h): single
// steps whose effects are checked one by one. The simulation covers the interleavings.

#include "cluster/replication/replica.h"

#include <gtest/gtest.h>

#include <vector>

namespace iris::cluster::repl {
namespace {

template <typename T>
std::vector<T> All(const std::vector<Effect>& effects) {
  std::vector<T> out;
  for (const Effect& e : effects) {
    if (const T* t = std::get_if<T>(&e)) out.push_back(*t);
  }
  return out;
}

template <typename M>
std::vector<M> Sent(const std::vector<Effect>& effects, NodeId to) {
  std::vector<M> out;
  for (const Send& s : All<Send>(effects)) {
    if (s.to != to) continue;
    if (const M* m = std::get_if<M>(&s.message)) out.push_back(*m);
  }
  return out;
}

Options Opts(NodeId self) {
  Options o;
  o.self = self;
  o.replicas = {1, 2, 3};
  o.write_quorum = 2;
  return o;
}

// Node 1 wins epoch 1 of an empty shard with node 2's promise.
Replica MakePrimary() {
  Replica r(Opts(1), DurableState{});
  (void)r.Step(Tick{0});
  (void)r.Step(EtcdWatch{ShardRecord{1, 0, 0, false}});
  std::vector<Effect> fx = r.Step(Tick{1000});
  EXPECT_EQ(r.role(), Role::kCandidate);
  EXPECT_EQ(Sent<PromiseRequest>(fx, 2).size(), 1u);
  fx = r.Step(Receive{2, Promise{1, true, 1, 0, 0, 0}});
  EXPECT_EQ(All<EtcdCas>(fx).size(), 1u);
  (void)r.Step(EtcdTxnResult{1, true, ShardRecord{2, 1, 1, true}});
  EXPECT_EQ(r.role(), Role::kPrimary);
  return r;
}

TEST(ReplicaTest, PrimaryAcknowledgesOnlyOnceWCopiesAreDurable) {
  Replica p = MakePrimary();
  std::vector<Effect> fx = p.Step(ClientAppend{7, "m1", 100});
  ASSERT_EQ(All<WalAppend>(fx).size(), 1u);
  EXPECT_EQ(Sent<ShipBatch>(fx, 2).size(), 1u);
  EXPECT_EQ(Sent<ShipBatch>(fx, 3).size(), 1u);
  // The primary's own copy alone: nothing committed.
  fx = p.Step(WalSynced{1});
  EXPECT_TRUE(All<Commit>(fx).empty());
  EXPECT_TRUE(All<Acknowledge>(fx).empty());
  // A second durable copy: committed and acknowledged.
  fx = p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  ASSERT_EQ(All<Acknowledge>(fx).size(), 1u);
  EXPECT_EQ(All<Acknowledge>(fx)[0].request_ids, std::vector<uint64_t>{7});
  EXPECT_EQ(p.CommitLsn(), 1u);
}

TEST(ReplicaTest, BackupAcknowledgesOnlyAfterItsWalSync) {
  Replica b(Opts(2), DurableState{});
  std::vector<Effect> fx = b.Step(Receive{1, Level{1, 0, 0, {}, 0}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);  // levelled (empty log): follows epoch 1
  EXPECT_EQ(b.accepted(), 1u);
  fx = b.Step(Receive{1, ShipBatch{1, Batch{1, 1, 100, "m1"}, 0}});
  EXPECT_EQ(All<WalAppend>(fx).size(), 1u);
  EXPECT_TRUE(Sent<BatchAck>(fx, 1).empty());
  fx = b.Step(WalSynced{1});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_TRUE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].durable_lsn, 1u);
}

// A Level longer than max_level_bytes goes in pieces. A piece does not truncate what the
// backup holds beyond it (that may be committed) and does not make it follow the epoch;
// the backup answers with how far it matches, and the last piece is a whole Level.
TEST(ReplicaTest, ALongLevelGoesInPiecesAndOnlyTheLastOneIsFollowed) {
  // The backup holds batches 1..4 of epoch 1 (the same as the primary's, committed).
  DurableState held;
  held.promised = 1;
  held.accepted = 1;
  for (Lsn l = 1; l <= 4; ++l) held.batches.push_back(Batch{1, l, 100 + l, "m" + std::to_string(l)});
  Replica b(Opts(2), held);
  (void)b.Step(WalSynced{4});
  // A piece of epoch 2 holding 1..2 of a log that ends at 6.
  std::vector<Effect> fx = b.Step(
      Receive{1, Level{2, 0, 0, {held.batches[0], held.batches[1]}, 2, /*last_lsn=*/6}});
  EXPECT_TRUE(All<WalTruncate>(fx).empty()) << "a piece truncated what lies beyond it";
  EXPECT_EQ(b.LastLsn(), 4u);
  EXPECT_EQ(b.accepted(), 1u);
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].matched_lsn, 2u);
  // A whole Level of the same primary, delayed, that ends below the commit point the piece
  // brought: stale, refused (it would cut batches this backup may have applied).
  fx = b.Step(Receive{1, Level{2, 0, 0, {held.batches[0]}, 1, 1}});
  EXPECT_TRUE(All<WalTruncate>(fx).empty()) << "a stale Level cut committed batches";
  EXPECT_EQ(b.LastLsn(), 4u);
  EXPECT_EQ(b.accepted(), 1u);
  // The last piece: from 2, batches 3..6 (5 and 6 of epoch 2): followed once durable.
  fx = b.Step(Receive{1, Level{2, 2, 1, {held.batches[2], held.batches[3], Batch{2, 5, 205, "n5"},
                                        Batch{2, 6, 206, "n6"}},
                               4, 6}});
  EXPECT_EQ(b.LastLsn(), 6u);
  fx = b.Step(WalSynced{6});
  EXPECT_EQ(b.accepted(), 2u);
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_TRUE(Sent<BatchAck>(fx, 1)[0].ok);

  // The primary's side: with max_level_bytes of 4, a lagging peer gets one batch per Level
  // and the next piece starts where the backup says it matches.
  Options o = Opts(1);
  o.max_level_bytes = 4;
  Replica p(o, DurableState{});
  (void)p.Step(Tick{0});
  (void)p.Step(EtcdWatch{ShardRecord{1, 0, 0, false}});
  (void)p.Step(Tick{1000});
  (void)p.Step(Receive{2, Promise{1, true, 1, 0, 0, 0}});
  (void)p.Step(EtcdTxnResult{1, true, ShardRecord{2, 1, 1, true}});
  ASSERT_EQ(p.role(), Role::kPrimary);
  for (uint64_t i = 1; i <= 3; ++i) (void)p.Step(ClientAppend{i, "abc", 100 + i});
  (void)p.Step(WalSynced{3});
  (void)p.Step(Tick{1030});  // past the Level pacing (a quarter of retransmit_ms)
  fx = p.Step(Receive{3, BatchAck{1, false, 0, 1, 0, 0}});
  ASSERT_EQ(Sent<Level>(fx, 3).size(), 1u);
  EXPECT_EQ(Sent<Level>(fx, 3)[0].from_lsn, 0u);
  EXPECT_EQ(Sent<Level>(fx, 3)[0].batches.size(), 1u);
  EXPECT_EQ(Sent<Level>(fx, 3)[0].last_lsn, 3u);
  (void)p.Step(Tick{1060});
  fx = p.Step(Receive{3, BatchAck{1, false, 0, 1, 0, 1}});
  ASSERT_EQ(Sent<Level>(fx, 3).size(), 1u);
  EXPECT_EQ(Sent<Level>(fx, 3)[0].from_lsn, 1u);
  EXPECT_EQ(Sent<Level>(fx, 3)[0].batches.size(), 1u);
}

TEST(ReplicaTest, BackupRefusesBatchesOlderThanItsPromise) {
  Replica b(Opts(2), DurableState{});
  (void)b.Step(Receive{1, Level{1, 0, 0, {}, 0}});
  std::vector<Effect> fx = b.Step(Receive{3, PromiseRequest{2}});
  ASSERT_EQ(Sent<Promise>(fx, 3).size(), 1u);
  EXPECT_TRUE(Sent<Promise>(fx, 3)[0].granted);
  ASSERT_FALSE(All<PersistMeta>(fx).empty());  // the promise is durable before it leaves
  fx = b.Step(Receive{1, ShipBatch{1, Batch{1, 1, 100, "m1"}, 0}});
  EXPECT_TRUE(All<WalAppend>(fx).empty());
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].promised, 2u);
}

TEST(ReplicaTest, DeposedPrimaryAcknowledgesNothing) {
  Replica p = MakePrimary();
  (void)p.Step(ClientAppend{7, "m1", 100});
  (void)p.Step(WalSynced{1});
  // A backup promised epoch 2 to someone else and says so.
  std::vector<Effect> fx = p.Step(Receive{3, BatchAck{1, false, 0, 2, 0}});
  EXPECT_EQ(p.role(), Role::kDeposed);
  ASSERT_EQ(All<Refuse>(fx).size(), 1u);
  EXPECT_EQ(All<Refuse>(fx)[0].status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(All<EtcdRevoke>(fx).size(), 1u);
  // A late ok from the other backup commits nothing any more.
  fx = p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  EXPECT_TRUE(All<Commit>(fx).empty());
  EXPECT_TRUE(All<Acknowledge>(fx).empty());
  fx = p.Step(ClientAppend{8, "m2", 200});
  ASSERT_EQ(All<Refuse>(fx).size(), 1u);
}

// A primary cut off from both backups but not from etcd would keep its lease, and the shard
// unwritable, for as long as the cut lasts. With stall_depose_ms it steps down (refuses
// what waits, revokes its lease) so that the backups can elect a primary that reaches them:
// when no backup has answered for that long (it sends Heartbeats every keepalive_ms, so an
// idle shard is covered too), or when its oldest uncommitted batch has waited that long.
Replica MakeStallingPrimary() {
  Options o = Opts(1);
  o.stall_depose_ms = 3'000;
  Replica p(o, DurableState{});
  (void)p.Step(Tick{0});
  (void)p.Step(EtcdWatch{ShardRecord{1, 0, 0, false}});
  (void)p.Step(Tick{1000});
  (void)p.Step(Receive{2, Promise{1, true, 1, 0, 0, 0}});
  (void)p.Step(EtcdTxnResult{1, true, ShardRecord{2, 1, 1, true}});
  EXPECT_EQ(p.role(), Role::kPrimary);
  return p;
}

TEST(ReplicaTest, PrimaryThatHearsNoBackupStepsDown) {
  Replica p = MakeStallingPrimary();
  // Idle for a minute, node 2 answering the heartbeats: it stays.
  size_t heartbeats = 0;
  for (int64_t t = 1500; t <= 61'000; t += 500) {
    std::vector<Effect> fx = p.Step(Tick{t});
    heartbeats += Sent<Heartbeat>(fx, 2).size();
    (void)p.Step(Receive{2, BatchAck{1, true, 0, 1, 0}});
  }
  EXPECT_EQ(p.role(), Role::kPrimary);
  EXPECT_GE(heartbeats, 100u);
  // Then nobody answers: still primary within the bound, deposed after it.
  std::vector<Effect> fx = p.Step(Tick{63'500});
  EXPECT_EQ(p.role(), Role::kPrimary);
  fx = p.Step(Tick{64'100});
  EXPECT_EQ(p.role(), Role::kDeposed);
  EXPECT_EQ(All<EtcdRevoke>(fx).size(), 1u);
}

TEST(ReplicaTest, PrimaryThatCannotCommitStepsDown) {
  Replica p = MakeStallingPrimary();
  // A batch committed within the bound: it stays.
  (void)p.Step(ClientAppend{7, "m1", 100});
  (void)p.Step(WalSynced{1});
  (void)p.Step(Tick{2000});
  (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  ASSERT_EQ(p.CommitLsn(), 1u);
  // The next batch never becomes durable on a backup, though node 2 keeps answering.
  (void)p.Step(ClientAppend{8, "m2", 200});
  (void)p.Step(WalSynced{2});
  std::vector<Effect> fx;
  for (int64_t t = 2500; t <= 4500; t += 500) {
    fx = p.Step(Tick{t});
    (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  }
  EXPECT_EQ(p.role(), Role::kPrimary);  // 2.5 s: still within the bound
  EXPECT_TRUE(All<Refuse>(fx).empty());
  fx = p.Step(Tick{5100});
  EXPECT_EQ(p.role(), Role::kDeposed);
  ASSERT_EQ(All<Refuse>(fx).size(), 1u);
  EXPECT_EQ(All<Refuse>(fx)[0].request_ids, std::vector<uint64_t>{8});
  EXPECT_EQ(All<Refuse>(fx)[0].status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(All<EtcdRevoke>(fx).size(), 1u);
  EXPECT_TRUE(All<Acknowledge>(fx).empty());
}

// With the other backup down, a primary whose only reachable backup takes longer than
// stall_depose_ms to be levelled (or rebuilt) must not step down: the next epoch would start
// the copy over, forever. Commits resume once the backup is in sync.
TEST(ReplicaTest, PrimaryLevellingItsOnlyReachableBackupDoesNotStepDown) {
  Replica p = MakeStallingPrimary();
  (void)p.Step(ClientAppend{7, "m1", 100});
  (void)p.Step(WalSynced{1});
  // Node 2 answers "level me" for 12 s (a long catch-up); node 3 never answers.
  for (int64_t t = 1500; t <= 13'000; t += 500) {
    std::vector<Effect> fx = p.Step(Tick{t});
    EXPECT_TRUE(All<Refuse>(fx).empty()) << "at " << t;
    (void)p.Step(Receive{2, BatchAck{1, false, 0, 1, 0, 0}});
  }
  EXPECT_EQ(p.role(), Role::kPrimary);
  // In sync at last: the batch commits.
  std::vector<Effect> fx = p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  EXPECT_EQ(All<Acknowledge>(fx).size(), 1u);
  // From now on a batch that waits stall_depose_ms does depose it.
  (void)p.Step(ClientAppend{8, "m2", 200});
  (void)p.Step(WalSynced{2});
  for (int64_t t = 13'500; t <= 15'500; t += 500) {
    (void)p.Step(Tick{t});
    (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 1}});
  }
  EXPECT_EQ(p.role(), Role::kPrimary);
  (void)p.Step(Tick{16'100});
  EXPECT_EQ(p.role(), Role::kDeposed);
}

// The same when the other backup was in sync but went silent (it died): it no longer
// counts as in sync, so the catch-up of the one still answering is not cut short either.
TEST(ReplicaTest, ABackupThatWentSilentWhileInSyncDoesNotCountAsInSync) {
  Replica p = MakeStallingPrimary();
  (void)p.Step(Tick{1200});
  (void)p.Step(Receive{3, BatchAck{1, true, 0, 1, 0}});  // node 3 in sync...
  (void)p.Step(ClientAppend{7, "m1", 100});
  (void)p.Step(WalSynced{1});
  // ...then silent; node 2 answers "level me" for 12 s.
  for (int64_t t = 1500; t <= 13'000; t += 500) {
    (void)p.Step(Tick{t});
    (void)p.Step(Receive{2, BatchAck{1, false, 0, 1, 0, 0}});
  }
  EXPECT_EQ(p.role(), Role::kPrimary);
  std::vector<Effect> fx = p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  EXPECT_EQ(All<Acknowledge>(fx).size(), 1u);
}

// A backup in the middle of a pieced Level answers a Heartbeat or an early ShipBatch of that
// primary with "level me" from where the pieces got to, not from its commit point (which
// sent the primary back to the start of the uncommitted tail each keep-alive period).
// A follower that misses a batch says its whole log matches.
TEST(ReplicaTest, LevelMeReportsHowFarTheLogIsKnownToMatch) {
  DurableState held;
  held.promised = 1;
  held.accepted = 1;
  for (Lsn l = 1; l <= 4; ++l) held.batches.push_back(Batch{1, l, 100 + l, "m" + std::to_string(l)});
  Replica b(Opts(2), held);
  (void)b.Step(WalSynced{4});
  // A piece of epoch 2 holding 1..3 of a log that ends at 6; nothing committed yet.
  (void)b.Step(Receive{1, Level{2, 0, 0, {held.batches[0], held.batches[1], held.batches[2]}, 0,
                                /*last_lsn=*/6}});
  std::vector<Effect> fx = b.Step(Receive{1, Heartbeat{2, 0}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].matched_lsn, 3u);
  fx = b.Step(Receive{1, ShipBatch{2, Batch{2, 7, 207, "n7"}, 0}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].matched_lsn, 3u);
  // Another primary's (older) epoch learns nothing: it is fenced.
  fx = b.Step(Receive{3, Heartbeat{1, 0}});
  ASSERT_EQ(Sent<BatchAck>(fx, 3).size(), 1u);
  EXPECT_EQ(Sent<BatchAck>(fx, 3)[0].matched_lsn, 0u);
  EXPECT_EQ(Sent<BatchAck>(fx, 3)[0].promised, 2u);
  // A Level whose start this log does not hold (a wrong belief of the primary): nothing is
  // claimed, so the next Level starts from the commit point.
  fx = b.Step(Receive{1, Level{2, 3, 2, {Batch{2, 4, 204, "x"}}, 0, 6}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].matched_lsn, 0u);
  // The last piece: follows epoch 2 with 1..6; a gap after it reports 6.
  (void)b.Step(Receive{1, Level{2, 3, 1, {held.batches[3], Batch{2, 5, 205, "n5"},
                                          Batch{2, 6, 206, "n6"}},
                                0, 6}});
  (void)b.Step(WalSynced{6});
  ASSERT_EQ(b.accepted(), 2u);
  fx = b.Step(Receive{1, ShipBatch{2, Batch{2, 8, 208, "n8"}, 0}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].matched_lsn, 6u);
}

// A restarted replica starts its commit point at what its store applied (committed), not at
// its snapshot: its "level me" then names that point, from which a primary whose log starts
// after this replica's snapshot can level it without a rebuild (whose chunks this replica
// would refuse when its store is ahead of that primary's). Never beyond its own log.
TEST(ReplicaTest, ARestartedReplicaStartsFromTheCommitItsStoreApplied) {
  DurableState held;
  held.promised = 1;
  held.accepted = 1;
  for (Lsn l = 1; l <= 5; ++l)
    held.batches.push_back(Batch{1, l, 100 + l, "m" + std::to_string(l)});
  held.committed = 4;
  Replica b(Opts(2), held);
  EXPECT_EQ(b.CommitLsn(), 4u);
  // A batch with a gap: it asks to be levelled, from its commit point.
  std::vector<Effect> fx = b.Step(Receive{1, ShipBatch{1, Batch{1, 7, 107, "m7"}, 6}});
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].commit_lsn, 4u);
  held.committed = 9;  // a store ahead of the log (its last batches were never synced here)
  EXPECT_EQ(Replica(Opts(2), held).CommitLsn(), 5u);
  held.committed = 0;
  EXPECT_EQ(Replica(Opts(2), held).CommitLsn(), 0u);
}

// A replica that lost its log (a wiped data directory) in a shard that has had a primary
// grants no promise and stands for no election; it asks the primary it knows of to level
// it, and once it follows that primary's epoch (the whole Level durable) it votes again.
TEST(ReplicaTest, AnAmnesiacReplicaDoesNotVoteUntilAPrimaryLevelledIt) {
  DurableState wiped;
  wiped.amnesiac = true;
  Replica b(Opts(2), wiped);
  (void)b.Step(Tick{0});
  (void)b.Step(EtcdWatch{ShardRecord{5, 3, 1, false}});  // epoch 3, its lease lapsed
  std::vector<Effect> fx = b.Step(Tick{5000});
  EXPECT_EQ(b.role(), Role::kBackup);  // no candidacy
  EXPECT_EQ(b.promised(), 3u);  // the record's epoch: older primaries are fenced
  fx = b.Step(Receive{3, PromiseRequest{4}});
  ASSERT_EQ(Sent<Promise>(fx, 3).size(), 1u);
  EXPECT_FALSE(Sent<Promise>(fx, 3)[0].granted);
  EXPECT_EQ(b.promised(), 3u);
  // Node 3 won epoch 4 (with node 1's promise): the amnesiac asks it to be levelled.
  (void)b.Step(EtcdWatch{ShardRecord{6, 4, 3, true}});
  fx = b.Step(Tick{5200});
  ASSERT_EQ(Sent<BatchAck>(fx, 3).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 3)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 3)[0].epoch, 4u);
  fx = b.Step(Receive{3, Level{4, 0, 0, {Batch{2, 1, 101, "m1"}, Batch{4, 2, 102, "m2"}}, 1}});
  EXPECT_TRUE(b.amnesiac());
  for (const PersistMeta& m : All<PersistMeta>(fx)) EXPECT_TRUE(m.amnesiac);  // until levelled
  fx = b.Step(WalSynced{2});
  EXPECT_EQ(b.accepted(), 4u);
  EXPECT_FALSE(b.amnesiac());
  ASSERT_FALSE(All<PersistMeta>(fx).empty());
  EXPECT_FALSE(All<PersistMeta>(fx).back().amnesiac);
  fx = b.Step(Receive{1, PromiseRequest{5}});
  ASSERT_EQ(Sent<Promise>(fx, 1).size(), 1u);
  EXPECT_TRUE(Sent<Promise>(fx, 1)[0].granted);
}

// An amnesiac replica also lost the promise it made. A primary deposed while the replica was
// down (node 1, epoch 3; node 3 won epoch 4 with the replica's promise) must not level it
// and reach W through it: until etcd's record (read after the start) gives it its promise
// back, it takes nothing from a primary; then the old epoch is fenced.
TEST(ReplicaTest, AnAmnesiacReplicaTakesNothingFromADeposedPrimary) {
  DurableState wiped;
  wiped.amnesiac = true;
  Replica b(Opts(2), wiped);
  (void)b.Step(Tick{0});
  std::vector<Effect> fx =
      b.Step(Receive{1, Level{3, 0, 0, {Batch{3, 1, 101, "stale"}}, 0}});  // before etcd
  EXPECT_TRUE(All<WalAppend>(fx).empty());
  EXPECT_TRUE(All<Send>(fx).empty());
  EXPECT_EQ(b.promised(), 0u);
  fx = b.Step(EtcdWatch{ShardRecord{9, 4, 3, true}});
  EXPECT_EQ(b.promised(), 4u);
  ASSERT_FALSE(All<PersistMeta>(fx).empty());
  EXPECT_TRUE(All<PersistMeta>(fx).back().amnesiac);
  fx = b.Step(Receive{1, Level{3, 0, 0, {Batch{3, 1, 101, "stale"}}, 0}});
  EXPECT_TRUE(All<WalAppend>(fx).empty());
  ASSERT_EQ(Sent<BatchAck>(fx, 1).size(), 1u);
  EXPECT_FALSE(Sent<BatchAck>(fx, 1)[0].ok);
  EXPECT_EQ(Sent<BatchAck>(fx, 1)[0].promised, 4u);  // deposes node 1
  fx = b.Step(Receive{1, ShipBatch{3, Batch{3, 2, 102, "stale2"}, 0}});
  EXPECT_TRUE(All<WalAppend>(fx).empty());
  EXPECT_EQ(b.accepted(), 0u);
}

TEST(ReplicaTest, CandidateNeedsAPromiseQuorumBeforeItsCas) {
  Replica r(Opts(1), DurableState{});
  (void)r.Step(Tick{0});
  (void)r.Step(EtcdWatch{ShardRecord{1, 0, 0, false}});
  std::vector<Effect> fx = r.Step(Tick{1000});
  EXPECT_TRUE(All<EtcdCas>(fx).empty());                   // its own promise is not enough
  fx = r.Step(Receive{2, Promise{1, false, 5, 0, 0, 0}});  // refused: promised 5 elsewhere
  EXPECT_TRUE(All<EtcdCas>(fx).empty());
  EXPECT_EQ(r.role(), Role::kBackup);
}

TEST(ReplicaTest, CandidateFetchesTheHighestLogBeforeItsCas) {
  Replica r(Opts(1), DurableState{});
  (void)r.Step(Tick{0});
  (void)r.Step(EtcdWatch{ShardRecord{1, 3, 3, false}});  // epoch 3's primary lapsed
  (void)r.Step(Tick{1000});
  ASSERT_EQ(r.role(), Role::kCandidate);
  // Node 2 followed epoch 3 up to lsn 2: it holds more than this candidate.
  std::vector<Effect> fx = r.Step(Receive{2, Promise{4, true, 4, 3, 2, 0}});
  EXPECT_TRUE(All<EtcdCas>(fx).empty());
  ASSERT_EQ(Sent<FetchRequest>(fx, 2).size(), 1u);
  fx = r.Step(Receive{
      2, FetchReply{4, true, std::nullopt, 0, 0, {Batch{3, 1, 10, "a"}, Batch{3, 2, 20, "b"}}}});
  EXPECT_EQ(All<WalAppend>(fx).size(), 1u);
  EXPECT_TRUE(All<EtcdCas>(fx).empty());  // not before the fetched tail is durable
  fx = r.Step(WalSynced{2});
  ASSERT_EQ(All<EtcdCas>(fx).size(), 1u);
  EXPECT_EQ(All<EtcdCas>(fx)[0].new_epoch, 4u);
}

// ---- Moving a replica (the record's target) ------------------------------------------------

ShardRecord Record(uint64_t revision, Epoch epoch, NodeId primary, bool live,
                   std::vector<NodeId> replicas, std::vector<NodeId> target = {}) {
  ShardRecord r{revision, epoch, primary, live};
  r.replicas = std::move(replicas);
  r.target = std::move(target);
  return r;
}

// Node 3 is replaced by node 4: the primary ships to node 4 as a learner (not counted for
// W), stops taking appends once it follows, switches only when it holds the whole log and
// everything is committed, then runs the new epoch with nodes 2 and 4.
TEST(ReplicaTest, APrimaryMovesAReplicaOnlyOnceTheLearnerHoldsItsLog) {
  Replica p = MakePrimary();
  (void)p.Step(ClientAppend{1, "m1", 101});
  (void)p.Step(WalSynced{1});
  (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  ASSERT_EQ(p.CommitLsn(), 1u);

  std::vector<Effect> fx = p.Step(EtcdWatch{Record(3, 1, 1, true, {1, 2, 3}, {1, 2, 4})});
  ASSERT_EQ(Sent<Level>(fx, 4).size(), 1u) << "the learner is levelled from the start";
  EXPECT_TRUE(All<EtcdSwitch>(fx).empty());

  fx = p.Step(ClientAppend{2, "m2", 102});
  EXPECT_EQ(Sent<ShipBatch>(fx, 4).size(), 1u) << "the learner gets new batches too";
  (void)p.Step(WalSynced{2});
  // The learner alone with the primary is not W: nothing commits on its ack.
  fx = p.Step(Receive{4, BatchAck{1, true, 2, 1, 0}});
  EXPECT_TRUE(All<Commit>(fx).empty()) << "a learner counted for W";
  EXPECT_TRUE(All<EtcdSwitch>(fx).empty()) << "switched before the log's end was committed";
  // It follows the log: appends wait (refused, retryable) until the switch.
  fx = p.Step(ClientAppend{3, "m3", 103});
  ASSERT_EQ(All<Refuse>(fx).size(), 1u);
  EXPECT_EQ(All<Refuse>(fx)[0].status.code(), StatusCode::kUnavailable);
  EXPECT_EQ(p.LastLsn(), 2u);
  // Batch 2 commits (node 2): the learner holds the whole log, the switch goes out.
  fx = p.Step(Receive{2, BatchAck{1, true, 2, 1, 0}});
  ASSERT_EQ(All<EtcdSwitch>(fx).size(), 1u);
  const EtcdSwitch sw = All<EtcdSwitch>(fx)[0];
  EXPECT_EQ(sw.revision, 3u);
  EXPECT_EQ(sw.expected_epoch, 1u);
  EXPECT_EQ(sw.new_epoch, 2u);
  EXPECT_EQ(sw.replicas, (std::vector<NodeId>{1, 2, 4}));
  EXPECT_TRUE(p.switching());

  fx = p.Step(EtcdTxnResult{2, true, Record(4, 2, 1, true, {1, 2, 4})});
  EXPECT_EQ(p.role(), Role::kPrimary);
  EXPECT_EQ(p.accepted(), 2u);
  EXPECT_FALSE(p.switching());
  ASSERT_EQ(All<PersistMeta>(fx).size(), 1u);
  EXPECT_EQ(All<PersistMeta>(fx)[0].accepted, 2u);
  EXPECT_EQ(Sent<Level>(fx, 2).size(), 1u);
  EXPECT_EQ(Sent<Level>(fx, 4).size(), 1u);
  EXPECT_TRUE(All<Send>(fx).size() == 2u) << "the node moved out still gets messages";

  // The new epoch: appends again, shipped to 2 and 4, and node 4's copy counts.
  fx = p.Step(ClientAppend{4, "m4", 104});
  EXPECT_EQ(Sent<ShipBatch>(fx, 4).size(), 1u);
  EXPECT_TRUE(Sent<ShipBatch>(fx, 3).empty());
  (void)p.Step(WalSynced{3});
  fx = p.Step(Receive{4, BatchAck{2, true, 3, 2, 0}});
  ASSERT_EQ(All<Acknowledge>(fx).size(), 1u);
  EXPECT_EQ(All<Acknowledge>(fx)[0].request_ids, std::vector<uint64_t>{4});
  // The old replica's answers no longer count.
  fx = p.Step(Receive{3, BatchAck{1, true, 3, 1, 0}});
  EXPECT_TRUE(All<Commit>(fx).empty());
}

// A move that takes the primary itself out: it switches to the new replicas without itself
// (its lease goes with the switch) and stops; the node moved out never runs for election.
TEST(ReplicaTest, APrimaryTheMoveTakesOutSwitchesWithoutItselfAndStops) {
  Replica p = MakePrimary();
  (void)p.Step(ClientAppend{1, "m1", 101});
  (void)p.Step(WalSynced{1});
  (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  std::vector<Effect> fx = p.Step(EtcdWatch{Record(3, 1, 1, true, {1, 2, 3}, {4, 2, 3})});
  ASSERT_EQ(Sent<Level>(fx, 4).size(), 1u);
  fx = p.Step(Receive{4, BatchAck{1, true, 1, 1, 0}});
  ASSERT_EQ(All<EtcdSwitch>(fx).size(), 1u);
  EXPECT_EQ(All<EtcdSwitch>(fx)[0].replicas, (std::vector<NodeId>{4, 2, 3}));
  // The answer is lost; the watch shows the switch applied (no primary, no lease).
  fx = p.Step(EtcdWatch{Record(4, 2, 0, false, {4, 2, 3})});
  EXPECT_EQ(p.role(), Role::kDeposed);
  EXPECT_TRUE(p.removed());
  EXPECT_TRUE(All<Send>(fx).empty());
  fx = p.Step(Tick{60'000});
  EXPECT_EQ(p.role(), Role::kDeposed) << "a node moved out ran for election";
  EXPECT_TRUE(All<Send>(fx).empty());
}

// A backup the record no longer lists does not run when the lease lapses; the learner of a
// move does not run either until the switch makes it a replica.
TEST(ReplicaTest, OnlyTheRecordsReplicasRunForElection) {
  Replica out(Opts(3), DurableState{1, 1, {}, {}});
  (void)out.Step(Tick{0});
  (void)out.Step(EtcdWatch{Record(9, 2, 1, false, {1, 2, 4})});
  std::vector<Effect> fx = out.Step(Tick{10'000});
  EXPECT_EQ(out.role(), Role::kBackup);
  EXPECT_TRUE(All<Send>(fx).empty());
  EXPECT_TRUE(out.removed());

  Options o = Opts(4);
  o.replicas = {1, 2, 3};
  DurableState fresh;
  fresh.amnesiac = false;  // (even a learner with a log does not run)
  Replica learner(o, fresh);
  (void)learner.Step(Tick{0});
  (void)learner.Step(EtcdWatch{Record(5, 1, 1, false, {1, 2, 3}, {1, 2, 4})});
  fx = learner.Step(Tick{10'000});
  EXPECT_EQ(learner.role(), Role::kBackup);
  EXPECT_FALSE(learner.removed());
  // Once the record lists it, it runs: promises from the record's replicas.
  (void)learner.Step(EtcdWatch{Record(6, 2, 0, false, {1, 2, 4})});
  fx = learner.Step(Tick{20'000});
  EXPECT_EQ(learner.role(), Role::kCandidate);
  EXPECT_EQ(Sent<PromiseRequest>(fx, 1).size(), 1u);
  EXPECT_EQ(Sent<PromiseRequest>(fx, 2).size(), 1u);
  EXPECT_TRUE(Sent<PromiseRequest>(fx, 3).empty());
}

// Review findings: the switch waits for the primary's own copy (a commit may count two
// backups before it), and the answer to an earlier, refused attempt is not taken for a
// later one's (each attempt has an epoch of its own).
TEST(ReplicaTest, ASwitchWaitsForThePrimarysOwnCopyAndIgnoresAnEarlierAttemptsAnswer) {
  Replica p = MakePrimary();
  (void)p.Step(EtcdWatch{Record(3, 1, 1, true, {1, 2, 3}, {1, 2, 4})});
  (void)p.Step(ClientAppend{1, "m1", 101});
  // Both backups hold it before the primary's WAL sync: committed, acknowledged.
  (void)p.Step(Receive{2, BatchAck{1, true, 1, 1, 0}});
  std::vector<Effect> fx = p.Step(Receive{3, BatchAck{1, true, 1, 1, 0}});
  ASSERT_EQ(p.CommitLsn(), 1u);
  fx = p.Step(Receive{4, BatchAck{1, true, 1, 1, 0}});
  EXPECT_TRUE(All<EtcdSwitch>(fx).empty()) << "switched before its own copy was durable";
  fx = p.Step(WalSynced{1});
  ASSERT_EQ(All<EtcdSwitch>(fx).size(), 1u);
  const Epoch first = All<EtcdSwitch>(fx)[0].new_epoch;
  EXPECT_EQ(first, 2u);
  // The controller moved node 2 out instead: the first attempt is refused; a second one
  // goes out at once with an epoch of its own.
  fx = p.Step(EtcdTxnResult{first, false, Record(4, 1, 1, true, {1, 2, 3}, {1, 4, 3})});
  ASSERT_EQ(All<EtcdSwitch>(fx).size(), 1u);
  const EtcdSwitch second = All<EtcdSwitch>(fx)[0];
  EXPECT_EQ(second.revision, 4u);
  EXPECT_GT(second.new_epoch, first);
  EXPECT_EQ(second.replicas, (std::vector<NodeId>{1, 4, 3}));
  // A late refusal of a resent copy of the first attempt: the second still holds appends.
  (void)p.Step(EtcdTxnResult{first, false, Record(4, 1, 1, true, {1, 2, 3}, {1, 4, 3})});
  EXPECT_TRUE(p.switching());
  fx = p.Step(ClientAppend{2, "m2", 102});
  ASSERT_EQ(All<Refuse>(fx).size(), 1u);
  EXPECT_EQ(p.LastLsn(), 1u);
}

}  // namespace
}  // namespace iris::cluster::repl
