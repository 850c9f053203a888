#pragma once
// Token revocation (PROTOCOL.md sections 5 and 9; RFC-001 FR-11): by token id (`jti`) or
// by user ("every token of user U issued before time T").
//
// Memory is bounded: a jti entry is kept until its `until_ms` and then forgotten by
// Prune(); pass the time after which the token would be refused anyway (its exp plus the
// leeway, or, when the exp is unknown as in the admin API, now + kJtiRetentionMs). A user
// entry is one per user and is kept.
//
// Thread-safety: every method may be called from any thread (a reader/writer lock;
// IsRevoked takes it shared). generation() is lock-free: it changes whenever a revocation
// is added or extended, so a session that remembers the generation it last checked against
// can skip the lookup while nothing changed. Prune() does not change the generation: it
// only forgets entries whose tokens are refused as expired anyway, so no verdict on a live
// token changes.

#include <atomic>
#include <cstdint>
#include <functional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace iris::auth {

struct Claims;

// How long a jti revocation must be kept when the token's exp is unknown: the longest
// token lifetime (24 h) plus the default clock leeway (30 s). A token cannot still be
// accepted later than that after it was issued, and it was issued before it was revoked.
inline constexpr int64_t kJtiRetentionMs = (86'400 + 30) * 1000;

class RevocationList {
 public:
  // Revokes the token with id `jti`; the entry may be pruned after `until_ms` (unix ms).
  // Revoking the same jti again keeps the later `until_ms`.
  void RevokeJti(std::string jti, int64_t until_ms);

  // Revokes every token of `user` issued before `before_ms` (unix ms): a token is revoked
  // when iat * 1000 < before_ms. Keeps the latest time given for a user.
  void RevokeUserBefore(uint64_t user, int64_t before_ms);

  // Whether the token described by `c` (its jti, user_id and iat) is revoked.
  bool IsRevoked(const Claims& c) const;

  // Increases on every change that may revoke a token that was not revoked before.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  // Forgets jti entries whose until_ms is before `now_ms`. Call it periodically (e.g. once
  // a minute); its cost is linear in the number of jti entries.
  void Prune(int64_t now_ms);

  // Every entry, for handing the list to another process (edge processes at start).
  struct Entries {
    std::vector<std::pair<std::string, int64_t>> jtis;  // jti, until_ms
    std::vector<std::pair<uint64_t, int64_t>> users;    // user, before_ms
  };
  Entries Export() const;

  size_t jti_count() const;
  size_t user_count() const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>> jti_until_ms_;
  std::unordered_map<uint64_t, int64_t> user_before_ms_;
  std::atomic<uint64_t> generation_{0};
};

}  // namespace iris::auth
