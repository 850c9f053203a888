// Observability against a real irisd (issue 7, RFC-001 NFR-30..33, PROTOCOL.md section 10):
//  - a real Prometheus server scrapes irisd's admin listener; PromQL over its HTTP API sees
//    iris_msg_in_total = N after N messages and a finite P99 of iris_e2e_latency_seconds;
//  - one SEND with a known trace id produces edge.send > core.send > store.append spans
//    (OTLP/JSON lines in --trace-file) in that trace, an edge.deliver span for the push,
//    and the recipient's Envelope carries the trace id;
//  - at sample ratio 0 only failed operations are written.
//
// Waiting is always on an observable with a deadline: Prometheus' own output pipe (which
// also reports its exit), inotify on the trace file, frames on the client sockets.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

using nlohmann::json;

constexpr uint8_t kSend = static_cast<uint8_t>(wire::Opcode::kSend);
constexpr uint8_t kSendAck = static_cast<uint8_t>(wire::Opcode::kSendAck);
constexpr uint8_t kDeliver = static_cast<uint8_t>(wire::Opcode::kDeliver);
constexpr uint8_t kDeliverAck = static_cast<uint8_t>(wire::Opcode::kDeliverAck);
constexpr uint8_t kError = static_cast<uint8_t>(wire::Opcode::kError);

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

std::string Hex(const std::string& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : bytes) {
    s += kHex[c >> 4];
    s += kHex[c & 0xF];
  }
  return s;
}

// Logs in `sender` and `recipient` with empty inboxes.
void LoginPair(const ServerProcess& server, TestClient& a, uint64_t ua, TestClient& b,
               uint64_t ub) {
  std::vector<v1::Envelope> none;
  a.Login(server, ua);
  a.CatchUp(&none);
  b.Login(server, ub);
  b.CatchUp(&none);
  ASSERT_TRUE(none.empty());
}

// Reads DELIVER frames until `n` messages arrived, acknowledging each (DELIVER_ACK is what
// ends the end-to-end latency measurement).
std::vector<v1::Envelope> ReceiveAndAck(TestClient& c, size_t n) {
  std::vector<v1::Envelope> got;
  while (got.size() < n) {
    auto f = c.Expect(kDeliver, 20'000);
    if (f.opcode != kDeliver) break;
    v1::Deliver d;
    EXPECT_TRUE(d.ParseFromString(f.payload));
    got.push_back(d.message());
    v1::DeliverAck ack;
    ack.set_cursor(d.message().id());
    EXPECT_TRUE(c.conn().SendFrame(kDeliverAck, ack).ok());
  }
  return got;
}

// ---------------------------------------------------------------------------------------
// A real Prometheus server (Debian's /usr/bin/prometheus) on a loopback port, with a
// temporary TSDB directory, scraping one target every second.

uint16_t FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return 0;
  }
  close(fd);
  return ntohs(a.sin_port);
}

std::string UrlEncode(const std::string& s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  return out;
}

class PrometheusProcess {
 public:
  static constexpr const char* kBinary = "/usr/bin/prometheus";

  PrometheusProcess() {
    char tmpl[] = "/tmp/iris-prometheus-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  ~PrometheusProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
    if (log_fd_ >= 0) close(log_fd_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Starts Prometheus scraping 127.0.0.1:`target_port` every second and waits (up to 30 s)
  // until its HTTP API answers.
  void Start(uint16_t target_port) {
    ASSERT_EQ(access(kBinary, X_OK), 0) << kBinary << " missing: scripts/install-deps installs "
                                        << "the Debian package prometheus";
    port_ = FreeLoopbackPort();
    ASSERT_NE(port_, 0);
    {
      std::ofstream cfg(dir_ + "/prometheus.yml");
      cfg << "global:\n"
             "  scrape_interval: 1s\n"
             "  scrape_timeout: 1s\n"
             "  evaluation_interval: 1s\n"
             "scrape_configs:\n"
             "  - job_name: irisd\n"
             "    static_configs:\n"
             "      - targets: ['127.0.0.1:"
          << target_port << "']\n";
    }
    int pipefd[2];
    ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
    const std::vector<std::string> args = {
        kBinary,
        "--config.file=" + dir_ + "/prometheus.yml",
        "--storage.tsdb.path=" + dir_ + "/data",
        "--web.listen-address=127.0.0.1:" + std::to_string(port_),
        "--log.level=info",
    };
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      dup2(pipefd[1], STDOUT_FILENO);
      dup2(pipefd[1], STDERR_FILENO);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(kBinary, argv.data());
      _exit(127);
    }
    close(pipefd[1]);
    log_fd_ = pipefd[0];
    const bool ready = WaitFor(30'000, [&] {
      std::string body;
      return AdminRequest(port_, "GET", "/-/ready", "", "", &body) == 200;
    });
    ASSERT_TRUE(ready) << "Prometheus did not become ready; its log:\n" << log_;
  }

  // Instant query; the "data" object of a successful answer, or null.
  json Query(const std::string& promql) {
    std::string body;
    const int status =
        AdminRequest(port_, "GET", "/api/v1/query?query=" + UrlEncode(promql), "", "", &body);
    if (status != 200) return nullptr;
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") return nullptr;
    return j["data"];
  }

  // The value of a query returning one sample (NaN when there is none).
  double Scalar(const std::string& promql) {
    json data = Query(promql);
    if (data.is_null() || !data.contains("result")) return std::nan("");
    const json& r = data["result"];
    const json* value = nullptr;
    if (data.value("resultType", "") == "vector") {
      if (r.size() != 1) return std::nan("");
      value = &r[0]["value"];
    } else if (data.value("resultType", "") == "scalar") {
      value = &r;
    }
    if (value == nullptr || !value->is_array() || value->size() != 2) return std::nan("");
    return std::stod((*value)[1].get<std::string>());
  }

  // Polls `done` until it holds or `timeout_ms` passes. Between polls it blocks on
  // Prometheus' output pipe (up to 200 ms): woken by its log lines or by its exit, which
  // ends the wait at once.
  template <typename Pred>
  bool WaitFor(int64_t timeout_ms, Pred done) {
    const int64_t deadline = NowMs() + timeout_ms;
    for (;;) {
      if (done()) return true;
      if (!alive_ || NowMs() >= deadline) return false;
      pollfd p{log_fd_, POLLIN, 0};
      if (poll(&p, 1, 200) > 0) {
        char buf[4096];
        const ssize_t n = read(log_fd_, buf, sizeof(buf));
        if (n <= 0) {
          alive_ = false;  // exited
        } else {
          log_.append(buf, static_cast<size_t>(n));
        }
      }
    }
  }

  const std::string& log() const { return log_; }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int log_fd_ = -1;
  uint16_t port_ = 0;
  bool alive_ = true;
  std::string log_;
};

// After N messages sent and received through irisd, Prometheus has scraped
// iris_msg_in_total = N and computes a finite P99 of the end-to-end latency.
TEST(PrometheusScrapeTest, PromqlSeesMessageCountersAndLatencyQuantiles) {
  ServerProcess server;
  server.Start();
  PrometheusProcess prom;
  prom.Start(server.admin_port());
  if (HasFatalFailure()) return;

  // A scrape before any traffic: rate() then has a zero sample to start from.
  ASSERT_TRUE(prom.WaitFor(30'000, [&] { return prom.Scalar("up{job=\"irisd\"}") == 1; }))
      << "Prometheus never scraped irisd; its log:\n" << prom.log();
  EXPECT_EQ(prom.Scalar("iris_msg_in_total"), 0);

  auto alice = TestClient::Connect(server);
  auto bob = TestClient::Connect(server);
  ASSERT_TRUE(alice && bob);
  LoginPair(server, *alice, 1, *bob, 2);
  constexpr int kMessages = 100;
  for (int i = 0; i < kMessages; ++i) alice->SendAsync(i + 1, 2, "m" + std::to_string(i), NewKey());
  for (int i = 0; i < kMessages; ++i) {
    auto f = alice->Expect(kSendAck, 20'000);
    ASSERT_EQ(f.opcode, kSendAck);
  }
  ASSERT_EQ(ReceiveAndAck(*bob, kMessages).size(), static_cast<size_t>(kMessages));
  // One more round trip on bob's connection: the server has read every DELIVER_ACK (and
  // observed e2e latency) before it answers a later frame.
  alice->SendAsync(kMessages + 1, 2, "last", NewKey());
  ASSERT_EQ(alice->Expect(kSendAck, 20'000).opcode, kSendAck);
  ASSERT_EQ(ReceiveAndAck(*bob, 1).size(), 1u);
  constexpr int kTotal = kMessages + 1;

  double in = -1;
  ASSERT_TRUE(prom.WaitFor(30'000, [&] { return (in = prom.Scalar("iris_msg_in_total")) == kTotal; }))
      << "iris_msg_in_total = " << in << "; Prometheus log:\n" << prom.log();
  EXPECT_EQ(prom.Scalar("iris_ack_sent_total"), kTotal);
  EXPECT_EQ(prom.Scalar("iris_msg_out_total"), kTotal);
  EXPECT_EQ(prom.Scalar("iris_dedup_hit_total"), 0);
  EXPECT_EQ(prom.Scalar("sum(iris_frames_in_total{opcode=\"SEND\"})"), kTotal);

  const std::string p99 =
      "histogram_quantile(0.99, sum(rate(iris_e2e_latency_seconds_bucket[1m])) by (le))";
  double e2e = std::nan("");
  ASSERT_TRUE(prom.WaitFor(30'000, [&] { return std::isfinite(e2e = prom.Scalar(p99)); }))
      << p99 << " = " << e2e;
  EXPECT_GE(e2e, 0);
  EXPECT_LT(e2e, 20) << "every message was acknowledged within the test's 20 s deadlines";
  // Every e2e observation (one per acknowledged message) reached Prometheus.
  EXPECT_TRUE(prom.WaitFor(10'000, [&] {
    return prom.Scalar("iris_e2e_latency_seconds_count") == kTotal;
  })) << prom.Scalar("iris_e2e_latency_seconds_count");

  const std::string db_p50 =
      "histogram_quantile(0.5, sum(rate(iris_db_write_latency_seconds_bucket[1m])) by (le))";
  const double db = prom.Scalar(db_p50);
  EXPECT_TRUE(std::isfinite(db) && db > 0) << db_p50 << " = " << db;
  EXPECT_GE(prom.Scalar("iris_connections_open"), 2);
  EXPECT_EQ(prom.Scalar("iris_degradation_level"), 0);
  EXPECT_EQ(prom.Scalar("iris_storage_write_errors_total"), 0);
  // Every SEND carried a new idempotency key: each was cleared by the Bloom filters or read
  // from the dedup column family, and each is in today's filter.
  EXPECT_EQ(prom.Scalar("iris_dedup_bloom_negatives_total + iris_dedup_db_lookups_total"), kTotal);
  EXPECT_NEAR(prom.Scalar("iris_dedup_bloom_fill_ratio"), kTotal / 1e6, 1e-9);  // default size
}

// ---------------------------------------------------------------------------------------
// Traces

// The spans in the trace file, grouped by trace id (hex), each the OTLP span object.
std::map<std::string, std::vector<json>> ReadSpans(const std::string& path) {
  std::map<std::string, std::vector<json>> by_trace;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) {
      ADD_FAILURE() << "trace line is not JSON: " << line;
      continue;
    }
    for (const json& rs : j["resourceSpans"]) {
      for (const json& ss : rs["scopeSpans"]) {
        for (const json& span : ss["spans"]) by_trace[span["traceId"]].push_back(span);
      }
    }
  }
  return by_trace;
}

const json* SpanNamed(const std::vector<json>& spans, const std::string& name) {
  for (const json& s : spans) {
    if (s["name"] == name) return &s;
  }
  return nullptr;
}

// Waits (inotify on the file, up to `timeout_ms`) until `done(spans)` holds.
template <typename Pred>
bool WaitForSpans(const std::string& path, int64_t timeout_ms, Pred done) {
  const int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  EXPECT_GE(fd, 0);
  EXPECT_GE(inotify_add_watch(fd, path.c_str(), IN_MODIFY), 0) << path;
  const int64_t deadline = NowMs() + timeout_ms;
  bool ok = false;
  for (;;) {
    if (done(ReadSpans(path))) {
      ok = true;
      break;
    }
    const int64_t left = deadline - NowMs();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000))) > 0) {
      char buf[4096];
      while (read(fd, buf, sizeof(buf)) > 0) {
      }
    }
  }
  close(fd);
  return ok;
}

int64_t Nanos(const json& span, const char* field) {
  return std::stoll(span[field].get<std::string>());
}

class TraceTest : public ::testing::Test {
 protected:
  void StartServer(const std::string& ratio) {
    server_.args().insert(server_.args().end(),
                          {"--trace-file", trace_file_, "--trace-sample-ratio", ratio});
    server_.Start();
  }
  // One process: with --edge-processes each edge process writes its own trace file
  // (operations.md), and these tests read the node's one file.
  ServerProcess server_{{"--edge-processes", "0"}};
  const std::string trace_file_ = server_.data_dir() + "/trace.jsonl";
};

TEST_F(TraceTest, SendWithATraceIdProducesLinkedSpansAtEdgeCoreAndStore) {
  StartServer("1");
  if (HasFatalFailure()) return;
  auto alice = TestClient::Connect(server_);
  auto bob = TestClient::Connect(server_);
  ASSERT_TRUE(alice && bob);
  LoginPair(server_, *alice, 11, *bob, 12);

  const std::string trace("\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36", 16);
  const std::string trace_hex = Hex(trace);
  ASSERT_EQ(trace_hex, "4bf92f3577b34da6a3ce929d0e0e4736");
  alice->SendAsync(1, 12, "traced", NewKey(), trace);
  auto f = alice->Expect(kSendAck);
  ASSERT_EQ(f.opcode, kSendAck);
  v1::SendAck ack;
  ASSERT_TRUE(ack.ParseFromString(f.payload));
  EXPECT_EQ(ack.trace_id(), trace) << "SEND_ACK returns the request's trace id";
  auto got = ReceiveAndAck(*bob, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].trace_id(), trace) << "the recipient's Envelope carries the trace id";
  EXPECT_EQ(got[0].id(), ack.message_id());

  // A SEND without a trace id gets one generated, returned, carried and traced too.
  alice->SendAsync(2, 12, "untraced", NewKey());
  auto f2 = alice->Expect(kSendAck);
  v1::SendAck ack2;
  ASSERT_TRUE(ack2.ParseFromString(f2.payload));
  ASSERT_EQ(ack2.trace_id().size(), 16u);
  EXPECT_NE(ack2.trace_id(), std::string(16, '\0'));
  auto got2 = ReceiveAndAck(*bob, 1);
  ASSERT_EQ(got2.size(), 1u);
  EXPECT_EQ(got2[0].trace_id(), ack2.trace_id());

  std::map<std::string, std::vector<json>> spans;
  const bool complete = WaitForSpans(trace_file_, 20'000, [&](auto s) {
    spans = std::move(s);
    for (const std::string& t : {trace_hex, Hex(ack2.trace_id())}) {
      for (const char* name : {"edge.send", "core.send", "store.append", "edge.deliver"}) {
        if (!spans.count(t) || SpanNamed(spans[t], name) == nullptr) return false;
      }
    }
    return true;
  });
  ASSERT_TRUE(complete) << "spans never appeared in " << trace_file_;

  const auto& mine = spans[trace_hex];
  EXPECT_EQ(mine.size(), 4u);
  const json& edge = *SpanNamed(mine, "edge.send");
  const json& core = *SpanNamed(mine, "core.send");
  const json& store = *SpanNamed(mine, "store.append");
  const json& deliver = *SpanNamed(mine, "edge.deliver");
  // Parent links: edge.send is the root, core.send its child, store.append core's child.
  EXPECT_FALSE(edge.contains("parentSpanId"));
  EXPECT_EQ(core["parentSpanId"], edge["spanId"]);
  EXPECT_EQ(store["parentSpanId"], core["spanId"]);
  std::set<std::string> ids;
  for (const json& s : mine) {
    ids.insert(s["spanId"].get<std::string>());
    EXPECT_EQ(s["spanId"].get<std::string>().size(), 16u);
    EXPECT_FALSE(s["status"].contains("code")) << s.dump();
  }
  EXPECT_EQ(ids.size(), 4u) << "span ids are distinct";
  // Each child lies within its parent; every span has a duration.
  for (const json* s : {&edge, &core, &store, &deliver}) {
    EXPECT_LE(Nanos(*s, "startTimeUnixNano"), Nanos(*s, "endTimeUnixNano")) << s->dump();
  }
  EXPECT_LE(Nanos(edge, "startTimeUnixNano"), Nanos(core, "startTimeUnixNano"));
  EXPECT_LE(Nanos(core, "startTimeUnixNano"), Nanos(store, "startTimeUnixNano"));
  EXPECT_LE(Nanos(store, "endTimeUnixNano"), Nanos(core, "endTimeUnixNano"));
  EXPECT_LE(Nanos(core, "endTimeUnixNano"), Nanos(edge, "endTimeUnixNano"));
  // The durable write happened before the push went out.
  EXPECT_LE(Nanos(store, "endTimeUnixNano"), Nanos(deliver, "startTimeUnixNano"));
  // Span times are wall-clock Unix nanoseconds (within a minute of the test's clock).
  const int64_t now_ns = SystemClock::Instance().WallMillis() * 1'000'000;
  EXPECT_LT(std::llabs(now_ns - Nanos(edge, "startTimeUnixNano")), 60'000'000'000LL);
  // The message id is recorded on edge.send and edge.deliver.
  auto attr = [](const json& s, const std::string& key) -> json {
    for (const json& a : s["attributes"]) {
      if (a["key"] == key) return a["value"];
    }
    return nullptr;
  };
  EXPECT_EQ(attr(edge, "iris.message_id")["intValue"], std::to_string(ack.message_id()));
  EXPECT_EQ(attr(deliver, "iris.message_id")["intValue"], std::to_string(ack.message_id()));
}

TEST_F(TraceTest, RatioZeroWritesOnlyFailedOperations) {
  StartServer("0");
  if (HasFatalFailure()) return;
  auto alice = TestClient::Connect(server_);
  auto bob = TestClient::Connect(server_);
  ASSERT_TRUE(alice && bob);
  LoginPair(server_, *alice, 21, *bob, 22);

  const std::string ok_trace(16, '\x11');
  alice->SendAsync(1, 22, "fine", NewKey(), ok_trace);
  ASSERT_EQ(alice->Expect(kSendAck).opcode, kSendAck);
  ASSERT_EQ(ReceiveAndAck(*bob, 1).size(), 1u);

  // A SEND to a group that does not exist fails in the core (NOT_FOUND).
  const std::string bad_trace(16, '\x22');
  v1::Send s;
  s.set_request_id(2);
  s.set_group_id(987654321);
  s.set_body("to nowhere");
  s.set_idempotency_key(NewKey());
  s.set_trace_id(bad_trace);
  ASSERT_TRUE(alice->conn().SendFrame(kSend, s).ok());
  auto err = alice->Expect(kError);
  v1::Error e;
  ASSERT_TRUE(e.ParseFromString(err.payload));
  EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kNotFound));

  std::map<std::string, std::vector<json>> spans;
  const bool written = WaitForSpans(trace_file_, 20'000, [&](auto all) {
    spans = std::move(all);
    return spans.count(Hex(bad_trace)) &&
           SpanNamed(spans[Hex(bad_trace)], "edge.send") != nullptr &&
           SpanNamed(spans[Hex(bad_trace)], "core.send") != nullptr;
  });
  ASSERT_TRUE(written) << "the failed send's spans never appeared";
  const auto& bad = spans[Hex(bad_trace)];
  for (const char* name : {"edge.send", "core.send"}) {
    const json& span = *SpanNamed(bad, name);
    EXPECT_EQ(span["status"]["code"], 2) << span.dump();
    EXPECT_NE(span["status"]["message"].get<std::string>().find("NOT_FOUND"), std::string::npos)
        << span.dump();
  }
  EXPECT_EQ(SpanNamed(bad, "core.send")->at("parentSpanId"), SpanNamed(bad, "edge.send")->at("spanId"));
  // The successful send finished before the failing one started, and the writer keeps
  // order: had it been written, it would be in the file already.
  EXPECT_EQ(spans.count(Hex(ok_trace)), 0u) << "an unsampled successful trace was written";
}

}  // namespace
}  // namespace iris::testing
