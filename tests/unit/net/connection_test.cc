// net::Connection against OpenSSL's own client over a real socket: the handshake runs in
// OpenSSL, then the server switches to Tls13Records and frees its SSL object. Everything an
// OpenSSL client does afterwards — bulk data both ways, KeyUpdate, close_notify — must
// interoperate, for each TLS 1.3 suite, and tampered records must close the connection.
#include "net/connection.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "net/event_loop.h"
#include "net/tls.h"

namespace iris::net {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(10);

bool WaitFor(const std::function<bool()>& done) {
  const auto until = Clock::now() + kDeadline;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

// Echoes what it receives; "CLOSE" asks the server to close gracefully.
class Echo final : public Connection::Delegate {
 public:
  Connection* conn = nullptr;
  std::atomic<bool> handshake{false};
  std::atomic<bool> offloaded{false};
  std::atomic<bool> closed{false};
  std::atomic<size_t> received{0};

  void OnHandshakeDone() override {
    offloaded = conn->records_offloaded();
    handshake = true;
  }
  void OnData(std::span<const uint8_t> data) override {
    const std::string_view s(reinterpret_cast<const char*>(data.data()), data.size());
    received += s.size();
    if (s == "CLOSE") {
      conn->Close("asked to");
      return;
    }
    ASSERT_TRUE(conn->Write(s));
  }
  void OnClosed(std::string_view reason) override {
    std::lock_guard<std::mutex> lock(mu);
    why = std::string(reason);
    closed = true;
  }
  std::string reason() {
    std::lock_guard<std::mutex> lock(mu);
    return why;
  }

 private:
  std::mutex mu;
  std::string why;
};

class ConnectionTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("iris_conn_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    const std::string cert = (dir_ / "cert.pem").string(), key = (dir_ / "key.pem").string();
    ASSERT_TRUE(GenerateSelfSignedCertificate(cert, key, "localhost").ok());
    auto server = TlsContext::Server(cert, key);
    ASSERT_TRUE(server.ok());
    server_ctx_ = std::move(*server);
    auto client = TlsContext::Client("", *CertificateFingerprint(cert));
    ASSERT_TRUE(client.ok());
    client_ctx_ = std::move(*client);
    if (GetParam()[0] != '\0') {
      ASSERT_EQ(SSL_CTX_set_ciphersuites(client_ctx_->get(), GetParam()), 1);
    }
    ASSERT_TRUE(loop_.Init().ok());
    loop_thread_ = std::thread([this] { loop_.Run(); });
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    client_fd_ = sv[0];
    timeval tv{10, 0};  // every blocking client read or write is bounded
    setsockopt(client_fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(client_fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    const int server_fd = sv[1];
    ASSERT_EQ(fcntl(server_fd, F_SETFL, O_NONBLOCK), 0);
    OnLoop([this, server_fd] {
      conn_ = std::make_unique<Connection>(loop_, server_ctx_->get(), server_fd, &echo_,
                                           size_t{8} << 20);
      echo_.conn = conn_.get();
      ASSERT_TRUE(conn_->Start().ok());
    });
    ssl_ = SSL_new(client_ctx_->get());
    SSL_set_fd(ssl_, client_fd_);
  }

  void TearDown() override {
    if (ssl_ != nullptr) SSL_free(ssl_);
    OnLoop([this] { conn_.reset(); });
    loop_.Stop();
    loop_thread_.join();
    if (client_fd_ >= 0) close(client_fd_);
    std::filesystem::remove_all(dir_);
  }

  // Runs `fn` on the loop thread and waits for it.
  void OnLoop(std::function<void()> fn) {
    std::promise<void> done;
    loop_.Post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

  void Handshake() {
    ASSERT_EQ(SSL_connect(ssl_), 1) << OpenSslError();
    ASSERT_TRUE(WaitFor([&] { return echo_.handshake.load(); }));
  }

  // Writes all of `data` and reads back as many bytes (the echo), from this one thread (an
  // SSL object is not safe for concurrent reads and writes): non-blocking, polling.
  std::string Echoed(const std::string& data) {
    std::string back;
    fcntl(client_fd_, F_SETFL, O_NONBLOCK);
    size_t at = 0;
    char buf[65536];
    const auto until = Clock::now() + kDeadline;
    while (back.size() < data.size() && Clock::now() < until) {
      bool progress = false;
      if (at < data.size()) {
        const int n = SSL_write(ssl_, data.data() + at,
                                static_cast<int>(std::min<size_t>(data.size() - at, 40'000)));
        if (n > 0) {
          at += static_cast<size_t>(n);
          progress = true;
        } else if (const int e = SSL_get_error(ssl_, n);
                   e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) {
          break;
        }
      }
      const int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n > 0) {
        back.append(buf, static_cast<size_t>(n));
        progress = true;
      } else if (const int e = SSL_get_error(ssl_, n);
                 e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        break;
      }
      if (!progress) {
        pollfd p{client_fd_, static_cast<short>(POLLIN | (at < data.size() ? POLLOUT : 0)), 0};
        poll(&p, 1, 100);
      }
    }
    fcntl(client_fd_, F_SETFL, 0);
    return back;
  }

  EventLoop loop_;
  std::thread loop_thread_;
  std::filesystem::path dir_;
  std::unique_ptr<TlsContext> server_ctx_, client_ctx_;
  std::unique_ptr<Connection> conn_;
  Echo echo_;
  int client_fd_ = -1;
  SSL* ssl_ = nullptr;
};

TEST_P(ConnectionTest, BulkDataBothWaysAfterTheServerLetGoOfOpenSsl) {
  Handshake();
  EXPECT_TRUE(echo_.offloaded) << "the SSL object should be freed after the handshake";
  std::mt19937 rng(7);
  std::string data(1 << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  EXPECT_EQ(Echoed(data), data);
  EXPECT_EQ(Echoed("small"), "small");
}

TEST_P(ConnectionTest, KeyUpdatesFromTheClientAreFollowed) {
  Handshake();
  for (int i = 0; i < 3; ++i) {
    // Requested: the server must update its own sending key too; OpenSSL checks that the
    // following records decrypt under the new keys.
    ASSERT_EQ(SSL_key_update(ssl_, i % 2 == 0 ? SSL_KEY_UPDATE_REQUESTED
                                              : SSL_KEY_UPDATE_NOT_REQUESTED),
              1);
    const std::string msg = "after update " + std::to_string(i);
    EXPECT_EQ(Echoed(msg), msg);
  }
  EXPECT_FALSE(echo_.closed.load()) << echo_.reason();
}

TEST_P(ConnectionTest, GracefulCloseSendsQueuedDataThenCloseNotify) {
  Handshake();
  EXPECT_EQ(Echoed("hello"), "hello");
  ASSERT_EQ(SSL_write(ssl_, "CLOSE", 5), 5);
  char buf[64];
  const int n = SSL_read(ssl_, buf, sizeof(buf));
  EXPECT_EQ(n, 0);
  EXPECT_EQ(SSL_get_error(ssl_, n), SSL_ERROR_ZERO_RETURN) << "close_notify expected";
  EXPECT_TRUE(WaitFor([&] { return echo_.closed.load(); }));
  EXPECT_EQ(echo_.reason(), "asked to");
}

TEST_P(ConnectionTest, ClientCloseNotifyEndsTheConnection) {
  Handshake();
  EXPECT_EQ(Echoed("bye"), "bye");
  ASSERT_GE(SSL_shutdown(ssl_), 0);
  ASSERT_TRUE(WaitFor([&] { return echo_.closed.load(); }));
  EXPECT_EQ(echo_.reason(), "peer closed");
}

INSTANTIATE_TEST_SUITE_P(Suites, ConnectionTest,
                         ::testing::Values("", "TLS_AES_128_GCM_SHA256",
                                           "TLS_AES_256_GCM_SHA384",
                                           "TLS_CHACHA20_POLY1305_SHA256"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           const std::string s = p.param;
                           return s.empty() ? std::string("Default") : s;
                         });

// Holds a loop's thread from construction to destruction (also when an assertion returns
// early). The closure owns what it waits on, so it outlives this object safely.
class LoopHold {
 public:
  explicit LoopHold(EventLoop& loop) {
    auto holding = std::make_shared<std::promise<void>>();
    std::future<void> held = holding->get_future();
    loop.Post([holding, released = release_.get_future().share()] {
      holding->set_value();
      released.wait();
    });
    held.wait();
  }
  ~LoopHold() { release_.set_value(); }
  LoopHold(const LoopHold&) = delete;
  LoopHold& operator=(const LoopHold&) = delete;

 private:
  std::promise<void> release_;
};

class ConnectionAttackTest : public ConnectionTest {};

TEST_P(ConnectionAttackTest, ForgedRecordClosesTheConnection) {
  Handshake();
  EXPECT_EQ(Echoed("fine"), "fine");
  // A well-formed header with a body no key produced.
  std::string forged("\x17\x03\x03\x00\x20", 5);
  forged.append(32, 'x');
  ASSERT_EQ(write(client_fd_, forged.data(), forged.size()),
            static_cast<ssize_t>(forged.size()));
  ASSERT_TRUE(WaitFor([&] { return echo_.closed.load(); }));
  EXPECT_NE(echo_.reason().find("bad_record_mac"), std::string::npos) << echo_.reason();
}

TEST_P(ConnectionAttackTest, PlaintextRecordAfterTheHandshakeClosesTheConnection) {
  Handshake();
  const std::string ccs("\x14\x03\x03\x00\x01\x01", 6);
  ASSERT_EQ(write(client_fd_, ccs.data(), ccs.size()), static_cast<ssize_t>(ccs.size()));
  ASSERT_TRUE(WaitFor([&] { return echo_.closed.load(); }));
  EXPECT_NE(echo_.reason().find("unexpected record type"), std::string::npos) << echo_.reason();
}

TEST_P(ConnectionAttackTest, DataRightBehindTheFinishedMessageIsNotLost) {
  // Hold the server's loop while the client finishes its handshake and sends data, so the
  // Finished message and the first application record wait in the socket together.
  SSL_set_connect_state(ssl_);
  ASSERT_EQ(fcntl(client_fd_, F_SETFL, O_NONBLOCK), 0);
  {
    LoopHold hold(loop_);
    ASSERT_EQ(SSL_connect(ssl_), -1);  // ClientHello sent; the server cannot answer yet
    ASSERT_EQ(SSL_get_error(ssl_, -1), SSL_ERROR_WANT_READ);
  }
  pollfd p{client_fd_, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10'000), 1) << "no server flight";
  {
    LoopHold hold(loop_);  // the server's whole flight went out in the turn before this
    ASSERT_EQ(SSL_connect(ssl_), 1) << OpenSslError();
    ASSERT_EQ(SSL_write(ssl_, "first", 5), 5);
  }
  ASSERT_TRUE(WaitFor([&] { return echo_.received.load() == 5; }));
  EXPECT_TRUE(echo_.offloaded) << "OpenSSL read past the Finished message";
  ASSERT_EQ(fcntl(client_fd_, F_SETFL, 0), 0);
  char buf[16];
  ASSERT_EQ(SSL_read(ssl_, buf, sizeof(buf)), 5);
  EXPECT_EQ(std::string(buf, 5), "first");
}

INSTANTIATE_TEST_SUITE_P(DefaultSuite, ConnectionAttackTest, ::testing::Values(""));

}  // namespace
}  // namespace iris::net
