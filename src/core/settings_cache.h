#pragma once
// SettingsCache: per-user settings (read_receipts, share_presence, consent) read through to the store
// and cached, written through durably (RFC-001 FR-4, PROTOCOL.md SETTINGS).
//
// Thread-safety: all methods may be called from any thread.

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "common/status.h"
#include "store/inbox_store.h"

namespace iris::core {

class SettingsCache {
 public:
  explicit SettingsCache(store::InboxStore& store) : store_(store) {}
  // Defaults (everything on) when the user never changed a setting or the read fails.
  // May read the store (blocking): not for an event-loop thread.
  store::UserSettings Get(uint64_t user);
  // The cached settings, without reading the store; nullopt when not cached.
  std::optional<store::UserSettings> Peek(uint64_t user);
  Status Put(uint64_t user, const store::UserSettings& s);
  // store::InboxStore::UpdateSettings, then cached.
  Result<store::UserSettings> Update(uint64_t user,
                                     std::function<Status(store::UserSettings&)> change);

 private:
  static constexpr size_t kMaxCached = 1 << 20;
  store::InboxStore& store_;
  std::mutex mu_;
  std::unordered_map<uint64_t, store::UserSettings> cache_;
};

}  // namespace iris::core
