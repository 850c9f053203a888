#include "cluster/replication/replication_wire.h"

namespace iris::cluster::repl {
namespace ipb = internal::v1;
namespace {

void BatchTo(const Batch& b, ipb::ReplBatch* out) {
  out->set_epoch(b.epoch);
  out->set_lsn(b.lsn);
  out->set_hlc(b.hlc);
  out->set_payload(b.payload);
}
Batch BatchFrom(const ipb::ReplBatch& b) { return Batch{b.epoch(), b.lsn(), b.hlc(), b.payload()}; }
void SnapshotTo(const Snapshot& s, ipb::ReplSnapshot* out) {
  out->set_lsn(s.lsn);
  out->set_epoch(s.epoch);
  out->set_hlc(s.hlc);
  out->set_state(s.state);
}
Snapshot SnapshotFrom(const ipb::ReplSnapshot& s) {
  return Snapshot{s.lsn(), s.epoch(), s.hlc(), s.state()};
}
template <typename Repeated>
std::vector<Batch> BatchesFrom(const Repeated& in) {
  std::vector<Batch> out;
  out.reserve(static_cast<size_t>(in.size()));
  for (const ipb::ReplBatch& b : in) out.push_back(BatchFrom(b));
  return out;
}

}  // namespace

void ToProto(ShardNo shard, const Message& message, ipb::ReplicationMessage* out) {
  out->Clear();
  out->set_shard(shard);
  std::visit(
      [out](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, ShipBatch>) {
          ipb::ReplShipBatch* p = out->mutable_ship_batch();
          p->set_epoch(m.epoch);
          BatchTo(m.batch, p->mutable_batch());
          p->set_commit_lsn(m.commit_lsn);
        } else if constexpr (std::is_same_v<T, BatchAck>) {
          ipb::ReplBatchAck* p = out->mutable_batch_ack();
          p->set_epoch(m.epoch);
          p->set_ok(m.ok);
          p->set_durable_lsn(m.durable_lsn);
          p->set_promised(m.promised);
          p->set_commit_lsn(m.commit_lsn);
          p->set_matched_lsn(m.matched_lsn);
        } else if constexpr (std::is_same_v<T, Level>) {
          ipb::ReplLevel* p = out->mutable_level();
          p->set_epoch(m.epoch);
          p->set_from_lsn(m.from_lsn);
          p->set_from_epoch(m.from_epoch);
          for (const Batch& b : m.batches) BatchTo(b, p->add_batches());
          p->set_commit_lsn(m.commit_lsn);
          p->set_last_lsn(m.last_lsn);
        } else if constexpr (std::is_same_v<T, PromiseRequest>) {
          out->mutable_promise_request()->set_epoch(m.epoch);
        } else if constexpr (std::is_same_v<T, Promise>) {
          ipb::ReplPromise* p = out->mutable_promise();
          p->set_epoch(m.epoch);
          p->set_granted(m.granted);
          p->set_promised(m.promised);
          p->set_accepted(m.accepted);
          p->set_durable_lsn(m.durable_lsn);
          p->set_commit_lsn(m.commit_lsn);
        } else if constexpr (std::is_same_v<T, FetchRequest>) {
          ipb::ReplFetchRequest* p = out->mutable_fetch_request();
          p->set_epoch(m.epoch);
          p->set_from_lsn(m.from_lsn);
          p->set_from_epoch(m.from_epoch);
        } else if constexpr (std::is_same_v<T, FetchReply>) {
          ipb::ReplFetchReply* p = out->mutable_fetch_reply();
          p->set_epoch(m.epoch);
          p->set_ok(m.ok);
          if (m.snapshot) SnapshotTo(*m.snapshot, p->mutable_snapshot());
          p->set_from_lsn(m.from_lsn);
          p->set_from_epoch(m.from_epoch);
          for (const Batch& b : m.batches) BatchTo(b, p->add_batches());
        } else if constexpr (std::is_same_v<T, InstallSnapshot>) {
          ipb::ReplInstallSnapshot* p = out->mutable_install_snapshot();
          p->set_epoch(m.epoch);
          SnapshotTo(m.snapshot, p->mutable_snapshot());
        } else if constexpr (std::is_same_v<T, Heartbeat>) {
          ipb::ReplHeartbeat* p = out->mutable_heartbeat();
          p->set_epoch(m.epoch);
          p->set_commit_lsn(m.commit_lsn);
        }
      },
      message);
}

Result<std::pair<ShardNo, Message>> FromProto(const ipb::ReplicationMessage& in) {
  Message m;
  switch (in.body_case()) {
    case ipb::ReplicationMessage::kShipBatch: {
      const ipb::ReplShipBatch& p = in.ship_batch();
      m = ShipBatch{p.epoch(), BatchFrom(p.batch()), p.commit_lsn()};
      break;
    }
    case ipb::ReplicationMessage::kBatchAck: {
      const ipb::ReplBatchAck& p = in.batch_ack();
      m = BatchAck{p.epoch(),    p.ok(),         p.durable_lsn(),
                   p.promised(), p.commit_lsn(), p.matched_lsn()};
      break;
    }
    case ipb::ReplicationMessage::kLevel: {
      const ipb::ReplLevel& p = in.level();
      m = Level{p.epoch(),      p.from_lsn(),   p.from_epoch(), BatchesFrom(p.batches()),
                p.commit_lsn(), p.last_lsn()};
      break;
    }
    case ipb::ReplicationMessage::kPromiseRequest:
      m = PromiseRequest{in.promise_request().epoch()};
      break;
    case ipb::ReplicationMessage::kPromise: {
      const ipb::ReplPromise& p = in.promise();
      m = Promise{p.epoch(),    p.granted(),     p.promised(),
                  p.accepted(), p.durable_lsn(), p.commit_lsn()};
      break;
    }
    case ipb::ReplicationMessage::kFetchRequest: {
      const ipb::ReplFetchRequest& p = in.fetch_request();
      m = FetchRequest{p.epoch(), p.from_lsn(), p.from_epoch()};
      break;
    }
    case ipb::ReplicationMessage::kFetchReply: {
      const ipb::ReplFetchReply& p = in.fetch_reply();
      FetchReply r;
      r.epoch = p.epoch();
      r.ok = p.ok();
      if (p.has_snapshot()) r.snapshot = SnapshotFrom(p.snapshot());
      r.from_lsn = p.from_lsn();
      r.from_epoch = p.from_epoch();
      r.batches = BatchesFrom(p.batches());
      m = std::move(r);
      break;
    }
    case ipb::ReplicationMessage::kInstallSnapshot: {
      const ipb::ReplInstallSnapshot& p = in.install_snapshot();
      m = InstallSnapshot{p.epoch(), SnapshotFrom(p.snapshot())};
      break;
    }
    case ipb::ReplicationMessage::kHeartbeat:
      m = Heartbeat{in.heartbeat().epoch(), in.heartbeat().commit_lsn()};
      break;
    case ipb::ReplicationMessage::kRebuildChunk:
    case ipb::ReplicationMessage::kRebuildAck:
      return BadRequest("a rebuild transfer is not a protocol message");
    case ipb::ReplicationMessage::BODY_NOT_SET:
      return BadRequest("replication message without a body (from a newer version?)");
  }
  return std::make_pair(in.shard(), std::move(m));
}

void ToProto(ShardNo shard, const Transfer& transfer, ipb::ReplicationMessage* out) {
  out->Clear();
  out->set_shard(shard);
  if (const auto* c = std::get_if<RebuildChunk>(&transfer)) {
    ipb::ReplRebuildChunk* p = out->mutable_rebuild_chunk();
    p->set_rebuild(c->rebuild);
    p->set_seq(c->seq);
    p->set_epoch(c->epoch);
    p->set_last(c->last);
    p->set_payload(c->payload);
    p->set_read_lsn(c->read_lsn);
  } else {
    const auto& a = std::get<RebuildAck>(transfer);
    ipb::ReplRebuildAck* p = out->mutable_rebuild_ack();
    p->set_rebuild(a.rebuild);
    p->set_seq(a.seq);
    p->set_ok(a.ok);
  }
}

bool IsTransfer(const ipb::ReplicationMessage& in) {
  return in.body_case() == ipb::ReplicationMessage::kRebuildChunk ||
         in.body_case() == ipb::ReplicationMessage::kRebuildAck;
}

Transfer TransferFromProto(const ipb::ReplicationMessage& in) {
  if (in.body_case() == ipb::ReplicationMessage::kRebuildChunk) {
    const ipb::ReplRebuildChunk& p = in.rebuild_chunk();
    return RebuildChunk{p.rebuild(), p.seq(), p.epoch(), p.last(), p.payload(), p.read_lsn()};
  }
  const ipb::ReplRebuildAck& p = in.rebuild_ack();
  return RebuildAck{p.rebuild(), p.seq(), p.ok()};
}

}  // namespace iris::cluster::repl
