#include "auth/revocation.h"

#include <algorithm>
#include <mutex>

#include "auth/jwt.h"

namespace iris::auth {

void RevocationList::RevokeJti(std::string jti, int64_t until_ms) {
  std::unique_lock lock(mu_);
  auto [it, inserted] = jti_until_ms_.try_emplace(std::move(jti), until_ms);
  if (!inserted) {
    if (until_ms <= it->second) return;  // nothing changes
    it->second = until_ms;
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
}

void RevocationList::RevokeUserBefore(uint64_t user, int64_t before_ms) {
  std::unique_lock lock(mu_);
  auto [it, inserted] = user_before_ms_.try_emplace(user, before_ms);
  if (!inserted) {
    if (before_ms <= it->second) return;  // an earlier cut-off revokes nothing new
    it->second = before_ms;
  }
  generation_.fetch_add(1, std::memory_order_acq_rel);
}

bool RevocationList::IsRevoked(const Claims& c) const {
  std::shared_lock lock(mu_);
  if (!jti_until_ms_.empty() && jti_until_ms_.find(std::string_view(c.jti)) != jti_until_ms_.end()) {
    return true;
  }
  if (!user_before_ms_.empty()) {
    auto it = user_before_ms_.find(c.user_id);
    if (it != user_before_ms_.end()) {
      // The verifier bounds iat to [0, kMaxTimestampS]; a hand-made Claims outside that
      // range is clamped so that iat * 1000 cannot overflow.
      const int64_t iat_s = std::clamp<int64_t>(c.iat, -kMaxTimestampS, kMaxTimestampS);
      if (iat_s * 1000 < it->second) return true;
    }
  }
  return false;
}

void RevocationList::Prune(int64_t now_ms) {
  std::unique_lock lock(mu_);
  std::erase_if(jti_until_ms_, [now_ms](const auto& kv) { return kv.second < now_ms; });
}

RevocationList::Entries RevocationList::Export() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  Entries e;
  e.jtis.assign(jti_until_ms_.begin(), jti_until_ms_.end());
  e.users.assign(user_before_ms_.begin(), user_before_ms_.end());
  return e;
}

size_t RevocationList::jti_count() const {
  std::shared_lock lock(mu_);
  return jti_until_ms_.size();
}

size_t RevocationList::user_count() const {
  std::shared_lock lock(mu_);
  return user_before_ms_.size();
}

}  // namespace iris::auth
