#pragma once
// SettingsCache: per-user settings (read_receipts, share_presence) read through to the store
// and cached, written through durably (RFC-001 FR-4, PROTOCOL.md SETTINGS).
//
// Thread-safety: all methods may be called from any thread.

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "common/status.h"
#include "store/inbox_store.h"

namespace iris::core {

class SettingsCache {
 public:
  explicit SettingsCache(store::InboxStore& store) : store_(store) {}
  // Defaults (everything on) when the user never changed a setting or the read fails.
  store::UserSettings Get(uint64_t user);
  Status Put(uint64_t user, const store::UserSettings& s);

 private:
  static constexpr size_t kMaxCached = 1 << 20;
  store::InboxStore& store_;
  std::mutex mu_;
  std::unordered_map<uint64_t, store::UserSettings> cache_;
};

}  // namespace iris::core
