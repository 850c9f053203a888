#pragma once
// Rate limiters of the edge (PROTOCOL.md section 8; RFC-001 sections 8 and 10):
//   TokenBucket            one bucket (GCRA form), 16 bytes, no clock reads and no locking;
//   SendRateLimiter        one user's SEND/RECEIPT budget: 5/s sustained, bursts of 20/s
//                          for 10 s (two buckets); no locking;
//   KeyedSendLimiter       user -> SendRateLimiter, so a user's budget survives reconnects;
//   ConnectionRateLimiter  new connections per IP (5/min) with an allow-list of CIDRs;
//   FailedLoginLimiter     failed logins per account (10/h) and per IP (30/h); valid
//                          tokens are never refused by it.
//
// Time is always passed in by the caller as monotonic nanoseconds (Clock::MonoNanos), so
// tests drive it by hand. A caller whose time goes backwards is treated conservatively
// (nothing is granted early).
//
// Memory of the keyed limiters is bounded: a key whose bucket has refilled completely is
// indistinguishable from a key never seen, so such entries are dropped (on Sweep(), and on
// demand when a shard is at its share of max_entries) without forgetting anything. When a
// shard is full of keys that are all still limited, a new key is refused with OVERLOADED
// (fail closed) rather than growing memory or forgetting a limited key.
//
// The keyed limiters' tables live in a SharedRegion (edge/shared_table.h): an Edge's are
// the node's, shared by all its edge processes, so a limit means the same with 1 or N edge
// processes; a limiter constructed with only a seed has a private region of its own. The
// tables are fixed-size mappings (2 to 4 slots per entry of max_entries, 2 for the
// default sizes), resident as used.
//
// Thread-safety: TokenBucket and SendRateLimiter are plain values with no locking (the
// owner serialises access). KeyedSendLimiter, ConnectionRateLimiter and FailedLoginLimiter
// may be used from any number of threads and processes: keys are spread over 16 shards,
// each behind its own process-shared robust mutex; the allow-list is behind a
// reader/writer lock.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "edge/shared_table.h"

struct in_addr;
struct in6_addr;

namespace iris::edge {

// A token bucket of `capacity` tokens refilled at `rate_per_sec`, starting full, written as
// the generic cell rate algorithm: the only state is the time at which the bucket will be
// full again ("theoretical arrival time"), so the whole bucket is 16 bytes.
class TokenBucket {
 public:
  // rate_per_sec is clamped to [1e-6, 1e9] and capacity to [1, 1e9].
  TokenBucket(double rate_per_sec, double capacity);

  // Takes one token if one is available at `now_ns`. Otherwise returns false, takes
  // nothing and, when retry_after_ms is not null, sets it to the wait until a token is
  // available, rounded up to whole milliseconds (at least 1).
  bool TryTake(int64_t now_ns, uint32_t* retry_after_ms);

  // Nanoseconds until a token is available; 0 when one is available now.
  int64_t WaitNanos(int64_t now_ns) const;
  // Tokens available at `now_ns`, in [0, capacity] (fractional while refilling).
  double Available(int64_t now_ns) const;
  // Whether the bucket is back to full capacity at `now_ns`.
  bool IsFull(int64_t now_ns) const { return full_at_ns_ <= now_ns; }
  // The time from which the bucket is full (when nothing more is taken).
  int64_t FullAtNanos() const { return full_at_ns_; }
  // Nanoseconds from `now_ns` until the bucket is full again (0 when full): what has been
  // taken and not refilled, as a duration that means the same on another clock.
  int64_t DebtNanos(int64_t now_ns) const {
    return full_at_ns_ <= now_ns ? 0 : full_at_ns_ - now_ns;
  }
  // Takes `debt_ns` worth of tokens spent elsewhere (may leave the bucket owing more than
  // its capacity: it then refuses until the debt is repaid).
  void AddDebt(int64_t now_ns, int64_t debt_ns) {
    if (debt_ns > 0) full_at_ns_ = std::max(full_at_ns_, now_ns) + debt_ns;
  }

  double rate_per_sec() const { return rate_per_sec_; }
  double capacity() const { return capacity_; }

 private:
  int64_t IntervalNanos() const;   // time to refill one token
  int64_t ToleranceNanos() const;  // how far full_at_ns_ may be ahead of now for a take

  int64_t full_at_ns_ = std::numeric_limits<int64_t>::min();
  float rate_per_sec_;
  float capacity_;
};
static_assert(sizeof(TokenBucket) == 16, "TokenBucket is meant to stay 16 bytes");

// Rounds a wait in nanoseconds up to whole milliseconds, in [1, UINT32_MAX].
uint32_t RetryAfterMillis(int64_t wait_ns);

// The per-user send limit: "5/s sustained, bursts up to 20/s for 10 s".
//
// Two buckets, and a send must find a token in both:
//   * sustained: refills at sustained_per_sec (5/s). Its capacity is what a burst drains
//     on top of the refill: sending at burst_per_sec for burst_seconds takes
//     burst_per_sec * burst_seconds tokens while sustained_per_sec * burst_seconds come
//     back, so capacity = (burst_per_sec - sustained_per_sec) * burst_seconds
//     = (20 - 5) * 10 = 150. A full bucket thus carries exactly a 10 s burst at 20/s, after
//     which the user is held to 5/s until it refills (150 / 5 = 30 s of quiet).
//   * peak: refills at burst_per_sec (20/s) with capacity burst_per_sec (20), so even with
//     the sustained bucket full nobody goes faster than 20/s for more than a moment (a
//     user at rest may send 20 back to back, then one every 50 ms).
// RFC-001 section 10.1 also says "100/minute burst"; PROTOCOL.md section 8 (20/s for 10 s)
// is the contract clients are written against, so that is what is enforced.
struct SendRateConfig {
  double sustained_per_sec = 5;
  double burst_per_sec = 20;
  double burst_seconds = 10;

  double SustainedCapacity() const;  // (burst - sustained) * seconds, at least 1
  double PeakCapacity() const;       // burst_per_sec, at least 1
};

// Per-user budgets for the requests other than SEND/RECEIPT that write durably or take from
// another user's data (security issue 14; docs/protocol.md "Limits"). Same semantics:
// {sustained_per_sec, burst_per_sec, burst_seconds}.
//  - SETTINGS: 1/s, bursts of 5/s for 10 s (a client changes settings by hand).
inline constexpr SendRateConfig kSettingsRate{1, 5, 10};
//  - KEYS_UPLOAD: one per 5 s, bursts of 2/s for 10 s (18 uploads: a new device fills its
//    1,000-key pool in 10 uploads of 100; later it refills rarely).
inline constexpr SendRateConfig kKeysUploadRate{0.2, 2, 10};
//  - KEYS_FETCH, per requester: 30 a minute sustained, at most 5 at once and 18 in a burst,
//    so one user takes at most 48 one-time prekeys from others' pools in any minute.
inline constexpr SendRateConfig kKeysFetchRate{0.5, 5, 4};
//  - KEYS_FETCH, per (requester, target) pair: 3 at once, then one per 10 minutes, so one
//    user cannot drain another's one-time prekey pool (a session needs one fetch; a client
//    fetches again only after an identity change or a failed bundle). Keyed by
//    KeysFetchPairKey(requester, target).
inline constexpr SendRateConfig kKeysFetchPairRate{1.0 / 600, 4, 1};
//  - KEYS_FETCH of a fellow member of an E2EE group (KeysFetch.group_id, both users members):
//    1/s sustained, bursts of 50/s for 6 s (294 fetches), in place of the per-requester
//    budget, so a member's first message to a group of 256 starts sessions with every member
//    in seconds rather than minutes. Adding someone to a group needs no consent, so this is
//    also what a user who builds groups can take from others' pools in total (294, then 60 a
//    minute, against 18 and 30 without groups); each single pool stays protected by the
//    per-pair budget (3 at once, then one per 10 minutes).
inline constexpr SendRateConfig kKeysFetchGroupRate{1, 50, 6};
inline uint64_t KeysFetchPairKey(uint64_t requester, uint64_t target) {
  // splitmix64 of each half, combined: distinct pairs collide only by chance (they then
  // share a budget, which is harmless).
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(requester ^ mix(target));
}
//  - GROUP_CREATE and GROUP_UPDATE: 1/s, bursts of 5/s for 10 s.
inline constexpr SendRateConfig kGroupRate{1, 5, 10};

// One user's send budget. Not thread-safe: the owner serialises access.
class SendRateLimiter {
 public:
  explicit SendRateLimiter(const SendRateConfig& config = {});

  // Takes one send from both buckets, or none: false with the wait until both have a token.
  bool TryTake(int64_t now_ns, uint32_t* retry_after_ms);

  bool IsFull(int64_t now_ns) const { return sustained_.IsFull(now_ns) && peak_.IsFull(now_ns); }
  int64_t FullAtNanos() const;
  // {sustained, peak}: TokenBucket::DebtNanos and AddDebt of the two buckets.
  std::array<int64_t, 2> DebtNanos(int64_t now_ns) const {
    return {sustained_.DebtNanos(now_ns), peak_.DebtNanos(now_ns)};
  }
  void AddDebt(int64_t now_ns, const std::array<int64_t, 2>& debt) {
    sustained_.AddDebt(now_ns, debt[0]);
    peak_.AddDebt(now_ns, debt[1]);
  }
  const TokenBucket& sustained() const { return sustained_; }
  const TokenBucket& peak() const { return peak_; }

 private:
  TokenBucket sustained_;
  TokenBucket peak_;
};

namespace internal {

// Seeded hashes (so that remote parties cannot aim keys at one hash chain).
struct SeededU64Hash {
  uint64_t seed = 0;
  size_t operator()(uint64_t key) const;
};
struct SeededBytes16Hash {
  uint64_t seed = 0;
  size_t operator()(const std::array<uint8_t, 16>& key) const;
};

// Shards of key -> limiter state with a bound on the number of entries. Entry must be
// trivially copyable and have `bool IsFull(int64_t now_ns) const` (its state equals a new
// entry's) and `int64_t FullAtNanos() const`; full entries are dropped by sweeps.
//
// The storage is a SharedTable (edge/shared_table.h): either one table of a region the
// node's processes share (the limiters of an Edge), or a private region of its own (a
// limiter built on its own, in tests and tools). Both run the same code.
template <typename Key, typename Entry, typename Hash>
class BoundedTable {
 public:
  using Storage = SharedTable<Key, Entry, Hash>;
  static constexpr size_t kShards = Storage::kShards;
  // A shard that is full and whose sweep freed little is not swept again sooner than this.
  static constexpr int64_t kMinSweepIntervalNs = Storage::kMinSweepIntervalNs;

  // A private region of its own. Aborts when the mapping cannot be made (as an allocation
  // failure would).
  BoundedTable(size_t max_entries, Hash hash)
      : table_(PrivateRegion(Storage::Spec(max_entries), hash.seed), 0, 0) {}
  // Table `index` of `region` (which must hold Storage::Spec(...) there), hashed with the
  // region's seed ^ salt.
  BoundedTable(std::shared_ptr<SharedRegion> region, size_t index, uint64_t salt)
      : table_(std::move(region), index, salt) {}

  // Runs fn(Entry&) under the key's shard lock, creating the entry with make() when absent.
  // Returns false without calling fn when the key is absent and the shard is full of
  // entries that are still limited; *retry_ns is then when space may come free.
  template <typename Make, typename Fn>
  bool Update(const Key& key, int64_t now_ns, Make make, Fn fn, int64_t* retry_ns) {
    return table_.Update(key, now_ns, make, fn, retry_ns);
  }

  // Runs fn(const Entry*) under the shard lock; nullptr when the key is absent.
  template <typename Fn>
  auto Read(const Key& key, Fn fn) const {
    return table_.Read(key, fn);
  }

  // Drops every entry that is full at `now_ns`.
  void Sweep(int64_t now_ns) { table_.Sweep(now_ns); }
  size_t size() const { return table_.size(); }
  size_t capacity() const { return table_.capacity(); }

 private:
  Storage table_;
};

// A private region with one table (see BoundedTable). Aborts when it cannot be mapped.
std::shared_ptr<SharedRegion> PrivateRegion(const TableSpec& spec, uint64_t seed);

}  // namespace internal

// user -> SendRateLimiter. A user's budget lives in the table, not in the session, so it
// survives reconnects; entries are dropped only once both buckets are full again.
class KeyedSendLimiter {
 public:
  // 96 bytes of table per entry of capacity (two 48-byte slots; 48 MiB mapped, resident
  // as used); users become untracked at most SustainedCapacity / sustained_per_sec (30 s)
  // after their last send.
  static constexpr size_t kDefaultMaxEntries = size_t{1} << 19;

  explicit KeyedSendLimiter(SendRateConfig config = {}, size_t max_entries = kDefaultMaxEntries,
                            uint64_t hash_seed = std::random_device{}());
  // Its table is LimiterTables::kSend of `region` (made with LimiterTables::Specs).
  KeyedSendLimiter(SendRateConfig config, std::shared_ptr<internal::SharedRegion> region);
  // Its table is `table` of `region`: one of the other per-user tables (LimiterTables::
  // kSettings, kKeysUpload, kKeysFetch, kGroups).
  KeyedSendLimiter(SendRateConfig config, std::shared_ptr<internal::SharedRegion> region,
                   size_t table);

  // One SEND or RECEIPT by `user`: OK; RATE_LIMITED with retry_after_ms; or OVERLOADED with
  // retry_after_ms when the table is full of users who are all still limited.
  Status TryTake(uint64_t user, int64_t now_ns);

  // The user's debt ({sustained, peak}, SendRateLimiter::DebtNanos), taken out of the
  // table: the user's buckets here are full afterwards. The debt moves with the user
  // between nodes (docs/architecture.md, "Send rate across nodes").
  std::array<int64_t, 2> TakeDebt(uint64_t user, int64_t now_ns);
  // Adds a debt taken elsewhere to the user's buckets. False when the table is full of
  // limited users (the debt is then not kept).
  bool AddDebt(uint64_t user, int64_t now_ns, const std::array<int64_t, 2>& debt);

  // Drops users whose buckets are full. Call periodically (e.g. every 10 s).
  void Sweep(int64_t now_ns) { table_.Sweep(now_ns); }
  size_t size() const { return table_.size(); }
  const SendRateConfig& config() const { return config_; }

 private:
  SendRateConfig config_;
  internal::BoundedTable<uint64_t, SendRateLimiter, internal::SeededU64Hash> table_;
};

// An IPv4 or IPv6 address, held as 16 bytes in IPv6 form (IPv4 as ::ffff:a.b.c.d, so
// "1.2.3.4" and "::ffff:1.2.3.4" are the same address).
class IpAddress {
 public:
  IpAddress() = default;
  // "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", optionally in [brackets].
  static std::optional<IpAddress> Parse(std::string_view text);
  static IpAddress FromIn4(const in_addr& a);
  static IpAddress FromIn6(const in6_addr& a);
  static IpAddress FromBytes(const std::array<uint8_t, 16>& bytes) { return IpAddress(bytes); }

  bool is_v4() const;  // an IPv4(-mapped) address
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  std::string ToString() const;
  // The address with every bit after the first `bits` (of 128) cleared.
  IpAddress Masked(int bits) const;

  friend bool operator==(const IpAddress&, const IpAddress&) = default;

 private:
  explicit IpAddress(const std::array<uint8_t, 16>& b) : bytes_(b) {}
  std::array<uint8_t, 16> bytes_{};
};

// An address or CIDR range, "127.0.0.0/8", "::1", "2001:db8::/32", "10.0.0.7" (an IPv4
// prefix length counts IPv4 bits, 0..32); BAD_REQUEST naming `what` when it does not parse.
struct CidrRange {
  IpAddress base;  // already masked
  int bits = 128;  // of 128
  static Result<CidrRange> Parse(std::string_view cidr, std::string_view what = "address range");
  bool Contains(const IpAddress& a) const { return a.Masked(bits) == base; }
};

struct ConnectionLimitConfig {
  double per_minute = 5;  // refill rate of each address's bucket
  double burst = 5;       // bucket capacity: new connections at once from a quiet address
  // IPv6 addresses are limited per prefix of this many bits (a single host commonly owns a
  // whole /64, so limiting single addresses would limit nothing). IPv4 is per address.
  int ipv6_prefix_bits = 64;
  // 80 bytes of table per entry of capacity (two 40-byte slots); an address becomes
  // untracked burst / per_minute minutes (1 min) after its last connection.
  size_t max_entries = size_t{1} << 18;
};

class ConnectionRateLimiter {
 public:
  explicit ConnectionRateLimiter(ConnectionLimitConfig config = {},
                                 uint64_t hash_seed = std::random_device{}());
  // Its table is LimiterTables::kConnections of `region` (made with LimiterTables::Specs).
  ConnectionRateLimiter(ConnectionLimitConfig config,
                        std::shared_ptr<internal::SharedRegion> region);

  // Exempts an address or range: "127.0.0.0/8", "::1", "2001:db8::/32", "10.0.0.7".
  // An IPv4 prefix length counts IPv4 bits (0..32). BAD_REQUEST when it does not parse.
  Status AllowCidr(std::string_view cidr);
  bool IsAllowListed(const IpAddress& addr) const;

  // A new connection from `addr`: OK (also always for allow-listed addresses);
  // RATE_LIMITED with retry_after_ms; or OVERLOADED with retry_after_ms when the table is
  // full of addresses that are all still limited.
  Status Admit(const IpAddress& addr, int64_t now_ns);
  // As above for a textual address; BAD_REQUEST when it does not parse.
  Status Admit(std::string_view addr, int64_t now_ns);

  void Sweep(int64_t now_ns) { table_.Sweep(now_ns); }
  size_t size() const { return table_.size(); }

 private:
  struct Cidr {
    IpAddress base;  // already masked
    int bits;        // of 128
  };

  ConnectionLimitConfig config_;
  mutable std::shared_mutex allow_mu_;
  std::vector<Cidr> allow_;
  internal::BoundedTable<std::array<uint8_t, 16>, TokenBucket, internal::SeededBytes16Hash> table_;
};

// Failed logins (PROTOCOL.md section 8). Only failures are counted and only failures are
// refused: a token that verifies is never refused by this limit, so nobody can lock another
// account out by presenting bad tokens that name it. Failures are counted per source
// address (IPv6: per prefix) and per account named by the token's unverified `sub`; a bad
// token from an address, or naming an account, that is over its budget is answered
// RATE_LIMITED with retry_after_ms instead of UNAUTHENTICATED.
struct FailedLoginConfig {
  double per_hour = 10;         // per account: refill rate, and capacity (10 at once)
  double per_ip_per_hour = 30;  // per address: refill rate, and capacity
  // IPv6 addresses count per prefix of this many bits, as ConnectionLimitConfig.
  int ipv6_prefix_bits = 64;
  // Of each table (accounts, addresses); 64 and 80 bytes of table per entry of capacity.
  // A key becomes untracked an hour after its last failure.
  size_t max_entries = size_t{1} << 17;
};

class FailedLoginLimiter {
 public:
  explicit FailedLoginLimiter(FailedLoginConfig config = {},
                              uint64_t hash_seed = std::random_device{}());
  // Its tables are LimiterTables::kFailedAccounts and kFailedAddresses of `region`.
  FailedLoginLimiter(FailedLoginConfig config, std::shared_ptr<internal::SharedRegion> region);

  // Counts one failed login from `addr` (nullopt: not limited by address, e.g. allow-listed)
  // naming `user` (0: no account could be read from the token). Returns OK while both
  // budgets had room for it; otherwise RATE_LIMITED with retry_after_ms (the longer wait of
  // the two), and the failure is not counted (failures while limited do not extend the
  // limit). A key the table has no room for (full of keys all still limited) is not
  // tracked and does not limit.
  Status RecordFailure(const std::optional<IpAddress>& addr, uint64_t user, int64_t now_ns);

  // Whether a failure from `addr` / naming `user` would be counted now, without counting
  // it; when not and retry_after_ms is not null, the wait. For tests and metrics.
  bool WouldAdmitFailure(const std::optional<IpAddress>& addr, uint64_t user, int64_t now_ns,
                         uint32_t* retry_after_ms = nullptr) const;

  void Sweep(int64_t now_ns) {
    accounts_.Sweep(now_ns);
    addresses_.Sweep(now_ns);
  }
  // Tracked keys, accounts and addresses together.
  size_t size() const { return accounts_.size() + addresses_.size(); }

 private:
  IpAddress KeyOf(const IpAddress& addr) const;

  FailedLoginConfig config_;
  internal::BoundedTable<uint64_t, TokenBucket, internal::SeededU64Hash> accounts_;
  internal::BoundedTable<std::array<uint8_t, 16>, TokenBucket, internal::SeededBytes16Hash>
      addresses_;
};

// The tables of the keyed limiters of a node in one SharedRegion, so that every edge
// process of the node counts against the same budgets (docs/architecture.md). The core
// process creates the region (kShared) from the configuration and its edge processes attach
// it with the same Specs(); an embedded Edge creates a private one.
struct LimiterTables {
  static constexpr size_t kSend = 0;
  static constexpr size_t kConnections = 1;
  static constexpr size_t kFailedAccounts = 2;
  static constexpr size_t kFailedAddresses = 3;
  // The other per-user budgets (KeyedSendLimiter on these tables).
  static constexpr size_t kSettings = 4;
  static constexpr size_t kKeysUpload = 5;
  static constexpr size_t kKeysFetch = 6;
  static constexpr size_t kGroups = 7;
  static constexpr size_t kKeysFetchPair = 8;  // keyed by KeysFetchPairKey
  static constexpr size_t kKeysFetchGroup = 9;  // KEYS_FETCH with a group_id, per requester
  // Users tracked at once in each of those (they refill within a minute, see EdgeOptions).
  static constexpr size_t kOtherUserMaxEntries = size_t{1} << 17;
  // (requester, target) pairs tracked at once (each for up to 30 minutes).
  static constexpr size_t kKeysFetchPairMaxEntries = size_t{1} << 18;
  static std::vector<internal::TableSpec> Specs(
      const ConnectionLimitConfig& connections, const FailedLoginConfig& failed_logins,
      size_t send_max_entries = KeyedSendLimiter::kDefaultMaxEntries);
  static Result<std::shared_ptr<internal::SharedRegion>> Create(
      const ConnectionLimitConfig& connections, const FailedLoginConfig& failed_logins,
      internal::SharedRegion::Mode mode, uint64_t seed = std::random_device{}());
};

}  // namespace iris::edge
