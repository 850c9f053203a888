#pragma once
// The chaos harness (issue 17): one irisd (tests/integration/harness ServerProcess), seeded
// client threads that record a History (history.h) and retry a SEND that met UNAVAILABLE,
// OVERLOADED, RATE_LIMITED, a timeout or a lost connection with the SAME idempotency key
// after reconnecting, a Nemesis injecting faults on a seeded schedule, the final catch-up of
// every recipient from cursor 0, and the Checker (checker.h) over the result.
//
// Waiting is always on an observable condition with a deadline (acknowledgements counted,
// timeouts seen, waitpid); client back-off only paces retries.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness/checker.h"
#include "harness/history.h"
#include "harness/server_process.h"

namespace iris::chaos {

// The run's seed: IRIS_CHAOS_SEED when set (replay), else a fresh random one. Printed.
uint64_t ChaosSeed();
// IRIS_CHAOS_CYCLES when set, else `long_cycles` with IRIS_CHAOS_LONG=1, else `ci_cycles`.
int ChaosCycles(int ci_cycles, int long_cycles);
bool ChaosLong();
// irisd flags every chaos server needs: an inbox cap (--inbox-cap) far above any run's
// traffic, so that the final catch-up from cursor 0 sees every message (older ones would
// otherwise move to the archive and look lost).
std::vector<std::string> ChaosServerArgs();
// A token of `server`'s key valid whatever the server's clock (skewed by up to ±10 min).
std::string ChaosToken(const testing::ServerProcess& server, uint64_t user);

struct ChaosOptions {
  uint64_t seed = 1;
  int clients = 4;  // users first_user .. first_user + clients - 1; each sends to others
  uint64_t first_user = 1000;
  size_t body_bytes = 48;       // every body is unique: a tag, then padding up to this size
  int reply_timeout_ms = 1500;  // no SEND_ACK/ERROR in this long: the connection is dropped
  int connect_timeout_ms = 1500;
  int max_backoff_ms = 100;  // paces reconnects and retries (never synchronises)
};

class ChaosRun;

// A fault. Start once before the schedule, Inject then Heal per cycle (Heal must leave the
// system able to serve: the run checks progress after it).
class Nemesis {
 public:
  virtual ~Nemesis() = default;
  virtual std::string name() const = 0;
  virtual void Start(ChaosRun& /*run*/) {}
  virtual void Inject(ChaosRun& run, std::mt19937_64& rng) = 0;
  virtual void Heal(ChaosRun& run) = 0;
};

class ChaosRun {
 public:
  ChaosRun(testing::ServerProcess* server, ChaosOptions options);
  // Clients over several nodes (a cluster): client i starts on node i % n and moves to the
  // next node whenever it reconnects. Probes and the final catch-up use the first node.
  ChaosRun(std::vector<testing::ServerProcess*> servers, ChaosOptions options);
  ~ChaosRun();

  testing::ServerProcess& server() { return *servers_[0]; }
  testing::ServerProcess& server(size_t i) { return *servers_.at(i); }
  size_t servers() const { return servers_.size(); }
  const ChaosOptions& options() const { return options_; }
  History& history() { return history_; }

  // Publishes the servers' current ports to the clients (after every (re)start).
  void ServerUp();
  void StartClients();
  // Stops and joins the clients (a SEND in flight is abandoned: unacknowledged).
  void StopClients();
  // While paused, a client whose connection ends does not reconnect (its SEND in flight is
  // sent again, same key, after Resume): a test can open its own session of a chaos user,
  // which replaces the client's, without the client taking it back at once.
  void PauseReconnects() { paused_.store(true); }
  void ResumeReconnects() { paused_.store(false); }

  // Counters the schedule waits on.
  uint64_t acks() const { return acks_.load(); }
  uint64_t timeouts() const { return timeouts_.load(); }
  uint64_t errors(uint32_t code) const;
  // Waits until acks() >= target; false at the deadline.
  bool WaitAcks(uint64_t target, int64_t timeout_ms);

  // The schedule: nemesis.Start, then `cycles` times: wait for a seeded number (1..2*clients)
  // of new acknowledgements (sends are in flight), Inject, Heal; finally wait for progress
  // once more. False (with a test failure) when progress stopped.
  bool RunSchedule(Nemesis& nemesis, int cycles);

  // After healing: every user catches up from cursor 0 (TestClient), recorded as the final
  // catch-up. Then the checker; prints the report, writes it as JSON to
  // $IRIS_CHAOS_REPORT_DIR (or the current directory) as chaos-<name>.json, and adds a test
  // failure when it is not valid.
  CheckerReport FinishAndCheck(const std::string& name, int cycles,
                               const std::string& extra_json = "");

  // A logged-in probe connection for user `user` (not a chaos client): its WELCOME.
  v1::Welcome Probe(uint64_t user);
  // The same through server(i); nullopt when it cannot connect or HELLO is refused.
  std::optional<v1::Welcome> TryProbe(uint64_t user, size_t i);

 private:
  void ClientLoop(int index);
  uint64_t NextSession() { return ++sessions_; }

  std::vector<testing::ServerProcess*> servers_;
  ChaosOptions options_;
  History history_;
  std::vector<std::unique_ptr<std::atomic<uint16_t>>> ports_;  // one per server
  std::vector<std::string> hosts_;                             // one per server
  std::vector<std::string> ca_files_;                          // one per server
  std::vector<std::string> tokens_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> paused_{false};
  std::atomic<uint64_t> acks_{0};
  std::atomic<uint64_t> timeouts_{0};
  std::atomic<uint64_t> sessions_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on stop (wakes back-offs)
  std::map<uint32_t, uint64_t> errors_;
  std::vector<std::thread> threads_;
};

// kill -9 of irisd with sends in flight, restart on the same data directory. Asserts the
// process died of SIGKILL.
class KillNemesis : public Nemesis {
 public:
  std::string name() const override { return "kill9"; }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override;
  void Heal(ChaosRun& run) override;
  int kills() const { return kills_; }

 private:
  int kills_ = 0;
};

// SIGSTOP irisd until every client has timed out at least once more (longer than the
// clients' timeouts, observed), then SIGCONT. Asserts the process stopped and continued.
class PauseNemesis : public Nemesis {
 public:
  std::string name() const override { return "pause"; }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override;
  void Heal(ChaosRun& run) override;
};

}  // namespace iris::chaos
