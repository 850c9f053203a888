#pragma once
// Helpers shared by the store's unit, property and chaos tests.

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "iris/v1/client.pb.h"
#include "store/inbox_store.h"

namespace iris::store::testing {

// A fresh directory under $TMPDIR (default /tmp), removed with everything in it on
// destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/iris-store-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) std::abort();
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline v1::Envelope MakeEnvelope(uint64_t sender, uint64_t recipient, std::string body,
                                 uint64_t group_id = 0) {
  v1::Envelope e;
  e.set_sender(sender);
  e.set_recipient(recipient);
  e.set_group_id(group_id);
  e.set_kind(v1::MESSAGE);
  e.set_body(std::move(body));
  return e;
}

inline std::vector<v1::Envelope> One(uint64_t sender, uint64_t recipient, std::string body) {
  std::vector<v1::Envelope> v;
  v.push_back(MakeEnvelope(sender, recipient, std::move(body)));
  return v;
}

// Options small enough for tests (tiny memtables and cache).
inline StoreOptions TestOptions(const std::string& path) {
  StoreOptions o;
  o.path = path;
  o.write_buffer_bytes = 1u << 20;
  o.block_cache_bytes = 4u << 20;
  o.dedup_bloom_keys_per_day = 10'000;
  o.resume_interval_ms = 0;
  return o;
}

// Every envelope of `user` in the inbox (ascending) followed by nothing else; aborts the
// calling test through the returned status on error.
inline Result<std::vector<v1::Envelope>> ScanAll(const InboxStore& store, uint64_t user,
                                                 uint64_t after = 0) {
  std::vector<v1::Envelope> out;
  for (;;) {
    Result<ScanPage> page = store.Scan(user, after, 1000, 1u << 20);
    if (!page.ok()) return page.status();
    for (v1::Envelope& e : page->messages) out.push_back(std::move(e));
    if (!page->has_more) break;
    after = out.back().id();
  }
  return out;
}

// Every archived envelope of `user`, ascending.
inline Result<std::vector<v1::Envelope>> HistoryAll(const InboxStore& store, uint64_t user) {
  std::vector<v1::Envelope> out;
  uint64_t before = 0;
  for (;;) {
    Result<ScanPage> page = store.History(user, before, 1000, 1u << 20);
    if (!page.ok()) return page.status();
    for (v1::Envelope& e : page->messages) out.push_back(std::move(e));
    if (!page->has_more || page->messages.empty()) break;
    before = out.back().id();
  }
  return std::vector<v1::Envelope>(out.rbegin(), out.rend());
}

}  // namespace iris::store::testing
