#pragma once
// Edge: the client-facing side of irisd (DESIGN.md section 1): TLS 1.3 termination, HELLO
// and token checks, rate limits, sessions. One EdgeLoop per core, each with its own
// SO_REUSEPORT listening socket on the same port and its own sessions; the kernel spreads
// new connections among the loops.
//
// Edge implements core::EdgeSink: pushes from the core are posted to the loop that holds the
// target session (SessionRef::edge is the loop index).
//
// Thread-safety: Start/StopAccepting/Shutdown from one controlling thread; EdgeSink methods,
// RecheckAllSessions and the counters from any thread; everything else in EdgeLoop runs on
// its loop thread.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "auth/jwt.h"
#include "common/clock.h"
#include "core/core_api.h"
#include "edge/rate_limit.h"
#include "net/event_loop.h"
#include "net/listener.h"
#include "net/tls.h"
#include "wire/validate.h"

namespace iris::edge {

struct EdgeOptions {
  std::string listen = "0.0.0.0:7443";
  int loops = 0;                        // 0 = one per core (at most 256)
  uint32_t process_index = 0;           // edge process index (--edge-processes); 0 embedded
  uint32_t hello_timeout_ms = 10'000;   // TLS handshake + valid HELLO
  uint32_t idle_timeout_ms = 25'000;
  size_t max_output_bytes = 1 << 20;    // per connection; a slower reader is disconnected
  uint32_t max_inflight_requests = 256; // per connection; reading pauses beyond it
  uint32_t default_page_size = 256;
  uint32_t max_presence_subscriptions = 1024;
  // Graceful degradation: pressure = max(loop lag / loop_lag_budget_ms, ...).
  double loop_lag_budget_ms = 200;
  wire::ValidationLimits limits;
  SendRateConfig send_rate;             // per user: SEND and RECEIPT
  // Per user, for the other requests that write durably or take from another user's data
  // (docs/protocol.md "Limits"). Same two-bucket semantics as send_rate.
  SendRateConfig settings_rate = kSettingsRate;       // SETTINGS
  SendRateConfig keys_upload_rate = kKeysUploadRate;  // KEYS_UPLOAD
  SendRateConfig keys_fetch_rate = kKeysFetchRate;    // KEYS_FETCH, per requester
  SendRateConfig group_rate = kGroupRate;             // GROUP_CREATE and GROUP_UPDATE
  ConnectionLimitConfig connection_rate;  // per IP
  std::vector<std::string> connection_allowlist;  // addresses or CIDR ranges
  FailedLoginConfig failed_logins;      // per account
  std::vector<std::string> capabilities = {"receipts", "presence", "typing", "e2ee", "groups"};
};

class Edge;

// One loop thread and the sessions it holds.
class EdgeLoop {
 public:
  EdgeLoop(Edge& edge, uint32_t index);
  Edge& edge() { return edge_; }
  net::EventLoop& loop() { return loop_; }
  uint32_t index() const { return index_; }
  // The core's name for a session of this loop: (edge process << 8) | loop index.
  core::SessionRef RefOf(uint64_t session_id) const;
  // Loop thread only.
  class Session* Find(uint64_t session_id);
  void Forget(uint64_t session_id);  // destroys the session after this loop turn
  size_t session_count() const { return count_.load(std::memory_order_relaxed); }

 private:
  friend class Edge;
  void Accept(int fd, const std::string& peer_ip);
  void Sweep();

  Edge& edge_;
  const uint32_t index_;
  net::EventLoop loop_;
  std::unique_ptr<net::Listener> listener_;
  std::unordered_map<uint64_t, std::unique_ptr<class Session>> sessions_;
  uint64_t next_session_ = 1;
  int64_t last_sweep_ms_ = 0;
  std::atomic<size_t> count_{0};
  std::thread thread_;
};

class Edge final : public core::EdgeSink {
 public:
  // Every reference must outlive the Edge.
  Edge(EdgeOptions options, core::CoreApi& core, const auth::TokenVerifier& verifier,
       const net::TlsContext& tls, const Clock& clock);
  ~Edge() override;

  Status Start();
  uint16_t port() const { return port_; }
  void StopAccepting();
  // Closes every session gracefully (in-flight replies are written first), within
  // `deadline_ms`, then stops the loops.
  void Shutdown(int64_t deadline_ms);
  // Re-checks every session's token (after a revocation): revoked sessions are closed.
  void RecheckAllSessions();
  size_t session_count() const;

  void Deliver(const core::SessionRef& to, const v1::Envelope& envelope) override;
  void Replace(const core::SessionRef& old_session) override;
  void SendPresence(const core::SessionRef& to, const v1::Presence& presence) override;
  void SendTyping(const core::SessionRef& to, const v1::Typing& typing) override;

  const EdgeOptions& options() const { return options_; }
  core::CoreApi& core() { return core_; }
  const auth::TokenVerifier& verifier() const { return verifier_; }
  const net::TlsContext& tls() const { return tls_; }
  const Clock& clock() const { return clock_; }
  KeyedSendLimiter& send_limiter() { return send_limiter_; }
  KeyedSendLimiter& settings_limiter() { return settings_limiter_; }
  KeyedSendLimiter& keys_upload_limiter() { return keys_upload_limiter_; }
  KeyedSendLimiter& keys_fetch_limiter() { return keys_fetch_limiter_; }
  KeyedSendLimiter& group_limiter() { return group_limiter_; }
  FailedLoginLimiter& failed_logins() { return failed_logins_; }
  ConnectionRateLimiter& connection_limiter() { return connection_limiter_; }
  EdgeLoop& loop_at(uint32_t i) { return *loops_[i]; }
  uint32_t loop_count() const { return static_cast<uint32_t>(loops_.size()); }

 private:
  EdgeOptions options_;
  core::CoreApi& core_;
  const auth::TokenVerifier& verifier_;
  const net::TlsContext& tls_;
  const Clock& clock_;
  KeyedSendLimiter send_limiter_;
  KeyedSendLimiter settings_limiter_;
  KeyedSendLimiter keys_upload_limiter_;
  KeyedSendLimiter keys_fetch_limiter_;
  KeyedSendLimiter group_limiter_;
  FailedLoginLimiter failed_logins_;
  ConnectionRateLimiter connection_limiter_;
  std::vector<std::unique_ptr<EdgeLoop>> loops_;
  uint16_t port_ = 0;
  bool started_ = false;
};

}  // namespace iris::edge
