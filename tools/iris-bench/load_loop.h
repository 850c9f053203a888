#pragma once
// LoadLoop: one event-loop thread of an iris-bench worker process and the sessions it
// drives. It connects sessions with a bounded number of attempts in flight, keeps them
// alive (PING), sends traffic (closed-loop window or paced open-loop rate), drops and
// reconnects them (reconnect storm), and checks every delivery against the DeliveryLedger
// of its sender.
//
// Concurrency model: the worker's main thread builds the loop (AddSession, AddLedger) before
// Spawn(), then drives it only through Post() with the phase methods below, which run on the
// loop thread; it watches progress through the atomic counters (Progress()). Results are
// read after Join(). A ledger's sender and recipient are always on the same loop, so all
// correctness state is loop-local.

#include <netinet/in.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_connection.h"
#include "bench_options.h"
#include "common/uuid.h"
#include "delivery_ledger.h"
#include "histogram.h"
#include "net/event_loop.h"
#include "net/tls.h"

namespace iris::bench {

// One server as seen by a worker process.
struct Target {
  sockaddr_in addr{};
  std::unique_ptr<net::TlsContext> tls;
  std::string jwt_secret;
};

struct LoopProgress {
  uint64_t planned = 0;  // attempts this phase will make; kUnknown until it began
  uint64_t ready = 0;    // attempts that reached SYNC_DONE in this phase
  uint64_t failed = 0;   // attempts given up in this phase
  uint64_t sent = 0;
  uint64_t acked = 0;
  uint64_t refused = 0;
  uint64_t delivered = 0;  // first deliveries of ledger messages
  int64_t first_start_ns = 0;
  int64_t last_ready_ns = 0;
};

struct LoopResult {
  std::map<std::string, uint64_t> counters;
  std::map<std::string, LatencyHistogram> histograms;
  std::map<std::string, uint64_t> failures;  // reason -> count
  Violations violations;
};

class LoadLoop final : public BenchConnection::Delegate {
 public:
  enum class ConnectMode { kHold, kOnce };

  LoadLoop(const BenchOptions& options, int index, std::atomic<uint64_t>* deliveries_seen);
  ~LoadLoop() override;

  // Setup, before Spawn(). Returns the session's slot index.
  size_t AddSession(uint64_t user, const Target* target, std::optional<in_addr> source);
  // Messages from slot `sender` to slot `recipient` are checked by a ledger.
  void AddLedger(size_t sender, size_t recipient);
  size_t session_count() const { return slots_.size(); }

  Status Init();
  void Spawn();
  // Stops the loop thread and joins it (sessions stay allocated until destruction).
  void Join();
  void Post(std::function<void()> fn) { loop_.Post(std::move(fn)); }
  // Thread-safe snapshot of the counters.
  LoopProgress Progress() const;
  // Main thread, before posting BeginConnect/BeginStorm: zeroes ready/failed and marks the
  // phase's plan unknown until the loop thread has begun it.
  void ResetPhase();
  static constexpr uint64_t kUnknown = ~uint64_t{0};

  // ---- phases: loop thread only (use Post) ----
  // Connects every session that is not established, `concurrency` attempts at a time.
  // kOnce closes each session as soon as it is ready (the connect scenario).
  void BeginConnect(ConnectMode mode, int concurrency);
  // Gives up the attempts still pending or in flight (they count as failed).
  void AbandonConnect();
  // Throughput (rate <= 0): every sender keeps `window` SENDs in flight until StopTraffic.
  // Latency (rate > 0): messages/s for this loop, spread over its senders, open loop.
  void BeginTraffic(double rate, int window);
  void StopTraffic();
  // Every sender sends one message (reconnect storm: before and after the drop).
  void SendOnePerSender();
  // Drops every established session at once (abortive close) and reconnects them with
  // their cursors, `concurrency` attempts at a time, retrying refused attempts until
  // `deadline_ns`; each reconnected sender then sends one message.
  void BeginStorm(int concurrency, int64_t deadline_ns);
  // Closes every session (orderly).
  void CloseAll();
  // Checks the ledgers and fills result(). Call last.
  void Finish();

  const LoopResult& result() const { return result_; }

  // BenchConnection::Delegate
  void OnReady(BenchConnection& c) override;
  void OnEnvelope(BenchConnection& c, const v1::Envelope& e) override;
  void OnFrame(BenchConnection& c, uint8_t opcode, std::string_view payload) override;
  void OnFailed(BenchConnection& c) override;

 private:
  enum class Phase { kIdle, kConnecting, kHolding, kStorm, kClosing };
  struct Slot {
    std::unique_ptr<BenchConnection> conn;
    uint64_t user = 0;
    const Target* target = nullptr;
    std::optional<in_addr> source;
    DeliveryLedger* out = nullptr;  // this session is the sender
    DeliveryLedger* in = nullptr;   // this session is the recipient
    bool established = false;
    bool in_attempt = false;
    bool send_after_ready = false;  // storm: send one message once reconnected
  };
  class Timer;

  void StartMore();
  void StartSlot(size_t idx);
  void AttemptFailed(Slot& s, const std::string& reason, uint32_t retry_after_ms);
  void SendOne(Slot& s, int64_t intended_ns);
  void OnTimer();
  void KeepAlive();
  std::string MintToken(const Slot& s);

  const BenchOptions& options_;
  const int index_;
  std::atomic<uint64_t>* deliveries_seen_;
  net::EventLoop loop_;
  std::thread thread_;
  std::unique_ptr<Timer> timer_;
  int timer_fd_ = -1;
  UuidV7Generator keys_;
  std::vector<Slot> slots_;
  std::vector<std::unique_ptr<DeliveryLedger>> ledgers_;
  std::vector<size_t> senders_;

  Phase phase_ = Phase::kIdle;
  ConnectMode mode_ = ConnectMode::kHold;
  std::vector<size_t> pending_;                      // slots waiting to start (used from the back)
  std::vector<std::pair<int64_t, size_t>> retries_;  // (due ns, slot)
  int max_in_flight_ = 1;
  int in_flight_ = 0;
  int64_t storm_deadline_ns_ = 0;
  int64_t storm_start_ns_ = 0;
  int64_t last_keepalive_ns_ = 0;
  uint64_t token_serial_ = 0;

  bool traffic_on_ = false;
  bool paced_ = false;
  int window_ = 1;
  double rate_per_ns_ = 0;
  int64_t traffic_start_ns_ = 0;
  uint64_t paced_sent_ = 0;
  size_t next_sender_ = 0;
  std::string body_;

  std::atomic<uint64_t> planned_{kUnknown};
  std::atomic<uint64_t> ready_{0}, failed_{0}, sent_{0}, acked_{0}, refused_{0}, delivered_{0};
  std::atomic<int64_t> first_start_ns_{0}, last_ready_ns_{0};

  LoopResult result_;
  LatencyHistogram* h_tcp_;
  LatencyHistogram* h_tls_;
  LatencyHistogram* h_welcome_;
  LatencyHistogram* h_ready_;
  LatencyHistogram* h_reconnect_;
  LatencyHistogram* h_ack_;
  LatencyHistogram* h_deliver_;
};

}  // namespace iris::bench
