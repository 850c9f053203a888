#include "edge/rate_limit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace iris::edge {
namespace {

constexpr double kNanosPerSec = 1e9;
// Upper bound for derived durations, far from int64 overflow when added to a time.
constexpr double kMaxDurationNs = 1e18;

int64_t ClampToNanos(double ns) {
  if (!(ns > 0)) return 0;  // also NaN
  if (ns > kMaxDurationNs) return static_cast<int64_t>(kMaxDurationNs);
  return static_cast<int64_t>(std::llround(ns));
}

double ClampValue(double v, double lo, double hi) {
  if (!(v >= lo)) return lo;  // also NaN
  return v > hi ? hi : v;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// TokenBucket
//
// GCRA: with T = 1/rate and C = capacity, full_at is the time at which the bucket would be
// full again. Tokens available at t = C - max(0, full_at - t) / T. A take is allowed while
// at least one token is available, i.e. full_at - t <= (C - 1) * T, and moves full_at to
// max(full_at, t) + T.

TokenBucket::TokenBucket(double rate_per_sec, double capacity)
    : rate_per_sec_(static_cast<float>(ClampValue(rate_per_sec, 1e-6, 1e9))),
      capacity_(static_cast<float>(ClampValue(capacity, 1, 1e9))) {}

int64_t TokenBucket::IntervalNanos() const {
  return ClampToNanos(kNanosPerSec / static_cast<double>(rate_per_sec_));
}

int64_t TokenBucket::ToleranceNanos() const {
  // A multiple of the rounded interval, so that capacity takes at one instant always fit
  // exactly (rounding the two separately could refuse the last token by a nanosecond).
  return ClampToNanos((static_cast<double>(capacity_) - 1) * static_cast<double>(IntervalNanos()));
}

int64_t TokenBucket::WaitNanos(int64_t now_ns) const {
  if (full_at_ns_ <= now_ns) return 0;
  const int64_t ahead = full_at_ns_ - now_ns;  // > 0, no overflow: full_at_ns_ > now_ns
  const int64_t tolerance = ToleranceNanos();
  return ahead > tolerance ? ahead - tolerance : 0;
}

double TokenBucket::Available(int64_t now_ns) const {
  if (full_at_ns_ <= now_ns) return capacity_;
  const double ahead = static_cast<double>(full_at_ns_ - now_ns);
  const double tokens =
      static_cast<double>(capacity_) - ahead * static_cast<double>(rate_per_sec_) / kNanosPerSec;
  return tokens < 0 ? 0 : tokens;
}

bool TokenBucket::TryTake(int64_t now_ns, uint32_t* retry_after_ms) {
  const int64_t wait = WaitNanos(now_ns);
  if (wait > 0) {
    if (retry_after_ms != nullptr) *retry_after_ms = RetryAfterMillis(wait);
    return false;
  }
  const int64_t base = std::max(full_at_ns_, now_ns);
  full_at_ns_ = base + IntervalNanos();
  return true;
}

uint32_t RetryAfterMillis(int64_t wait_ns) {
  if (wait_ns <= 0) return 1;
  const int64_t ms = wait_ns / 1'000'000 + (wait_ns % 1'000'000 != 0 ? 1 : 0);
  if (ms > static_cast<int64_t>(UINT32_MAX)) return UINT32_MAX;
  return static_cast<uint32_t>(std::max<int64_t>(ms, 1));
}

// ---------------------------------------------------------------------------------------
// SendRateLimiter

double SendRateConfig::SustainedCapacity() const {
  return std::max(1.0, (burst_per_sec - sustained_per_sec) * burst_seconds);
}

double SendRateConfig::PeakCapacity() const { return std::max(1.0, burst_per_sec); }

SendRateLimiter::SendRateLimiter(const SendRateConfig& config)
    : sustained_(config.sustained_per_sec, config.SustainedCapacity()),
      peak_(config.burst_per_sec, config.PeakCapacity()) {}

bool SendRateLimiter::TryTake(int64_t now_ns, uint32_t* retry_after_ms) {
  const int64_t wait = std::max(sustained_.WaitNanos(now_ns), peak_.WaitNanos(now_ns));
  if (wait > 0) {
    if (retry_after_ms != nullptr) *retry_after_ms = RetryAfterMillis(wait);
    return false;
  }
  // Both have a token now, so both takes succeed.
  const bool a = sustained_.TryTake(now_ns, nullptr);
  const bool b = peak_.TryTake(now_ns, nullptr);
  return a && b;
}

int64_t SendRateLimiter::FullAtNanos() const {
  return std::max(sustained_.FullAtNanos(), peak_.FullAtNanos());
}

// ---------------------------------------------------------------------------------------
// Hashes

namespace internal {

size_t SeededU64Hash::operator()(uint64_t key) const {
  return static_cast<size_t>(XXH3_64bits_withSeed(&key, sizeof(key), seed));
}

size_t SeededBytes16Hash::operator()(const std::array<uint8_t, 16>& key) const {
  return static_cast<size_t>(XXH3_64bits_withSeed(key.data(), key.size(), seed));
}

std::shared_ptr<SharedRegion> PrivateRegion(const TableSpec& spec, uint64_t seed) {
  auto r = SharedRegion::Create({spec}, SharedRegion::Mode::kPrivate, seed);
  if (!r.ok()) {
    std::fprintf(stderr, "iris: limiter table: %s\n", r.status().ToString().c_str());
    std::abort();
  }
  return *r;
}

}  // namespace internal

// Salts of the region's seed per table (so two tables never share a hash function).
namespace {
constexpr uint64_t kSaltSend = 0;
constexpr uint64_t kSaltConnections = 0x6a09e667f3bcc909ULL;
constexpr uint64_t kSaltAccounts = 0xbb67ae8584caa73bULL;
constexpr uint64_t kSaltAddresses = 0x3c6ef372fe94f82bULL;
}  // namespace

std::vector<internal::TableSpec> LimiterTables::Specs(const ConnectionLimitConfig& connections,
                                                      const FailedLoginConfig& failed_logins,
                                                      size_t send_max_entries) {
  using internal::SeededBytes16Hash;
  using internal::SeededU64Hash;
  using Bytes16 = std::array<uint8_t, 16>;
  std::vector<internal::TableSpec> specs(10);
  using UserTable = internal::SharedTable<uint64_t, SendRateLimiter, SeededU64Hash>;
  specs[kSend] = UserTable::Spec(send_max_entries);
  for (size_t t : {kSettings, kKeysUpload, kKeysFetch, kGroups, kKeysFetchGroup}) {
    specs[t] = UserTable::Spec(kOtherUserMaxEntries);
  }
  specs[kKeysFetchPair] = UserTable::Spec(kKeysFetchPairMaxEntries);
  specs[kConnections] =
      internal::SharedTable<Bytes16, TokenBucket, SeededBytes16Hash>::Spec(connections.max_entries);
  specs[kFailedAccounts] =
      internal::SharedTable<uint64_t, TokenBucket, SeededU64Hash>::Spec(failed_logins.max_entries);
  specs[kFailedAddresses] = internal::SharedTable<Bytes16, TokenBucket, SeededBytes16Hash>::Spec(
      failed_logins.max_entries);
  return specs;
}

Result<std::shared_ptr<internal::SharedRegion>> LimiterTables::Create(
    const ConnectionLimitConfig& connections, const FailedLoginConfig& failed_logins,
    internal::SharedRegion::Mode mode, uint64_t seed) {
  return internal::SharedRegion::Create(Specs(connections, failed_logins), mode, seed);
}

// ---------------------------------------------------------------------------------------
// KeyedSendLimiter

KeyedSendLimiter::KeyedSendLimiter(SendRateConfig config, size_t max_entries, uint64_t hash_seed)
    : config_(config), table_(max_entries, internal::SeededU64Hash{hash_seed}) {}

KeyedSendLimiter::KeyedSendLimiter(SendRateConfig config,
                                   std::shared_ptr<internal::SharedRegion> region)
    : KeyedSendLimiter(config, std::move(region), LimiterTables::kSend) {}

KeyedSendLimiter::KeyedSendLimiter(SendRateConfig config,
                                   std::shared_ptr<internal::SharedRegion> region, size_t table)
    : config_(config), table_(std::move(region), table, kSaltSend + table) {}

Status KeyedSendLimiter::TryTake(uint64_t user, int64_t now_ns) {
  bool ok = false;
  uint32_t retry_ms = 0;
  int64_t table_retry_ns = 0;
  const bool tracked = table_.Update(
      user, now_ns, [this] { return SendRateLimiter(config_); },
      [&](SendRateLimiter& l) { ok = l.TryTake(now_ns, &retry_ms); }, &table_retry_ns);
  if (!tracked) {
    return Overloaded("too many rate-limited users", RetryAfterMillis(table_retry_ns));
  }
  if (!ok) return RateLimited("send rate limit exceeded", retry_ms);
  return Status::Ok();
}

std::array<int64_t, 2> KeyedSendLimiter::TakeDebt(uint64_t user, int64_t now_ns) {
  std::array<int64_t, 2> debt{};
  if (!table_.Read(user, [](const SendRateLimiter* l) { return l != nullptr; })) return debt;
  int64_t table_retry_ns = 0;
  table_.Update(
      user, now_ns, [this] { return SendRateLimiter(config_); },
      [&](SendRateLimiter& l) {
        debt = l.DebtNanos(now_ns);
        l = SendRateLimiter(config_);
      },
      &table_retry_ns);
  return debt;
}

bool KeyedSendLimiter::AddDebt(uint64_t user, int64_t now_ns, const std::array<int64_t, 2>& debt) {
  if (debt[0] <= 0 && debt[1] <= 0) return true;
  int64_t table_retry_ns = 0;
  return table_.Update(
      user, now_ns, [this] { return SendRateLimiter(config_); },
      [&](SendRateLimiter& l) { l.AddDebt(now_ns, debt); }, &table_retry_ns);
}

// ---------------------------------------------------------------------------------------
// IpAddress

std::optional<IpAddress> IpAddress::Parse(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  in_addr v4;
  if (inet_pton(AF_INET, buf, &v4) == 1) return FromIn4(v4);
  in6_addr v6;
  if (inet_pton(AF_INET6, buf, &v6) == 1) return FromIn6(v6);
  return std::nullopt;
}

IpAddress IpAddress::FromIn4(const in_addr& a) {
  std::array<uint8_t, 16> b{};
  b[10] = 0xFF;
  b[11] = 0xFF;
  std::memcpy(&b[12], &a.s_addr, 4);  // s_addr is in network byte order already
  return IpAddress(b);
}

IpAddress IpAddress::FromIn6(const in6_addr& a) {
  std::array<uint8_t, 16> b{};
  std::memcpy(b.data(), a.s6_addr, 16);
  return IpAddress(b);
}

bool IpAddress::is_v4() const {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  return std::memcmp(bytes_.data(), kMapped, sizeof(kMapped)) == 0;
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (is_v4()) {
    in_addr v4;
    std::memcpy(&v4.s_addr, &bytes_[12], 4);
    inet_ntop(AF_INET, &v4, buf, sizeof(buf));
  } else {
    in6_addr v6;
    std::memcpy(v6.s6_addr, bytes_.data(), 16);
    inet_ntop(AF_INET6, &v6, buf, sizeof(buf));
  }
  return buf;
}

IpAddress IpAddress::Masked(int bits) const {
  bits = std::clamp(bits, 0, 128);
  std::array<uint8_t, 16> b = bytes_;
  for (int i = 0; i < 16; ++i) {
    const int keep = std::clamp(bits - i * 8, 0, 8);  // bits of byte i to keep
    b[static_cast<size_t>(i)] &= static_cast<uint8_t>(0xFF00 >> keep);
  }
  return IpAddress(b);
}

// ---------------------------------------------------------------------------------------
// ConnectionRateLimiter

ConnectionRateLimiter::ConnectionRateLimiter(ConnectionLimitConfig config, uint64_t hash_seed)
    : config_(config), table_(config.max_entries, internal::SeededBytes16Hash{hash_seed}) {
  config_.ipv6_prefix_bits = std::clamp(config_.ipv6_prefix_bits, 1, 128);
}

ConnectionRateLimiter::ConnectionRateLimiter(ConnectionLimitConfig config,
                                             std::shared_ptr<internal::SharedRegion> region)
    : config_(config), table_(std::move(region), LimiterTables::kConnections, kSaltConnections) {
  config_.ipv6_prefix_bits = std::clamp(config_.ipv6_prefix_bits, 1, 128);
}

Result<CidrRange> CidrRange::Parse(std::string_view cidr, std::string_view what) {
  std::string_view addr_text = cidr;
  std::optional<int> prefix;
  if (size_t slash = cidr.find('/'); slash != std::string_view::npos) {
    addr_text = cidr.substr(0, slash);
    std::string_view len_text = cidr.substr(slash + 1);
    int len = -1;
    auto [ptr, ec] = std::from_chars(len_text.data(), len_text.data() + len_text.size(), len);
    if (len_text.empty() || len_text.size() > 3 || ec != std::errc() ||
        ptr != len_text.data() + len_text.size()) {
      return BadRequest("bad prefix length in " + std::string(what) + " '" + std::string(cidr) +
                        "'");
    }
    prefix = len;
  }
  std::optional<IpAddress> addr = IpAddress::Parse(addr_text);
  if (!addr) {
    return BadRequest("bad address in " + std::string(what) + " '" + std::string(cidr) + "'");
  }
  // An IPv4 prefix counts IPv4 bits; in the 128-bit mapped form it starts after 96 bits.
  const int max_bits = addr->is_v4() && addr_text.find(':') == std::string_view::npos ? 32 : 128;
  const int len = prefix.value_or(max_bits);
  if (len < 0 || len > max_bits) {
    return BadRequest("bad prefix length in " + std::string(what) + " '" + std::string(cidr) + "'");
  }
  const int bits = max_bits == 32 ? 96 + len : len;
  return CidrRange{addr->Masked(bits), bits};
}

Status ConnectionRateLimiter::AllowCidr(std::string_view cidr) {
  IRIS_ASSIGN_OR_RETURN(const CidrRange range, CidrRange::Parse(cidr, "allow-list entry"));
  std::unique_lock lock(allow_mu_);
  allow_.push_back(Cidr{range.base, range.bits});
  return Status::Ok();
}

bool ConnectionRateLimiter::IsAllowListed(const IpAddress& addr) const {
  std::shared_lock lock(allow_mu_);
  for (const Cidr& c : allow_) {
    if (addr.Masked(c.bits) == c.base) return true;
  }
  return false;
}

Status ConnectionRateLimiter::Admit(const IpAddress& addr, int64_t now_ns) {
  if (IsAllowListed(addr)) return Status::Ok();
  const IpAddress key = addr.is_v4() ? addr : addr.Masked(config_.ipv6_prefix_bits);
  bool ok = false;
  uint32_t retry_ms = 0;
  int64_t table_retry_ns = 0;
  const bool tracked = table_.Update(
      key.bytes(), now_ns, [this] { return TokenBucket(config_.per_minute / 60.0, config_.burst); },
      [&](TokenBucket& b) { ok = b.TryTake(now_ns, &retry_ms); }, &table_retry_ns);
  if (!tracked) {
    return Overloaded("too many rate-limited addresses", RetryAfterMillis(table_retry_ns));
  }
  if (!ok) return RateLimited("too many new connections from this address", retry_ms);
  return Status::Ok();
}

Status ConnectionRateLimiter::Admit(std::string_view addr, int64_t now_ns) {
  std::optional<IpAddress> a = IpAddress::Parse(addr);
  if (!a) return BadRequest("not an IP address");
  return Admit(*a, now_ns);
}

// ---------------------------------------------------------------------------------------
// FailedLoginLimiter

FailedLoginLimiter::FailedLoginLimiter(FailedLoginConfig config, uint64_t hash_seed)
    : config_(config),
      accounts_(config.max_entries, internal::SeededU64Hash{hash_seed}),
      addresses_(config.max_entries, internal::SeededBytes16Hash{hash_seed ^ 0x9e3779b97f4a7c15}) {
  config_.ipv6_prefix_bits = std::clamp(config_.ipv6_prefix_bits, 1, 128);
}

FailedLoginLimiter::FailedLoginLimiter(FailedLoginConfig config,
                                       std::shared_ptr<internal::SharedRegion> region)
    : config_(config),
      accounts_(region, LimiterTables::kFailedAccounts, kSaltAccounts),
      addresses_(std::move(region), LimiterTables::kFailedAddresses, kSaltAddresses) {
  config_.ipv6_prefix_bits = std::clamp(config_.ipv6_prefix_bits, 1, 128);
}

IpAddress FailedLoginLimiter::KeyOf(const IpAddress& addr) const {
  return addr.is_v4() ? addr : addr.Masked(config_.ipv6_prefix_bits);
}

bool FailedLoginLimiter::WouldAdmitFailure(const std::optional<IpAddress>& addr, uint64_t user,
                                           int64_t now_ns, uint32_t* retry_after_ms) const {
  auto wait_of = [now_ns](const TokenBucket* b) -> int64_t {
    return b == nullptr ? 0 : b->WaitNanos(now_ns);
  };
  int64_t wait = 0;
  if (user != 0) wait = accounts_.Read(user, wait_of);
  if (addr) wait = std::max(wait, addresses_.Read(KeyOf(*addr).bytes(), wait_of));
  if (wait > 0 && retry_after_ms != nullptr) *retry_after_ms = RetryAfterMillis(wait);
  return wait == 0;
}

Status FailedLoginLimiter::RecordFailure(const std::optional<IpAddress>& addr, uint64_t user,
                                         int64_t now_ns) {
  // Count in neither table unless both have room: a failure refused for one reason is not
  // charged to the other (a limited address does not use up the account's budget).
  uint32_t retry_ms = 0;
  if (!WouldAdmitFailure(addr, user, now_ns, &retry_ms)) {
    return RateLimited("invalid token; too many failed logins, retry later", retry_ms);
  }
  int64_t table_retry_ns = 0;  // a full table: the key is not tracked (see the header)
  uint32_t wait_ms = 0;
  bool limited = false;
  auto take = [&](TokenBucket& b) {
    uint32_t w = 0;
    if (!b.TryTake(now_ns, &w)) {
      limited = true;
      wait_ms = std::max(wait_ms, w);
    }
  };
  if (user != 0) {
    (void)accounts_.Update(
        user, now_ns, [this] { return TokenBucket(config_.per_hour / 3600.0, config_.per_hour); },
        take, &table_retry_ns);
  }
  if (addr) {
    (void)addresses_.Update(
        KeyOf(*addr).bytes(), now_ns,
        [this] { return TokenBucket(config_.per_ip_per_hour / 3600.0, config_.per_ip_per_hour); },
        take, &table_retry_ns);
  }
  // Only a concurrent failure for the same key can get here (the check above passed).
  if (limited) {
    return RateLimited("invalid token; too many failed logins, retry later", wait_ms);
  }
  return Status::Ok();
}

}  // namespace iris::edge
