#include "harness/chaos.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "common/clock.h"
#include "support/wait_for.h"
#include "wire/opcode.h"

namespace iris::chaos {
namespace {

using wire::Opcode;

uint8_t Op(Opcode o) { return static_cast<uint8_t>(o); }

int64_t NowMs() { return MonoNanos() / 1'000'000; }

}  // namespace

// Issued 10 min ago, valid for 6 h.
std::string ChaosToken(const testing::ServerProcess& server, uint64_t user) {
  auth::Claims c;
  c.user_id = user;
  c.iat = SystemClock::Instance().WallMillis() / 1000 - 600;
  c.exp = c.iat + 6 * 3600;
  c.jti = "chaos-" + std::to_string(user) + "-" + std::to_string(MonoNanos());
  return server.Token(c);
}

namespace {

bool Retryable(uint32_t code) {
  const auto c = static_cast<StatusCode>(code);
  return c == StatusCode::kUnavailable || c == StatusCode::kOverloaded ||
         c == StatusCode::kRateLimited;
}

}  // namespace

uint64_t ChaosSeed() {
  uint64_t seed = 0;
  if (const char* s = std::getenv("IRIS_CHAOS_SEED"); s != nullptr && *s != '\0') {
    char* end = nullptr;
    seed = std::strtoull(s, &end, 10);
    if (end == nullptr || *end != '\0') {
      ADD_FAILURE() << "IRIS_CHAOS_SEED must be a decimal integer, got \"" << s << "\"";
    }
  } else {
    seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }
  std::cout << "chaos seed: " << seed << " (replay with IRIS_CHAOS_SEED=" << seed << ")"
            << std::endl;
  return seed;
}

bool ChaosLong() {
  const char* l = std::getenv("IRIS_CHAOS_LONG");
  return l != nullptr && std::string(l) == "1";
}

std::vector<std::string> ChaosServerArgs() { return {"--inbox-cap", "1000000000"}; }

int ChaosCycles(int ci_cycles, int long_cycles) {
  if (const char* s = std::getenv("IRIS_CHAOS_CYCLES"); s != nullptr && *s != '\0') {
    const int n = std::atoi(s);
    if (n <= 0) {
      ADD_FAILURE() << "IRIS_CHAOS_CYCLES must be a positive integer, got \"" << s << "\"";
      return ci_cycles;
    }
    return n;
  }
  return ChaosLong() ? long_cycles : ci_cycles;
}

ChaosRun::ChaosRun(testing::ServerProcess* server, ChaosOptions options)
    : ChaosRun(std::vector<testing::ServerProcess*>{server}, options) {}

ChaosRun::ChaosRun(std::vector<testing::ServerProcess*> servers, ChaosOptions options)
    : servers_(std::move(servers)), options_(options) {
  // A write to a connection whose server was just killed must fail, not kill the test.
  signal(SIGPIPE, SIG_IGN);
  for (size_t i = 0; i < servers_.size(); ++i) {
    ports_.push_back(std::make_unique<std::atomic<uint16_t>>(0));
  }
}

ChaosRun::~ChaosRun() { StopClients(); }

void ChaosRun::ServerUp() {
  for (size_t i = 0; i < servers_.size(); ++i) ports_[i]->store(servers_[i]->port());
}

void ChaosRun::StartClients() {
  ServerUp();
  hosts_.clear();
  ca_files_.clear();
  for (testing::ServerProcess* s : servers_) {
    hosts_.push_back(s->host());
    ca_files_.push_back(s->cert_file());
  }
  tokens_.clear();
  for (int i = 0; i < options_.clients; ++i) {
    tokens_.push_back(ChaosToken(server(), options_.first_user + static_cast<uint64_t>(i)));
  }
  stop_ = false;
  for (int i = 0; i < options_.clients; ++i) threads_.emplace_back([this, i] { ClientLoop(i); });
}

void ChaosRun::StopClients() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

uint64_t ChaosRun::errors(uint32_t code) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = errors_.find(code);
  return it == errors_.end() ? 0 : it->second;
}

bool ChaosRun::WaitAcks(uint64_t target, int64_t timeout_ms) {
  return testing::PollUntil([&] { return acks() >= target; }, timeout_ms, 5);
}

void ChaosRun::ClientLoop(int index) {
  const uint64_t me = options_.first_user + static_cast<uint64_t>(index);
  std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(index) + 1);
  std::unique_ptr<client::Connection> conn;
  uint64_t session = 0;
  uint64_t cursor = 0;  // the highest id this user has seen: its "persisted" cursor
  uint64_t request_id = 0;
  uint64_t seq = 0;
  size_t node = static_cast<size_t>(index) % servers_.size();
  bool moved = true;  // the first connection goes to `node` itself
  struct Pending {
    bool active = false;
    std::string key;
    std::string body;
    uint64_t recipient = 0;
  } p;
  auto backoff = [&](int64_t ms) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(ms, 1)),
                 [&] { return stop_.load(); });
  };
  auto jitter = [&] {
    return static_cast<int64_t>(rng() % static_cast<uint64_t>(options_.max_backoff_ms)) + 1;
  };
  auto drop = [&] {
    if (conn) conn->Abort();
    conn.reset();
  };
  auto record_envelope = [&](const v1::Envelope& env, EventType type) {
    Event e;
    e.type = type;
    e.session = session;
    e.sender = env.sender();
    e.recipient = me;
    e.message_id = env.id();
    e.body = env.body();
    history_.Add(std::move(e));
    cursor = std::max(cursor, env.id());
  };

  while (!stop_) {
    if (!conn && paused_.load()) {
      backoff(10);
      continue;
    }
    if (!conn) {
      // Every reconnect goes to the next node: the one just left may be cut off or down.
      if (!moved) node = (node + 1) % servers_.size();
      moved = false;
      client::ConnectOptions o;
      o.host = hosts_[node];
      o.port = ports_[node]->load();
      o.ca_file = ca_files_[node];
      o.timeout_ms = options_.connect_timeout_ms;
      const int64_t t0 = NowMs();
      auto c = client::Connection::Connect(o);
      if (!c.ok()) {
        if (NowMs() - t0 >= options_.connect_timeout_ms * 9 / 10) ++timeouts_;
        backoff(jitter());
        continue;
      }
      conn = std::move(c).value();
      session = NextSession();
      v1::Hello h;
      h.add_versions(1);
      h.set_token(tokens_[static_cast<size_t>(index)]);
      h.set_cursor(cursor);
      h.set_client("iris-chaos/1");
      if (!conn->SendFrame(Op(Opcode::kHello), h).ok()) {
        drop();
        continue;
      }
      auto w = conn->ReadFrame(options_.reply_timeout_ms);
      if (!w.ok() || w->opcode != Op(Opcode::kWelcome)) {
        if (!w.ok() && w.status().code() == StatusCode::kOverloaded) ++timeouts_;
        drop();
        backoff(jitter());
        continue;
      }
    }
    if (!p.active) {
      p.active = true;
      p.key = testing::NewKey();
      uint64_t to = me;
      while (options_.clients > 1 && to == me) {
        to = options_.first_user + rng() % static_cast<uint64_t>(options_.clients);
      }
      p.recipient = to;
      p.body = "chaos/" + std::to_string(options_.seed) + "/" + std::to_string(me) + "/" +
               std::to_string(++seq) + "/";
      if (p.body.size() < options_.body_bytes) p.body.resize(options_.body_bytes, '.');
    }
    v1::Send s;
    s.set_request_id(++request_id);
    s.set_recipient(p.recipient);
    s.set_body(p.body);
    s.set_idempotency_key(p.key);
    {
      Event e;
      e.type = EventType::kSend;
      e.session = session;
      e.request_id = request_id;
      e.key = p.key;
      e.sender = me;
      e.recipient = p.recipient;
      e.body = p.body;
      history_.Add(std::move(e));
    }
    if (!conn->SendFrame(Op(Opcode::kSend), s).ok()) {
      drop();
      continue;
    }
    const int64_t deadline = NowMs() + options_.reply_timeout_ms;
    for (;;) {
      const int64_t left = deadline - NowMs();
      if (left <= 0) {
        ++timeouts_;
        drop();
        break;
      }
      auto f = conn->ReadFrame(static_cast<int>(left));
      if (!f.ok()) {
        if (f.status().code() == StatusCode::kOverloaded) ++timeouts_;
        drop();  // closed or timed out: reconnect, resend the same key
        break;
      }
      if (f->opcode == Op(Opcode::kSendAck)) {
        v1::SendAck a;
        if (!a.ParseFromString(f->payload) || a.request_id() != request_id) continue;
        Event e;
        e.type = EventType::kSendAck;
        e.session = session;
        e.request_id = request_id;
        e.key = p.key;
        e.sender = me;
        e.recipient = p.recipient;
        e.message_id = a.message_id();
        e.duplicate = a.duplicate();
        history_.Add(std::move(e));
        ++acks_;
        p.active = false;
        break;
      }
      if (f->opcode == Op(Opcode::kError)) {
        v1::Error err;
        err.ParseFromString(f->payload);
        if (err.request_id() != request_id) {
          if (err.fatal()) {
            drop();
            break;
          }
          continue;
        }
        Event e;
        e.type = EventType::kError;
        e.session = session;
        e.request_id = request_id;
        e.key = p.key;
        e.sender = me;
        e.recipient = p.recipient;
        e.code = err.code();
        history_.Add(std::move(e));
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++errors_[err.code()];
        }
        // Retryable: the same key again; otherwise (STORAGE_FULL, ...) the write is refused.
        if (!Retryable(err.code())) p.active = false;
        if (err.fatal()) drop();
        backoff(std::min<int64_t>(err.retry_after_ms(), options_.max_backoff_ms) + jitter());
        break;
      }
      if (f->opcode == Op(Opcode::kSyncPage)) {
        v1::SyncPage page;
        if (!page.ParseFromString(f->payload)) continue;
        for (const auto& env : page.messages()) record_envelope(env, EventType::kSyncPage);
        if (page.has_more()) {
          v1::SyncAck ack;
          ack.set_cursor(page.cursor());
          (void)conn->SendFrame(Op(Opcode::kSyncAck), ack);
        }
        continue;
      }
      if (f->opcode == Op(Opcode::kDeliver)) {
        v1::Deliver d;
        if (!d.ParseFromString(f->payload)) continue;
        record_envelope(d.message(), EventType::kDeliver);
        v1::DeliverAck ack;
        ack.set_cursor(cursor);
        (void)conn->SendFrame(Op(Opcode::kDeliverAck), ack);
        continue;
      }
      // SYNC_DONE, PONG, ...: nothing to record.
    }
  }
  drop();
}

bool ChaosRun::RunSchedule(Nemesis& nemesis, int cycles) {
  nemesis.Start(*this);
  if (::testing::Test::HasFatalFailure()) return false;
  std::mt19937_64 rng(options_.seed ^ 0x6e656d65736973ULL);
  const uint64_t span = 2 * static_cast<uint64_t>(std::max(options_.clients, 1));
  for (int i = 0; i < cycles; ++i) {
    const uint64_t target = acks() + 1 + rng() % span;
    if (!WaitAcks(target, 30'000)) {
      ADD_FAILURE() << nemesis.name() << ": no progress before cycle " << i << " (acks " << acks()
                    << ", wanted " << target << ")";
      return false;
    }
    nemesis.Inject(*this, rng);
    if (::testing::Test::HasFatalFailure()) return false;
    nemesis.Heal(*this);
    if (::testing::Test::HasFatalFailure()) return false;
  }
  const uint64_t target = acks() + span;
  if (!WaitAcks(target, 30'000)) {
    ADD_FAILURE() << nemesis.name() << ": no progress after healing (acks " << acks() << ")";
    return false;
  }
  return true;
}

std::optional<v1::Welcome> ChaosRun::TryProbe(uint64_t user, size_t i) {
  auto c = testing::TestClient::Connect(server(i));
  if (c == nullptr) return std::nullopt;
  auto f = c->Hello(ChaosToken(server(i), user));
  v1::Welcome w;
  if (f.opcode != Op(Opcode::kWelcome) || !w.ParseFromString(f.payload)) return std::nullopt;
  return w;
}

v1::Welcome ChaosRun::Probe(uint64_t user) {
  v1::Welcome w;
  auto c = testing::TestClient::Connect(server());
  if (c == nullptr) return w;
  auto f = c->Hello(ChaosToken(server(), user));
  EXPECT_EQ(f.opcode, Op(Opcode::kWelcome)) << "probe HELLO refused";
  w.ParseFromString(f.payload);
  return w;
}

CheckerReport ChaosRun::FinishAndCheck(const std::string& name, int cycles,
                                       const std::string& extra_json) {
  StopClients();
  for (int i = 0; i < options_.clients; ++i) {
    const uint64_t user = options_.first_user + static_cast<uint64_t>(i);
    // A catch-up the server ends (a fatal UNAVAILABLE: a shard still failing over) or that
    // cannot start is tried again, from cursor 0, for up to 60 s; only a complete one counts.
    std::vector<v1::Envelope> out;
    std::string why = "never tried";
    const bool complete = testing::PollUntil(
        [&] {
          out.clear();
          auto c = testing::TestClient::Connect(server());
          if (c == nullptr) {
            why = "cannot connect";
            return false;
          }
          auto f = c->Hello(ChaosToken(server(), user), 0);
          if (f.opcode != Op(Opcode::kWelcome)) {
            why = "HELLO refused";
            return false;
          }
          return c->TryCatchUp(&out, 20'000, &why).has_value();
        },
        60'000, 100);
    if (!complete) {
      ADD_FAILURE() << "final catch-up of user " << user << " did not complete: " << why;
      continue;
    }
    const uint64_t session = NextSession();
    for (const auto& env : out) {
      Event e;
      e.type = EventType::kSyncPage;
      e.session = session;
      e.final_catchup = true;
      e.sender = env.sender();
      e.recipient = user;
      e.message_id = env.id();
      e.body = env.body();
      history_.Add(std::move(e));
    }
  }
  CheckerReport r = Check(history_.Snapshot());
  std::cout << "[" << name << "] seed " << options_.seed << ", " << cycles << " cycles\n"
            << r.ToText() << std::flush;
  const char* dir = std::getenv("IRIS_CHAOS_REPORT_DIR");
  const std::string path =
      std::string(dir != nullptr && *dir != '\0' ? dir : ".") + "/chaos-" + name + ".json";
  std::ofstream out(path);
  out << r.ToJson("\"test\":\"" + name + "\",\"seed\":" + std::to_string(options_.seed) +
                  ",\"cycles\":" + std::to_string(cycles) + "," +
                  (extra_json.empty() ? "" : extra_json + ","))
      << "\n";
  if (!out) ADD_FAILURE() << "cannot write the chaos report " << path;
  std::cout << "report: " << path << std::endl;
  EXPECT_TRUE(r.ok()) << name << ": the checker found lost/duplicated/reordered/unexpected "
                      << "messages (seed " << options_.seed << ")";
  return r;
}

void KillNemesis::Inject(ChaosRun& run, std::mt19937_64& /*rng*/) {
  const int status = run.server().Stop(SIGKILL);
  ++kills_;
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "irisd did not die of SIGKILL (wait status " << status << ")";
}

void KillNemesis::Heal(ChaosRun& run) {
  run.server().Start();
  if (::testing::Test::HasFatalFailure()) return;
  run.ServerUp();
}

void PauseNemesis::Inject(ChaosRun& run, std::mt19937_64& /*rng*/) {
  const pid_t pid = run.server().pid();
  const uint64_t before = run.timeouts();
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, WUNTRACED), pid);
  ASSERT_TRUE(WIFSTOPPED(status)) << "irisd did not stop (wait status " << status << ")";
  // Stopped for longer than the clients' timeouts: every client has seen one more.
  const uint64_t want = before + static_cast<uint64_t>(run.options().clients);
  EXPECT_TRUE(testing::PollUntil([&] { return run.timeouts() >= want; }, 30'000, 5))
      << "the clients did not time out against a stopped irisd (" << run.timeouts() - before
      << " timeouts)";
}

void PauseNemesis::Heal(ChaosRun& run) {
  const pid_t pid = run.server().pid();
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, WCONTINUED), pid);
  ASSERT_TRUE(WIFCONTINUED(status)) << "irisd did not continue (wait status " << status << ")";
}

}  // namespace iris::chaos
