#include "worker.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "load_loop.h"
#include "net/listener.h"

namespace iris::bench {

bool WriteLine(int fd, const std::string& line) {
  std::string s = line + "\n";
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

bool ReadLine(int fd, std::string* buffer, std::string* line) {
  for (;;) {
    const size_t nl = buffer->find('\n');
    if (nl != std::string::npos) {
      *line = buffer->substr(0, nl);
      buffer->erase(0, nl + 1);
      return true;
    }
    char buf[65536];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buffer->append(buf, static_cast<size_t>(n));
  }
}

namespace {

constexpr int64_t kSecond = 1'000'000'000;

class Worker {
 public:
  Worker(const BenchOptions& o, const WorkerPlan& plan, int to_parent, int from_parent)
      : o_(o), plan_(plan), to_parent_(to_parent), from_parent_(from_parent) {}

  int Run();

 private:
  Status Setup();
  // Sends a barrier and waits for "go". False: the parent said abort or went away.
  bool Barrier(const std::string& name, nlohmann::json extra = nlohmann::json::object());
  // Waits (blocking in poll on the parent pipe, which also notices the parent dying) until
  // done() or the deadline. Returns done().
  bool WaitFor(const std::function<bool()>& done, int64_t deadline_ns);
  LoopProgress Sum() const;
  // Connects every session that is not established; returns the phase summary.
  nlohmann::json ConnectAll(LoadLoop::ConnectMode mode, int concurrency);
  // Waits until every SEND was answered and every acknowledged message delivered.
  bool Drain(double seconds);
  nlohmann::json ProgressJson() const;
  void ForEachLoop(const std::function<void(LoadLoop&)>& fn);
  // Runs `fn` on every loop thread and waits until all have run it, so that counters read
  // afterwards include its effects (e.g. the SENDs it made).
  bool OnAllLoops(std::function<void(LoadLoop&)> fn);
  int Report();

  const BenchOptions& o_;
  const WorkerPlan& plan_;
  int to_parent_;
  int from_parent_;
  bool parent_gone_ = false;
  std::vector<std::unique_ptr<Target>> targets_;
  std::vector<in_addr> sources_;
  std::vector<std::unique_ptr<LoadLoop>> loops_;
  std::atomic<uint64_t> deliveries_seen_{0};
  std::atomic<uint64_t> commands_run_{0};
  nlohmann::json phases_ = nlohmann::json::object();
};

Status Worker::Setup() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  for (size_t i = 0; i < plan_.targets.size(); ++i) {
    auto t = std::make_unique<Target>();
    std::string host;
    uint16_t port = 0;
    IRIS_RETURN_IF_ERROR(net::SplitHostPort(plan_.targets[i], &host, &port));
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) {
      return BadRequest("cannot resolve " + host + " (IPv4 only)");
    }
    t->addr = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
    t->addr.sin_port = htons(port);
    freeaddrinfo(res);
    // Pinning the certificate's fingerprint verifies the server without a chain
    // verification per handshake (client CPU shares the cores with the server).
    IRIS_ASSIGN_OR_RETURN(std::string fp, net::CertificateFingerprint(plan_.certs[i]));
    IRIS_ASSIGN_OR_RETURN(t->tls, net::TlsContext::Client("", fp));
    if (!o_.tls13_ciphersuites.empty() &&
        SSL_CTX_set_ciphersuites(t->tls->get(), o_.tls13_ciphersuites.c_str()) != 1) {
      return BadRequest("--tls13-ciphersuites: no usable suite in '" + o_.tls13_ciphersuites + "'");
    }
    t->jwt_secret = plan_.secrets[i];
    targets_.push_back(std::move(t));
  }
  const bool loopback =
      !targets_.empty() && (ntohl(targets_[0]->addr.sin_addr.s_addr) >> 24) == 127;
  if (loopback) {
    for (int i = 0; i < o_.source_addresses; ++i) {
      in_addr a{};
      a.s_addr = htonl((127u << 24) | static_cast<uint32_t>(2 + i));
      sources_.push_back(a);
    }
  }
  const int nloops = std::max(1, o_.loops);
  for (int i = 0; i < nloops; ++i) {
    loops_.push_back(std::make_unique<LoadLoop>(o_, i, &deliveries_seen_));
    IRIS_RETURN_IF_ERROR(loops_.back()->Init());
  }

  // Sessions come in pairs (2u, 2u+1): a pair shares its loop and target, and the ledgers
  // of a pair (throughput: 2u -> 2u+1; storm: both ways) stay on one loop thread.
  uint64_t n = 0;
  switch (plan_.scenario) {
    case Scenario::kConnections: n = static_cast<uint64_t>(o_.sessions); break;
    case Scenario::kConnect: n = static_cast<uint64_t>(o_.connects); break;
    case Scenario::kThroughput:
    case Scenario::kLatency: n = 2 * static_cast<uint64_t>(o_.pairs); break;
    case Scenario::kReconnectStorm:
      n = (static_cast<uint64_t>(o_.storm_sessions) + 1) / 2 * 2;
      break;
  }
  const uint64_t units = (n + 1) / 2;
  const auto procs = static_cast<uint64_t>(std::max(1, o_.processes));
  const uint64_t lo = units * static_cast<uint64_t>(plan_.worker) / procs;
  const uint64_t hi = units * static_cast<uint64_t>(plan_.worker + 1) / procs;
  const uint64_t base = plan_.user_base + static_cast<uint64_t>(plan_.scenario_index) * 10'000'000;
  for (uint64_t u = lo; u < hi; ++u) {
    LoadLoop& loop = *loops_[(u - lo) % loops_.size()];
    const Target* target = targets_[u % targets_.size()].get();
    size_t slot[2] = {0, 0};
    int made = 0;
    for (uint64_t k = 0; k < 2 && 2 * u + k < n; ++k) {
      std::optional<in_addr> src;
      if (!sources_.empty()) src = sources_[(2 * u + k) % sources_.size()];
      slot[made++] = loop.AddSession(base + 2 * u + k, target, src);
    }
    if (made < 2) continue;
    if (plan_.scenario == Scenario::kThroughput || plan_.scenario == Scenario::kLatency) {
      loop.AddLedger(slot[0], slot[1]);
    } else if (plan_.scenario == Scenario::kReconnectStorm) {
      loop.AddLedger(slot[0], slot[1]);
      loop.AddLedger(slot[1], slot[0]);
    }
  }
  for (auto& l : loops_) l->Spawn();
  return Status::Ok();
}

void Worker::ForEachLoop(const std::function<void(LoadLoop&)>& fn) {
  for (auto& l : loops_) fn(*l);
}

bool Worker::OnAllLoops(std::function<void(LoadLoop&)> fn) {
  const uint64_t target = commands_run_.load() + loops_.size();
  auto shared = std::make_shared<std::function<void(LoadLoop&)>>(std::move(fn));
  for (auto& l : loops_) {
    LoadLoop* raw = l.get();
    raw->Post([this, raw, shared] {
      (*shared)(*raw);
      commands_run_.fetch_add(1);
    });
  }
  return WaitFor([this, target] { return commands_run_.load() >= target; },
                 MonoNowNs() + 30 * kSecond);
}

bool Worker::Barrier(const std::string& name, nlohmann::json extra) {
  extra["barrier"] = name;
  if (!WriteLine(to_parent_, extra.dump())) return false;
  std::string buf, line;
  if (!ReadLine(from_parent_, &buf, &line)) return false;
  return line == "go";
}

bool Worker::WaitFor(const std::function<bool()>& done, int64_t deadline_ns) {
  while (!done()) {
    const int64_t left = deadline_ns - MonoNowNs();
    if (left <= 0 || parent_gone_) return false;
    pollfd p{from_parent_, POLLIN, 0};
    // The parent writes nothing between barriers: readable means it closed the pipe.
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left / 1'000'000 + 1, 10))) > 0) {
      parent_gone_ = true;
      return false;
    }
  }
  return true;
}

LoopProgress Worker::Sum() const {
  LoopProgress s;
  s.first_start_ns = INT64_MAX;
  for (const auto& l : loops_) {
    LoopProgress p = l->Progress();
    if (p.planned == LoadLoop::kUnknown || s.planned == LoadLoop::kUnknown) {
      s.planned = LoadLoop::kUnknown;
    } else {
      s.planned += p.planned;
    }
    s.ready += p.ready;
    s.failed += p.failed;
    s.sent += p.sent;
    s.acked += p.acked;
    s.refused += p.refused;
    s.delivered += p.delivered;
    s.first_start_ns = std::min(s.first_start_ns, p.first_start_ns);
    s.last_ready_ns = std::max(s.last_ready_ns, p.last_ready_ns);
  }
  return s;
}

nlohmann::json Worker::ConnectAll(LoadLoop::ConnectMode mode, int concurrency) {
  const int per_loop = std::max(1, concurrency / static_cast<int>(loops_.size()));
  ForEachLoop([&](LoadLoop& l) {
    l.ResetPhase();
    l.Post([&l, mode, per_loop] { l.BeginConnect(mode, per_loop); });
  });
  auto settled = [this] {
    LoopProgress p = Sum();
    return p.planned != LoadLoop::kUnknown && p.ready + p.failed >= p.planned;
  };
  if (!WaitFor(settled, MonoNowNs() + static_cast<int64_t>(o_.timeout_s * kSecond))) {
    ForEachLoop([](LoadLoop& l) { l.Post([&l] { l.AbandonConnect(); }); });
    WaitFor(settled, MonoNowNs() + 5 * kSecond);
  }
  LoopProgress p = Sum();
  return {{"planned", p.planned == LoadLoop::kUnknown ? 0 : p.planned},
          {"ready", p.ready},
          {"failed", p.failed},
          {"first_start_ns", p.first_start_ns},
          {"last_ready_ns", p.last_ready_ns}};
}

bool Worker::Drain(double seconds) {
  return WaitFor(
      [this] {
        LoopProgress p = Sum();
        return p.sent == p.acked + p.refused && p.delivered >= p.acked;
      },
      MonoNowNs() + static_cast<int64_t>(seconds * kSecond));
}

nlohmann::json Worker::ProgressJson() const {
  LoopProgress p = Sum();
  return {{"sent", p.sent},
          {"acked", p.acked},
          {"refused", p.refused},
          {"delivered", p.delivered},
          {"mono_ns", MonoNowNs()}};
}

int Worker::Report() {
  ForEachLoop([](LoadLoop& l) {
    l.Post([&l] {
      l.CloseAll();
      l.Finish();
    });
  });
  ForEachLoop([](LoadLoop& l) { l.Join(); });
  LoopResult all;
  for (auto& l : loops_) {
    const LoopResult& r = l->result();
    for (const auto& [k, v] : r.counters) all.counters[k] += v;
    for (const auto& [k, v] : r.failures) all.failures[k] += v;
    for (const auto& [k, h] : r.histograms) all.histograms[k].Merge(h);
    all.violations.Merge(r.violations);
  }
  nlohmann::json hist = nlohmann::json::object();
  for (const auto& [k, h] : all.histograms) {
    if (h.count() > 0) hist[k] = h.ToJson();
  }
  nlohmann::json viol = all.violations.ToMap();
  viol["examples"] = all.violations.examples;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const nlohmann::json report = {
      {"counters", all.counters},
      {"failures", all.failures},
      {"violations", viol},
      {"histograms", hist},
      {"phases", phases_},
      {"rusage",
       {{"user_s", static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6},
        {"sys_s", static_cast<double>(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6},
        {"maxrss_bytes", static_cast<uint64_t>(ru.ru_maxrss) * 1024}}}};
  return WriteLine(to_parent_, nlohmann::json{{"report", report}}.dump()) ? 0 : 3;
}

int Worker::Run() {
  signal(SIGPIPE, SIG_IGN);
  Status s = Setup();
  if (!s.ok()) {
    WriteLine(to_parent_, nlohmann::json{{"error", s.ToString()}}.dump());
    return 3;
  }
  auto abort = [this] {
    ForEachLoop([](LoadLoop& l) { l.Join(); });
    return 3;
  };
  if (!Barrier("start")) return abort();
  switch (plan_.scenario) {
    case Scenario::kConnections: {
      phases_["establish"] = ConnectAll(LoadLoop::ConnectMode::kHold, o_.concurrency);
      if (!Barrier("established", phases_["establish"])) return abort();
      WaitFor([] { return false; }, MonoNowNs() + static_cast<int64_t>(o_.hold_s * kSecond));
      if (parent_gone_ || !Barrier("held")) return abort();
      break;
    }
    case Scenario::kConnect: {
      phases_["establish"] = ConnectAll(LoadLoop::ConnectMode::kOnce, o_.connect_concurrency);
      if (!Barrier("done", phases_["establish"])) return abort();
      break;
    }
    case Scenario::kThroughput:
    case Scenario::kLatency: {
      phases_["establish"] = ConnectAll(LoadLoop::ConnectMode::kHold, o_.concurrency);
      if (!Barrier("established", phases_["establish"])) return abort();
      const bool paced = plan_.scenario == Scenario::kLatency;
      const double rate =
          paced ? o_.rate / (std::max(1, o_.processes) * static_cast<double>(loops_.size())) : 0;
      const int window = o_.window;
      phases_["window_start"] = ProgressJson();
      OnAllLoops([rate, window](LoadLoop& l) { l.BeginTraffic(rate, window); });
      WaitFor([] { return false; }, MonoNowNs() + static_cast<int64_t>(o_.duration_s * kSecond));
      phases_["window_end"] = ProgressJson();
      OnAllLoops([](LoadLoop& l) { l.StopTraffic(); });
      if (parent_gone_ || !Barrier("measured", phases_["window_end"])) return abort();
      phases_["drained"] = Drain(o_.drain_s);
      phases_["after_drain"] = ProgressJson();
      break;
    }
    case Scenario::kReconnectStorm: {
      phases_["establish"] = ConnectAll(LoadLoop::ConnectMode::kHold, o_.concurrency);
      // One message each way per pair while everyone is online: it sets every cursor.
      // Waits until every loop has sent, so that the drain below counts these SENDs.
      OnAllLoops([](LoadLoop& l) { l.SendOnePerSender(); });
      phases_["pre_drop_drained"] = Drain(o_.drain_s);
      if (!Barrier("established", phases_["establish"])) return abort();
      const int per_loop = std::max(1, o_.storm_concurrency / static_cast<int>(loops_.size()));
      const int64_t deadline = MonoNowNs() + static_cast<int64_t>(o_.timeout_s * kSecond);
      ForEachLoop([&](LoadLoop& l) {
        l.ResetPhase();
        l.Post([&l, per_loop, deadline] { l.BeginStorm(per_loop, deadline); });
      });
      auto settled = [this] {
        LoopProgress p = Sum();
        return p.planned != LoadLoop::kUnknown && p.ready + p.failed >= p.planned;
      };
      if (!WaitFor(settled, deadline + kSecond)) {
        ForEachLoop([](LoadLoop& l) { l.Post([&l] { l.AbandonConnect(); }); });
        WaitFor(settled, MonoNowNs() + 5 * kSecond);
      }
      LoopProgress p = Sum();
      phases_["storm"] = {{"planned", p.planned == LoadLoop::kUnknown ? 0 : p.planned},
                          {"ready", p.ready},
                          {"failed", p.failed},
                          {"first_start_ns", p.first_start_ns},
                          {"last_ready_ns", p.last_ready_ns}};
      // Each reconnected session sent one more message: it must arrive exactly once, by
      // catch-up or by push, whichever side reconnected first.
      phases_["drained"] = Drain(o_.drain_s);
      if (parent_gone_ || !Barrier("reconnected", phases_["storm"])) return abort();
      break;
    }
  }
  return Report();
}

}  // namespace

int RunWorker(const BenchOptions& options, const WorkerPlan& plan, int to_parent, int from_parent) {
  Worker w(options, plan, to_parent, from_parent);
  return w.Run();
}

}  // namespace iris::bench
