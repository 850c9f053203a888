#include "core/settings_cache.h"

namespace iris::core {

store::UserSettings SettingsCache::Get(uint64_t user) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(user);
    if (it != cache_.end()) return it->second;
  }
  auto s = store_.GetSettings(user);
  store::UserSettings v = s.ok() ? *s : store::UserSettings{};
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= kMaxCached) cache_.clear();  // bounded; a miss only costs a read
  cache_.emplace(user, v);
  return v;
}

std::optional<store::UserSettings> SettingsCache::Peek(uint64_t user) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(user);
  if (it == cache_.end()) return std::nullopt;
  return it->second;
}

Status SettingsCache::Put(uint64_t user, const store::UserSettings& s) {
  IRIS_RETURN_IF_ERROR(store_.PutSettings(user, s));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[user] = s;
  return Status::Ok();
}

Result<store::UserSettings> SettingsCache::Update(
    uint64_t user, std::function<Status(store::UserSettings&)> change) {
  IRIS_ASSIGN_OR_RETURN(store::UserSettings s, store_.UpdateSettings(user, std::move(change)));
  std::lock_guard<std::mutex> lock(mu_);
  cache_[user] = s;
  return s;
}

}  // namespace iris::core
