#pragma once
// A deterministic simulation of one shard's replicas (cluster/replication/replica.h): N
// simulated nodes, a simulated etcd (a linearizable register with compare-and-swap and a
// lease with a TTL on simulated time), a simulated network and WAL, and clients that append
// with idempotency keys and retry. One std::mt19937_64 seeded with the run's seed drives
// every choice, so a seed replays exactly.
//
// Faults while the run is in its fault phase: message loss, duplication and reordering,
// partitions (between nodes and between a node and etcd), crashes that lose the unsynced
// WAL tail, wipes (a crash that loses the node's whole durable state, as a replaced disk:
// at most one node at a time has lost its log, i.e. is amnesiac until levelled; more
// would be more failures than N = 3, W = 2 tolerates), pauses longer than the lease
// (SIGSTOP), clock skew and jumps, log compaction (so that a node away long enough needs a
// rebuild), and replica moves (one seed in three: a spare node replaces a seeded member
// through the record's target; the member moved out is deleted after the switch and becomes
// the spare). Then everything heals and the run
// continues until every client is done and the replicas agree, or a deadline passes.
//
// The checker holds a model of every acknowledged append and reports the first violation
// of CLUSTER.md section 2:
//   G1  every acknowledged append is, exactly once, in the log of every serving replica;
//       a committed lsn never changes its batch.
//   G2  batch HLCs strictly increase along the log; each batch's payload and HLC arrive
//       unchanged on every replica.
//   G3  acknowledged only once W copies are durable (the W = 1 mutation breaks it; G1
//       finds the loss).
//   G4  one primary acknowledges per epoch; whatever a deposed primary acknowledges after
//       its successor's epoch exists is in the successor's log (it cannot reach W anew).
//   progress: once healed, every client's appends are acknowledged and replicas converge.
//
// Thread-safety: one Simulation per thread.

#include <cstdint>
#include <string>

#include "cluster/replication/replica.h"

namespace iris::cluster::repl::sim {

struct SimConfig {
  uint64_t seed = 1;
  size_t replicas = 3;
  size_t write_quorum = 2;
  Mutations mutations;
  bool trace = false;  // keep a human-readable trace of the run
  int clients = 3;
  int appends_per_client = 12;
  int64_t fault_ms = 5000;  // faults happen in [0, fault_ms)
  int64_t heal_ms = 15000;  // then no faults for at most this long
  // One seed in three has a spare node and moves replicas (the record's target) while the
  // faults run.
  bool moves = true;
};

struct SimResult {
  bool ok = true;
  std::string violation;  // the first violation, with the sim time
  std::string trace;      // when SimConfig::trace
  // Figures of the run.
  uint64_t acked = 0;
  uint64_t late_acks = 0;  // acknowledged by a primary after a later epoch existed
  uint64_t failovers = 0;  // epochs won in etcd
  uint64_t rebuilds = 0;
  uint64_t crashes = 0;
  uint64_t wipes = 0;  // of the crashes, those that lost the whole durable state
  uint64_t moves_started = 0;  // targets set
  uint64_t moves = 0;          // switches won in etcd
  uint64_t events = 0;
  int64_t end_ms = 0;
};

SimResult RunSimulation(const SimConfig& config);

}  // namespace iris::cluster::repl::sim
