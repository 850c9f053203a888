#include "store/shard_batch.h"

#include "store/store_keys.h"

namespace iris::store {
namespace {

void PutVarint32(std::string* out, uint32_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint32(std::string_view* in, uint32_t* v) {
  uint32_t result = 0;
  for (int shift = 0; shift <= 28 && !in->empty(); shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    if (shift == 28 && byte > 0x0f) return false;
    result |= static_cast<uint32_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *v = result;
      return true;
    }
  }
  return false;
}

bool GetSized(std::string_view* in, std::string* out) {
  uint32_t size = 0;
  if (!GetVarint32(in, &size) || size > in->size()) return false;
  out->assign(in->data(), size);
  in->remove_prefix(size);
  return true;
}

uint32_t BigEndian32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

class Splitter : public rocksdb::WriteBatch::Handler {
 public:
  Splitter(const StoreDb& db, const std::vector<uint32_t>& vnode_shard, std::string* node_wide)
      : db_(db), vnode_shard_(vnode_shard), node_wide_(node_wide) {}

  rocksdb::Status PutCF(uint32_t cf_id, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    return Add('P', cf_id, key, value);
  }
  rocksdb::Status DeleteCF(uint32_t cf_id, const rocksdb::Slice& key) override {
    return Add('D', cf_id, key, rocksdb::Slice());
  }
  rocksdb::Status SingleDeleteCF(uint32_t cf_id, const rocksdb::Slice& key) override {
    return Add('D', cf_id, key, rocksdb::Slice());
  }
  rocksdb::Status DeleteRangeCF(uint32_t cf_id, const rocksdb::Slice& begin,
                                const rocksdb::Slice& end) override {
    return Add('R', cf_id, begin, end);
  }
  rocksdb::Status MergeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::NotSupported("merge in a store batch");
  }
  void LogData(const rocksdb::Slice&) override {}

  std::map<uint32_t, std::string>& out() { return out_; }

 private:
  rocksdb::Status Add(char kind, uint32_t cf_id, const rocksdb::Slice& key,
                      const rocksdb::Slice& value) {
    int cf = -1;
    for (int c = 0; c < static_cast<int>(Cf::kCount); ++c) {
      if (db_.cf(static_cast<Cf>(c))->GetID() == cf_id) cf = c;
    }
    if (cf < 0) return rocksdb::Status::NotSupported("unknown column family");
    const std::optional<uint32_t> shard =
        ShardOfKey(static_cast<Cf>(cf), std::string_view(key.data(), key.size()), vnode_shard_);
    if (!shard && node_wide_ == nullptr) return rocksdb::Status::OK();
    AppendShardOp(ShardOp{kind, static_cast<Cf>(cf), key.ToString(), value.ToString()},
                  shard ? &out_[*shard] : node_wide_);
    return rocksdb::Status::OK();
  }

  const StoreDb& db_;
  const std::vector<uint32_t>& vnode_shard_;
  std::string* const node_wide_;  // nullable
  std::map<uint32_t, std::string> out_;
};

}  // namespace

void AppendShardOp(const ShardOp& op, std::string* out) {
  out->push_back(op.kind);
  out->push_back(static_cast<char>(op.cf));
  PutVarint32(out, static_cast<uint32_t>(op.key.size()));
  out->append(op.key);
  PutVarint32(out, static_cast<uint32_t>(op.value.size()));
  out->append(op.value);
}

Result<std::vector<ShardOp>> DecodeShardOps(std::string_view payload) {
  std::vector<ShardOp> ops;
  while (!payload.empty()) {
    if (payload.size() < 2) return BadRequest("shard batch: truncated operation");
    ShardOp op;
    op.kind = payload[0];
    const int cf = static_cast<uint8_t>(payload[1]);
    payload.remove_prefix(2);
    if (op.kind != 'P' && op.kind != 'D' && op.kind != 'R') {
      return BadRequest("shard batch: unknown operation kind");
    }
    if (cf >= static_cast<int>(Cf::kCount)) return BadRequest("shard batch: unknown column family");
    op.cf = static_cast<Cf>(cf);
    if (!GetSized(&payload, &op.key) || !GetSized(&payload, &op.value)) {
      return BadRequest("shard batch: truncated operation");
    }
    if (op.key.empty()) return BadRequest("shard batch: empty key");
    ops.push_back(std::move(op));
  }
  return ops;
}

std::optional<uint32_t> ShardOfKey(Cf cf, std::string_view key,
                                   const std::vector<uint32_t>& vnode_shard) {
  if (key.size() >= kVnodePrefixBytes && key[0] == '\0') {
    const uint32_t vnode = BigEndian32(key.data());
    if (vnode >= vnode_shard.size()) return std::nullopt;
    return vnode_shard[vnode];
  }
  if (cf == Cf::kMeta && key.size() == 5 && key[0] == kMetaHlcPrefix) {
    return BigEndian32(key.data() + 1);
  }
  return std::nullopt;
}

Result<std::map<uint32_t, std::string>> SplitByShard(const rocksdb::WriteBatch& batch,
                                                     const StoreDb& db,
                                                     const std::vector<uint32_t>& vnode_shard,
                                                     std::string* node_wide) {
  Splitter splitter(db, vnode_shard, node_wide);
  const rocksdb::Status s = batch.Iterate(&splitter);
  if (!s.ok()) return Internal("store: splitting a batch by shard: " + s.ToString());
  return std::move(splitter.out());
}

}  // namespace iris::store
