#include "cluster/replication/shard_log.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <limits>
#include <set>

#include "common/assert.h"
#include "common/bytes.h"

namespace iris::cluster::repl {
namespace {

constexpr char kMetaTag = 'M';
constexpr char kSnapshotTag = 'S';
constexpr char kBatchTag = 'B';

void AppendBigEndian32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}
uint32_t GetBigEndian32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string ShardKey(char tag, ShardNo shard) {
  std::string k(1, tag);
  AppendBigEndian32(&k, shard);
  return k;
}
std::string BatchKey(ShardNo shard, Lsn lsn) {
  std::string k = ShardKey(kBatchTag, shard);
  AppendBigEndian64(&k, lsn);
  return k;
}

std::string EncodeBatch(const Batch& b) {
  std::string v;
  v.reserve(16 + b.payload.size());
  AppendBigEndian64(&v, b.epoch);
  AppendBigEndian64(&v, b.hlc);
  v += b.payload;
  return v;
}
std::string EncodeSnapshot(const Snapshot& s) {
  std::string v;
  AppendBigEndian64(&v, s.lsn);
  AppendBigEndian64(&v, s.epoch);
  AppendBigEndian64(&v, s.hlc);
  v += s.state;
  return v;
}
// The amnesiac mark is a 17th byte, written only while set (a 16-byte record has none).
std::string EncodeMeta(Epoch promised, Epoch accepted, bool amnesiac) {
  std::string v;
  AppendBigEndian64(&v, promised);
  AppendBigEndian64(&v, accepted);
  if (amnesiac) v.push_back('\x01');
  return v;
}

Status FromRocksDb(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  if (s.IsNoSpace()) return StorageFull(std::string(what) + ": " + s.ToString());
  return Internal(std::string(what) + ": " + s.ToString());
}

}  // namespace

struct ShardLog::Op {
  enum class Kind { kAppend, kTruncate, kCompact, kInstall, kMeta, kDrop };
  Kind kind = Kind::kAppend;
  ShardNo shard = 0;
  std::vector<Batch> batches;  // kAppend
  Lsn after_lsn = 0;           // kTruncate
  Snapshot snapshot;           // kCompact, kInstall
  Epoch promised = 0;          // kMeta
  Epoch accepted = 0;
  bool amnesiac = false;
  Lsn last_after = 0;  // the shard's last lsn once this op is applied
  SyncedFn done;       // kAppend
  uint64_t seq = 0;
  Status invalid;  // set at enqueue for an append that does not continue the log
};

Result<std::unique_ptr<ShardLog>> ShardLog::Open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  options.track_and_verify_wals_in_manifest = true;
  options.max_background_jobs = 1;
  options.write_buffer_size = 16u << 20;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s = rocksdb::DB::Open(options, path, &raw);
  if (s.IsCorruption()) {
    return Status(StatusCode::kDataLoss,
                  "replication log " + path + " is damaged and was not opened: " + s.ToString());
  }
  if (!s.ok()) return FromRocksDb(s, "replication log " + path);
  return std::unique_ptr<ShardLog>(new ShardLog(std::unique_ptr<rocksdb::DB>(raw)));
}

ShardLog::ShardLog(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {
  writer_ = std::thread([this] { WriterLoop(); });
}

ShardLog::~ShardLog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  queued_cv_.notify_all();
  writer_.join();
  db_->Close().PermitUncheckedError();
}

Result<std::vector<ShardNo>> ShardLog::Shards() const {
  std::set<ShardNo> shards;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid();) {
    const rocksdb::Slice key = it->key();
    if (key.size() < 5) return Internal("replication log: malformed key");
    const ShardNo shard = GetBigEndian32(key.data() + 1);
    shards.insert(shard);
    if (key[0] == kBatchTag && shard < std::numeric_limits<ShardNo>::max()) {
      it->Seek(ShardKey(kBatchTag, shard + 1));  // past this shard's batches
    } else {
      it->Next();
    }
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "replication log: scan");
  return std::vector<ShardNo>(shards.begin(), shards.end());
}

Result<DurableState> ShardLog::Load(ShardNo shard) const {
  DurableState state;
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), ShardKey(kMetaTag, shard), &value);
  if (s.ok()) {
    if (value.size() != 16 && !(value.size() == 17 && value[16] == '\x01')) {
      return Internal("replication log: malformed meta record");
    }
    state.promised = GetBigEndian64(value.data());
    state.accepted = GetBigEndian64(value.data() + 8);
    state.amnesiac = value.size() == 17;
  } else if (!s.IsNotFound()) {
    return FromRocksDb(s, "replication log: read meta");
  }
  s = db_->Get(rocksdb::ReadOptions(), ShardKey(kSnapshotTag, shard), &value);
  if (s.ok()) {
    if (value.size() < 24) return Internal("replication log: malformed snapshot record");
    state.snapshot.lsn = GetBigEndian64(value.data());
    state.snapshot.epoch = GetBigEndian64(value.data() + 8);
    state.snapshot.hlc = GetBigEndian64(value.data() + 16);
    state.snapshot.state = value.substr(24);
  } else if (!s.IsNotFound()) {
    return FromRocksDb(s, "replication log: read snapshot");
  }
  const std::string prefix = ShardKey(kBatchTag, shard);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  Lsn expect = state.snapshot.lsn + 1;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8 || it->value().size() < 16) {
      return Internal("replication log: malformed batch record of shard " + std::to_string(shard));
    }
    const Lsn lsn = GetBigEndian64(it->key().data() + prefix.size());
    if (lsn < expect) continue;  // covered by the snapshot (a compaction not yet written)
    if (lsn != expect) {
      return Internal("replication log of shard " + std::to_string(shard) + " has a hole: lsn " +
                      std::to_string(expect) + " is missing before " + std::to_string(lsn));
    }
    Batch b;
    b.lsn = lsn;
    b.epoch = GetBigEndian64(it->value().data());
    b.hlc = GetBigEndian64(it->value().data() + 8);
    b.payload.assign(it->value().data() + 16, it->value().size() - 16);
    state.batches.push_back(std::move(b));
    ++expect;
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "replication log: scan batches");
  return state;
}

Lsn& ShardLog::LastLsn(ShardNo shard) {
  auto found = last_lsn_.find(shard);
  if (found != last_lsn_.end()) return found->second;
  // First use since Open: the database is up to date for this shard (nothing queued yet).
  Lsn last = 0;
  std::string value;
  if (db_->Get(rocksdb::ReadOptions(), ShardKey(kSnapshotTag, shard), &value).ok() &&
      value.size() >= 8) {
    last = GetBigEndian64(value.data());
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  it->SeekForPrev(BatchKey(shard, std::numeric_limits<Lsn>::max()));
  const std::string prefix = ShardKey(kBatchTag, shard);
  if (it->Valid() && it->key().starts_with(prefix) && it->key().size() == prefix.size() + 8) {
    last = std::max(last, GetBigEndian64(it->key().data() + prefix.size()));
  }
  return last_lsn_.emplace(shard, last).first->second;
}

uint64_t ShardLog::Enqueue(Op op) {
  std::lock_guard<std::mutex> lock(mu_);
  Lsn& last = LastLsn(op.shard);
  switch (op.kind) {
    case Op::Kind::kAppend: {
      Lsn next = last + 1;
      for (const Batch& b : op.batches) {
        if (b.lsn != next++) {
          op.invalid =
              Internal("replication log of shard " + std::to_string(op.shard) + ": append of lsn " +
                       std::to_string(b.lsn) + " after lsn " + std::to_string(next - 2));
          break;
        }
      }
      if (op.invalid.ok() && !op.batches.empty()) last = op.batches.back().lsn;
      break;
    }
    case Op::Kind::kTruncate: last = std::min(last, op.after_lsn); break;
    case Op::Kind::kCompact: last = std::max(last, op.snapshot.lsn); break;
    case Op::Kind::kInstall: last = op.snapshot.lsn; break;
    case Op::Kind::kMeta: break;
    case Op::Kind::kDrop: last = 0; break;
  }
  op.last_after = last;
  op.seq = next_seq_++;
  const uint64_t seq = op.seq;
  queue_.push_back(std::move(op));
  queued_cv_.notify_one();
  return seq;
}

Status ShardLog::Wait(uint64_t seq) {
  std::unique_lock<std::mutex> lock(mu_);
  written_cv_.wait(lock, [&] { return written_seq_ >= seq; });
  auto failed = failed_.find(seq);
  if (failed == failed_.end()) return Status::Ok();
  Status s = failed->second;
  failed_.erase(failed);
  return s;
}

Status ShardLog::Sync(Op op) { return Wait(Enqueue(std::move(op))); }

void ShardLog::Append(ShardNo shard, std::vector<Batch> batches, SyncedFn done) {
  Op op;
  op.kind = Op::Kind::kAppend;
  op.shard = shard;
  op.batches = std::move(batches);
  op.done = std::move(done);
  Enqueue(std::move(op));
}

Status ShardLog::Truncate(ShardNo shard, Lsn after_lsn) {
  Op op;
  op.kind = Op::Kind::kTruncate;
  op.shard = shard;
  op.after_lsn = after_lsn;
  return Sync(std::move(op));
}

Status ShardLog::Compact(ShardNo shard, const Snapshot& snapshot) {
  Op op;
  op.kind = Op::Kind::kCompact;
  op.shard = shard;
  op.snapshot = snapshot;
  return Sync(std::move(op));
}

Status ShardLog::InstallSnapshot(ShardNo shard, const Snapshot& snapshot) {
  Op op;
  op.kind = Op::Kind::kInstall;
  op.shard = shard;
  op.snapshot = snapshot;
  return Sync(std::move(op));
}

Status ShardLog::PersistMeta(ShardNo shard, Epoch promised, Epoch accepted, bool amnesiac) {
  Op op;
  op.kind = Op::Kind::kMeta;
  op.shard = shard;
  op.promised = promised;
  op.accepted = accepted;
  op.amnesiac = amnesiac;
  return Sync(std::move(op));
}

Status ShardLog::DropShard(ShardNo shard) {
  Op op;
  op.kind = Op::Kind::kDrop;
  op.shard = shard;
  return Sync(std::move(op));
}

bool ShardLog::Carry(ShardNo shard, Effect& effect, const SyncedFn& done, Status* status) {
  *status = Status::Ok();
  if (auto* a = std::get_if<repl::WalAppend>(&effect)) {
    Append(shard, std::move(a->batches), done);
  } else if (auto* t = std::get_if<repl::WalTruncate>(&effect)) {
    *status = Truncate(shard, t->after_lsn);
  } else if (auto* c = std::get_if<repl::WalCompact>(&effect)) {
    *status = Compact(shard, c->snapshot);
  } else if (auto* i = std::get_if<repl::WalInstallSnapshot>(&effect)) {
    *status = InstallSnapshot(shard, i->snapshot);
  } else if (auto* m = std::get_if<repl::PersistMeta>(&effect)) {
    *status = PersistMeta(shard, m->promised, m->accepted, m->amnesiac);
  } else {
    return false;
  }
  return true;
}

uint64_t ShardLog::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

void ShardLog::WriterLoop() {
  for (;;) {
    std::deque<Op> ops;
    {
      std::unique_lock<std::mutex> lock(mu_);
      queued_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued is written
      ops.swap(queue_);
    }
    rocksdb::WriteBatch batch;
    for (const Op& op : ops) {
      if (!op.invalid.ok()) continue;
      switch (op.kind) {
        case Op::Kind::kAppend:
          for (const Batch& b : op.batches) {
            batch.Put(BatchKey(op.shard, b.lsn), EncodeBatch(b)).PermitUncheckedError();
          }
          break;
        case Op::Kind::kTruncate:
          batch
              .DeleteRange(BatchKey(op.shard, op.after_lsn + 1),
                           BatchKey(op.shard, std::numeric_limits<Lsn>::max()))
              .PermitUncheckedError();
          break;
        case Op::Kind::kCompact:
          batch.DeleteRange(BatchKey(op.shard, 0), BatchKey(op.shard, op.snapshot.lsn + 1))
              .PermitUncheckedError();
          batch.Put(ShardKey(kSnapshotTag, op.shard), EncodeSnapshot(op.snapshot))
              .PermitUncheckedError();
          break;
        case Op::Kind::kInstall:
          batch
              .DeleteRange(BatchKey(op.shard, 0),
                           BatchKey(op.shard, std::numeric_limits<Lsn>::max()))
              .PermitUncheckedError();
          batch.Put(ShardKey(kSnapshotTag, op.shard), EncodeSnapshot(op.snapshot))
              .PermitUncheckedError();
          break;
        case Op::Kind::kMeta:
          batch.Put(ShardKey(kMetaTag, op.shard), EncodeMeta(op.promised, op.accepted, op.amnesiac))
              .PermitUncheckedError();
          break;
        case Op::Kind::kDrop:
          batch
              .DeleteRange(BatchKey(op.shard, 0),
                           BatchKey(op.shard, std::numeric_limits<Lsn>::max()))
              .PermitUncheckedError();
          batch.Delete(ShardKey(kSnapshotTag, op.shard)).PermitUncheckedError();
          batch.Delete(ShardKey(kMetaTag, op.shard)).PermitUncheckedError();
          break;
      }
    }
    Status written = Status::Ok();
    if (batch.Count() > 0) {
      rocksdb::WriteOptions options;
      options.sync = true;
      written = FromRocksDb(db_->Write(options, &batch), "replication log: write");
    }
    // Callbacks first: an append's `done` has run before any later waiting call returns.
    for (Op& op : ops) {
      if (op.kind != Op::Kind::kAppend || !op.done) continue;
      op.done(op.invalid.ok() ? written : op.invalid, op.last_after);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++writes_;
      written_seq_ = ops.back().seq;
      for (const Op& op : ops) {
        if (op.kind != Op::Kind::kAppend && !written.ok()) failed_.emplace(op.seq, written);
      }
    }
    written_cv_.notify_all();
  }
}

}  // namespace iris::cluster::repl
