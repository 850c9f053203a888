#include "net/http/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/wait_for.h"

namespace iris::net::http {
namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr milliseconds kIoDeadline{10'000};

// A blocking-free test client: every wait is a poll() bounded by a deadline.
class Client {
 public:
  // Connects to 127.0.0.1:port, from `source` when given (another loopback address stands
  // for another client machine).
  explicit Client(uint16_t port, const char* source = nullptr) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (source != nullptr) {
      sockaddr_in from{};
      from.sin_family = AF_INET;
      inet_pton(AF_INET, source, &from.sin_addr);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~Client() { Close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, static_cast<int>(kIoDeadline.count())) != 1) return false;
      const ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN) return false;
      if (n > 0) data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  void ShutdownWrite() { shutdown(fd_, SHUT_WR); }

  // Reads until the server closes (EOF or reset) or `deadline` passes. Returns what arrived.
  std::string ReadUntilClosed(milliseconds deadline = kIoDeadline) {
    std::string out;
    const auto until = SteadyClock::now() + deadline;
    closed_ = false;
    while (true) {
      const auto left =
          std::chrono::duration_cast<milliseconds>(until - SteadyClock::now()).count();
      if (left <= 0) return out;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[8192];
      const ssize_t n = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EAGAIN) {
        closed_ = true;
        return out;
      }
    }
  }

  // Reads until `n` bytes arrived (or closed / deadline).
  std::string ReadExactly(size_t n) {
    std::string out;
    const auto until = SteadyClock::now() + kIoDeadline;
    while (out.size() < n) {
      const auto left =
          std::chrono::duration_cast<milliseconds>(until - SteadyClock::now()).count();
      if (left <= 0) return out;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buf[256];
      const ssize_t got = recv(fd_, buf, std::min(sizeof(buf), n - out.size()), MSG_DONTWAIT);
      if (got <= 0 && errno != EAGAIN) return out;
      if (got > 0) out.append(buf, static_cast<size_t>(got));
    }
    return out;
  }

  bool closed() const { return closed_; }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
};

int StatusOf(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0 || response.size() < 12) return -1;
  return std::stoi(response.substr(9, 3));
}

std::string BodyOf(const std::string& response) {
  const size_t p = response.find("\r\n\r\n");
  return p == std::string::npos ? "" : response.substr(p + 4);
}

std::string Exchange(uint16_t port, const std::string& request, const char* source = nullptr) {
  Client c(port, source);
  if (!c.connected() || !c.Send(request)) return "";
  return c.ReadUntilClosed();
}

size_t OpenFdCount() {
  size_t n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// A server with an echo route, a metrics-like route and a throwing one.
class HttpServerTest : public ::testing::Test {
 protected:
  // Before held_ goes: no handler may run after it.
  void TearDown() override {
    if (server_) server_->Stop();
  }

  void StartServer(HttpServerOptions options = {}) {
    server_ = std::make_unique<HttpServer>(options);
    server_->Route("GET", "/metrics", [](const HttpRequest&) {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = "iris_up 1\n";
      return r;
    });
    server_->Route("POST", "/echo", [](const HttpRequest& req) {
      HttpResponse r;
      const std::string* h = req.Header("x-test");
      r.body = req.method + " " + req.path + " q=" + req.query + " h=" + (h ? *h : "-") +
               " len=" + std::to_string(req.body.size()) + " body=" + req.body.substr(0, 16);
      return r;
    });
    server_->Route("PUT", "/echo", [](const HttpRequest&) { return HttpResponse{}; });
    server_->Route("GET", "/throw",
                   [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("boom"); });
    // Deferred: the responder is held for the test to complete (or not).
    server_->RouteDeferred(
        "POST", "/deferred",
        [this](const HttpRequest& req, std::shared_ptr<HttpResponder> responder) {
          std::lock_guard<std::mutex> lock(held_mu_);
          held_.emplace_back(req.body, std::move(responder));
        },
        deferred_deadline_);
    ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
    port_ = server_->port();
    ASSERT_NE(port_, 0);
  }

  // The responder of the `i`-th request to /deferred, once its handler ran (waits up to
  // 10 s); nullptr if it did not.
  std::shared_ptr<HttpResponder> Held(size_t i, std::string* body = nullptr) {
    std::shared_ptr<HttpResponder> out;
    iris::testing::PollUntil(
        [&] {
          std::lock_guard<std::mutex> lock(held_mu_);
          if (held_.size() <= i) return false;
          if (body != nullptr) *body = held_[i].first;
          out = held_[i].second;
          return true;
        },
        10'000);
    return out;
  }

  std::unique_ptr<HttpServer> server_;
  uint16_t port_ = 0;
  milliseconds deferred_deadline_{10'000};
  std::mutex held_mu_;
  std::vector<std::pair<std::string, std::shared_ptr<HttpResponder>>> held_;  // held_mu_
};

TEST_F(HttpServerTest, ServesRoutesAndPassesRequestFields) {
  StartServer();
  const std::string metrics = Exchange(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(StatusOf(metrics), 200) << metrics;
  EXPECT_NE(metrics.find("Content-Type: text/plain; version=0.0.4\r\n"), std::string::npos);
  EXPECT_NE(metrics.find("Content-Length: 10\r\n"), std::string::npos);
  EXPECT_NE(metrics.find("Connection: close\r\n"), std::string::npos);
  EXPECT_EQ(BodyOf(metrics), "iris_up 1\n");

  const std::string echo =
      Exchange(port_, "POST /echo?a=b HTTP/1.1\r\nX-Test: yes\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_EQ(StatusOf(echo), 200) << echo;
  EXPECT_EQ(BodyOf(echo), "POST /echo q=a=b h=yes len=5 body=hello");
}

TEST_F(HttpServerTest, AnswersUnknownPath404AndWrongMethod405) {
  StartServer();
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /nope HTTP/1.1\r\n\r\n")), 404);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics/ HTTP/1.1\r\n\r\n")), 404);  // exact paths
  const std::string r = Exchange(port_, "GET /echo HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusOf(r), 405);
  EXPECT_NE(r.find("Allow: POST, PUT\r\n"), std::string::npos) << r;
  EXPECT_EQ(StatusOf(Exchange(port_, "get /metrics HTTP/1.1\r\n\r\n")), 405);  // case matters
}

TEST_F(HttpServerTest, AnswersMalformedRequests400) {
  StartServer();
  EXPECT_EQ(StatusOf(Exchange(port_, "GARBAGE\r\n\r\n")), 400);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\nHost: x\n\n")), 400);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\nBad Header\r\n\r\n")), 400);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/3.0\r\n\r\n")), 505);
  EXPECT_EQ(StatusOf(Exchange(port_,
                              "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5\r\nhello\r\n0\r\n\r\n")),
            411);
}

TEST_F(HttpServerTest, AnswersHandlerExceptions500) {
  StartServer();
  const std::string r = Exchange(port_, "GET /throw HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusOf(r), 500);
  EXPECT_NE(BodyOf(r).find("boom"), std::string::npos);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);  // still serving
}

TEST_F(HttpServerTest, BodiesUpToTheLimitAreServedAndLargerOnesGet413) {
  StartServer();
  const std::string at_limit(64 * 1024, 'a');
  const std::string ok =
      Exchange(port_, "POST /echo HTTP/1.1\r\nContent-Length: " + std::to_string(at_limit.size()) +
                          "\r\n\r\n" + at_limit);
  EXPECT_EQ(StatusOf(ok), 200);
  EXPECT_NE(BodyOf(ok).find("len=65536"), std::string::npos) << BodyOf(ok);

  // The whole oversized body is sent: the 413 must still arrive intact (lingering close).
  const std::string over(64 * 1024 + 1, 'b');
  const std::string r =
      Exchange(port_, "POST /echo HTTP/1.1\r\nContent-Length: " + std::to_string(over.size()) +
                          "\r\n\r\n" + over);
  EXPECT_EQ(StatusOf(r), 413) << r;

  // A declared size far over the limit is refused before any body is read.
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n"));
  EXPECT_EQ(StatusOf(c.ReadUntilClosed()), 413);
}

TEST_F(HttpServerTest, HeadsOverTheLimitGet431) {
  StartServer();
  const std::string big(15 * 1024, 'h');
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\nX-Big: " + big + "\r\n\r\n")), 200);
  const std::string huge(17 * 1024, 'h');
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\nX-Big: " + huge + "\r\n\r\n")), 431);
  // Never terminated: refused as soon as the limit is crossed, not at the read timeout.
  Client c(port_);
  ASSERT_TRUE(c.Send("GET /metrics HTTP/1.1\r\nX-Big: " + huge));
  const auto start = SteadyClock::now();
  EXPECT_EQ(StatusOf(c.ReadUntilClosed()), 431);
  EXPECT_LT(SteadyClock::now() - start, milliseconds(5'000));
}

TEST_F(HttpServerTest, ExpectContinueGets100BeforeTheBody) {
  StartServer();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"));
  EXPECT_EQ(c.ReadExactly(25), "HTTP/1.1 100 Continue\r\n\r\n");
  ASSERT_TRUE(c.Send("abc"));
  const std::string r = c.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 200);
  EXPECT_NE(BodyOf(r).find("body=abc"), std::string::npos);
}

TEST_F(HttpServerTest, SlowClientDoesNotBlockOthers) {
  StartServer();
  Client slow(port_);
  ASSERT_TRUE(slow.Send("POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nha"));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);
  }
  Client half_head(port_);
  ASSERT_TRUE(half_head.Send("GET /metr"));
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);
  // Both finish later and are served.
  ASSERT_TRUE(slow.Send("lf"));
  const std::string r = slow.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 200);
  EXPECT_NE(BodyOf(r).find("body=half"), std::string::npos) << r;
  ASSERT_TRUE(half_head.Send("ics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(StatusOf(half_head.ReadUntilClosed()), 200);
}

TEST_F(HttpServerTest, IncompleteRequestTimesOutWith408) {
  HttpServerOptions options;
  options.read_timeout = milliseconds(200);
  StartServer(options);
  const auto start = SteadyClock::now();
  Client c(port_);
  Client idle(port_);  // never sends anything
  ASSERT_TRUE(c.Send("GET /metrics HTTP/1.1\r\n"));
  const std::string r = c.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 408) << r;
  EXPECT_TRUE(c.closed());
  EXPECT_GE(SteadyClock::now() - start, milliseconds(200));
  EXPECT_EQ(StatusOf(idle.ReadUntilClosed()), 408);
  EXPECT_TRUE(idle.closed());
}

TEST_F(HttpServerTest, ConnectionsOverTheCapAreRefused) {
  HttpServerOptions options;
  options.max_connections = 2;
  StartServer(options);
  // The kernel queues connections in order and the server accepts them in order, so the
  // third one is over the cap whether or not the first two were accepted yet.
  auto a = std::make_unique<Client>(port_);
  Client b(port_);
  Client c(port_);
  ASSERT_TRUE(a->Send("GET /met"));
  ASSERT_TRUE(b.Send("GET /met"));
  const std::string refused = c.ReadUntilClosed();
  EXPECT_EQ(StatusOf(refused), 503) << refused;
  EXPECT_TRUE(c.closed());

  // Once one closes, new clients get in again (retried until the server noticed the close;
  // every attempt waits on the server's answer, not on a timer).
  a.reset();
  int status = 0;
  const auto until = SteadyClock::now() + kIoDeadline;
  while (status != 200 && SteadyClock::now() < until) {
    status = StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n"));
    ASSERT_TRUE(status == 200 || status == 503 || status == -1) << status;  // -1: reset
  }
  EXPECT_EQ(status, 200);
  ASSERT_TRUE(b.Send("rics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(StatusOf(b.ReadUntilClosed()), 200);
}

// One address holding idle connections (a slowloris) gets at most max_connections_per_ip
// slots: its further connections are answered 503 at once, and other clients are still
// served although the idle ones alone would have filled max_connections.
TEST_F(HttpServerTest, OneAddressCannotHoldEverySlot) {
  HttpServerOptions options;
  options.max_connections = 8;
  options.max_connections_per_ip = 3;
  StartServer(options);
  std::vector<std::unique_ptr<Client>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<Client>(port_, "127.0.0.1"));
    ASSERT_TRUE(idle.back()->connected());
  }
  // The kernel queues them in order and the server accepts them in order: the first three
  // are held (idle), the other five are over the per-address cap.
  for (size_t i = 3; i < idle.size(); ++i) {
    const std::string refused = idle[i]->ReadUntilClosed();
    EXPECT_EQ(StatusOf(refused), 503) << i << ": " << refused;
    EXPECT_NE(refused.find("from this address"), std::string::npos) << refused;
  }
  // A new connection from the same address, after the cap: refused at once, not queued.
  {
    Client again(port_, "127.0.0.1");
    ASSERT_TRUE(again.Send("GET /metrics HTTP/1.1\r\n\r\n"));
    EXPECT_EQ(StatusOf(again.ReadUntilClosed()), 503);
  }
  // Other clients are served, several at once, while the idle three stay open.
  Client other_a(port_, "127.0.0.2");
  Client other_b(port_, "127.0.0.3");
  ASSERT_TRUE(other_a.connected() && other_b.connected());
  ASSERT_TRUE(other_a.Send("GET /metrics HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(other_b.Send("GET /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(StatusOf(other_a.ReadUntilClosed()), 200);
  EXPECT_EQ(StatusOf(other_b.ReadUntilClosed()), 200);
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n", "127.0.0.4")), 200);

  // Once the address closes an idle connection, it gets a slot again (retried until the
  // server noticed the close; each attempt waits on the server's answer).
  idle[0].reset();
  int status = 0;
  const auto until = SteadyClock::now() + kIoDeadline;
  while (status != 200 && SteadyClock::now() < until) {
    status = StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n", "127.0.0.1"));
    ASSERT_TRUE(status == 200 || status == 503 || status == -1) << status;  // -1: reset
  }
  EXPECT_EQ(status, 200);
  // The held connections were never cut off: they are still served when they speak.
  ASSERT_TRUE(idle[1]->Send("GET /metrics HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(StatusOf(idle[1]->ReadUntilClosed()), 200);
}

TEST_F(HttpServerTest, StopWhileAClientIsConnected) {
  StartServer();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial"));
  Client idle(port_);
  // Make sure the server has accepted both before stopping: a full exchange after them
  // is served only after the loop accepted the earlier queued connections.
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);
  const auto start = SteadyClock::now();
  server_->Stop();
  EXPECT_LT(SteadyClock::now() - start, milliseconds(2'000));
  EXPECT_EQ(c.ReadUntilClosed(), "");  // dropped unanswered
  EXPECT_TRUE(c.closed());
  EXPECT_EQ(idle.ReadUntilClosed(), "");
  EXPECT_TRUE(idle.closed());
  server_->Stop();  // idempotent
  Client after(port_);
  EXPECT_FALSE(after.connected());  // the listener is gone
}

TEST_F(HttpServerTest, SurvivesGarbageAndLeaksNoDescriptors) {
  const size_t fds_before = OpenFdCount();
  StartServer();
  const uint32_t seed = std::random_device{}();
  std::printf("seed=%u\n", seed);
  std::mt19937 rng(seed);
  for (int i = 0; i < 200; ++i) {
    std::string garbage(rng() % 3000, '\0');
    for (char& ch : garbage) ch = static_cast<char>(rng() % 256);
    if (i % 2 == 0) garbage = "GET /metrics HTTP/1.1\r\n" + garbage;
    if (i % 3 == 0) garbage += "\r\n\r\n";
    Client c(port_);
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.Send(garbage));
    c.ShutdownWrite();
    const std::string r = c.ReadUntilClosed();
    ASSERT_TRUE(c.closed()) << "server neither answered nor closed, i=" << i;
    if (!r.empty()) {
      const int status = StatusOf(r);
      EXPECT_TRUE(status == 200 || (status >= 400 && status < 600)) << r.substr(0, 80);
    }
  }
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);
  server_->Stop();
  EXPECT_EQ(OpenFdCount(), fds_before);
}

TEST_F(HttpServerTest, DeferredHandlerCompletesFromAnotherThread) {
  StartServer();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /deferred HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"));
  std::string body;
  std::shared_ptr<HttpResponder> responder = Held(0, &body);
  ASSERT_NE(responder, nullptr) << "the deferred handler never ran";
  EXPECT_EQ(body, "abc");
  bool completed = false;
  std::thread worker([&] {
    completed = responder->Complete(HttpResponse{202, "text/plain", "done later\n"});
  });
  worker.join();
  EXPECT_TRUE(completed);
  const std::string r = c.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 202) << r;
  EXPECT_EQ(BodyOf(r), "done later\n");
  EXPECT_TRUE(c.closed());
  // Only the first completion counts.
  EXPECT_FALSE(responder->Complete(HttpResponse{200, "text/plain", "again\n"}));
}

TEST_F(HttpServerTest, DeferredRequestNeverAnsweredGets503AtItsDeadline) {
  deferred_deadline_ = milliseconds(300);
  StartServer();
  const auto start = SteadyClock::now();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /deferred HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
  std::shared_ptr<HttpResponder> responder = Held(0);
  ASSERT_NE(responder, nullptr) << "the deferred handler never ran";
  const std::string r = c.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 503) << r;
  EXPECT_NE(BodyOf(r).find("no answer in time"), std::string::npos) << r;
  EXPECT_TRUE(c.closed());
  EXPECT_GE(SteadyClock::now() - start, milliseconds(300));
  // The late answer is refused, and the server keeps serving.
  EXPECT_FALSE(responder->Complete(HttpResponse{200, "text/plain", "too late\n"}));
  EXPECT_EQ(StatusOf(Exchange(port_, "GET /metrics HTTP/1.1\r\n\r\n")), 200);
}

TEST_F(HttpServerTest, OtherRequestsAreServedWhileOneIsPending) {
  StartServer();
  Client pending(port_);
  ASSERT_TRUE(pending.Send("POST /deferred HTTP/1.1\r\nContent-Length: 1\r\n\r\nA"));
  std::shared_ptr<HttpResponder> first = Held(0);
  ASSERT_NE(first, nullptr) << "the deferred handler never ran";
  // While the first waits: plain routes and another deferred request are served, with a
  // client deadline well under the pending request's.
  for (int i = 0; i < 3; ++i) {
    Client c(port_);
    ASSERT_TRUE(c.Send("GET /metrics HTTP/1.1\r\n\r\n"));
    EXPECT_EQ(StatusOf(c.ReadUntilClosed(milliseconds(3'000))), 200) << "request " << i;
  }
  Client second(port_);
  ASSERT_TRUE(second.Send("POST /deferred HTTP/1.1\r\nContent-Length: 1\r\n\r\nB"));
  std::shared_ptr<HttpResponder> next = Held(1);
  ASSERT_NE(next, nullptr);
  EXPECT_TRUE(next->Complete(HttpResponse{200, "text/plain", "B\n"}));
  EXPECT_EQ(BodyOf(second.ReadUntilClosed(milliseconds(3'000))), "B\n");
  // The first is still open, and answered when completed.
  EXPECT_TRUE(first->Complete(HttpResponse{200, "text/plain", "A\n"}));
  const std::string r = pending.ReadUntilClosed();
  EXPECT_EQ(StatusOf(r), 200) << r;
  EXPECT_EQ(BodyOf(r), "A\n");
}

TEST_F(HttpServerTest, StopRefusesLaterCompletions) {
  StartServer();
  Client c(port_);
  ASSERT_TRUE(c.Send("POST /deferred HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
  std::shared_ptr<HttpResponder> responder = Held(0);
  ASSERT_NE(responder, nullptr);
  server_->Stop();
  EXPECT_EQ(c.ReadUntilClosed(), "");  // dropped unanswered, as any in-flight request
  EXPECT_FALSE(responder->Complete(HttpResponse{}));
  server_.reset();
  EXPECT_FALSE(responder->Complete(HttpResponse{}));  // outlives the server safely
}

TEST(HttpServerStartTest, ReportsBadAddressesAndBusyPorts) {
  HttpServer bad;
  Status s = bad.Start("not-an-address", 0);
  EXPECT_EQ(s.code(), StatusCode::kBadRequest) << s.ToString();

  HttpServer first;
  ASSERT_TRUE(first.Start("127.0.0.1", 0).ok());
  HttpServer second;
  s = second.Start("127.0.0.1", first.port());
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_EQ(first.Start("127.0.0.1", 0).code(), StatusCode::kInternal);  // twice

  HttpServer v6;
  const Status v6_status = v6.Start("[::1]", 0);
  if (v6_status.ok()) {
    EXPECT_NE(v6.port(), 0);  // hosts without IPv6 loopback skip this
  }
}

}  // namespace
}  // namespace iris::net::http
