#pragma once
// BenchConnection: one client session of the load generator, non-blocking, driven by a
// net::EventLoop: TCP connect (optionally from a chosen loopback source address), TLS 1.3
// handshake, HELLO -> WELCOME, catch-up (SYNC_PAGE / SYNC_ACK ... SYNC_DONE), then push mode
// (DELIVER, acknowledged with a cumulative DELIVER_ACK after every read batch). It can be
// closed and started again (reconnect) any number of times.
//
// Memory: nothing is buffered while idle (reads decrypt into a per-thread scratch buffer,
// the output queue is released once drained, the SSL object is freed on close).
//
// Thread-safety: loop thread only. The delegate and the loop must outlive the connection.
// A delegate may Close() the connection from its callbacks, but must not Start() it again
// from inside them (defer that with EventLoop::Defer).

#include <netinet/in.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "iris/v1/client.pb.h"
#include "net/event_loop.h"
#include "wire/frame.h"

namespace iris::bench {

// Where and how to connect.
struct Endpoint {
  sockaddr_in server{};
  std::optional<in_addr> source;  // bound (port chosen at connect) when set
  SSL_CTX* tls = nullptr;
};

class BenchConnection final : public net::EventLoop::Handler {
 public:
  enum class State : uint8_t {
    kIdle,          // never started, or closed by Close()
    kConnecting,    // TCP connect in progress
    kHandshake,     // TLS handshake
    kAwaitWelcome,  // HELLO sent
    kCatchUp,       // WELCOME received, waiting for SYNC_DONE
    kReady,         // push mode
    kFailed,        // closed by the peer or an error (see failure())
  };

  class Delegate {
   public:
    virtual ~Delegate() = default;
    // SYNC_DONE: the session is in push mode.
    virtual void OnReady(BenchConnection& c) = 0;
    // A message from catch-up (SYNC_PAGE) or push (DELIVER), in arrival order.
    virtual void OnEnvelope(BenchConnection& c, const v1::Envelope& e) = 0;
    // Any other frame once WELCOME was received (SEND_ACK, ERROR, PONG, ...).
    virtual void OnFrame(BenchConnection& c, uint8_t opcode, std::string_view payload) = 0;
    // The connection failed or the peer closed it (never called for Close()).
    virtual void OnFailed(BenchConnection& c) = 0;
  };

  BenchConnection(net::EventLoop& loop, Delegate* delegate);
  ~BenchConnection() override;
  BenchConnection(const BenchConnection&) = delete;
  BenchConnection& operator=(const BenchConnection&) = delete;

  // Starts connecting (state kIdle or kFailed). On an immediate failure the state is
  // kFailed and OnFailed is NOT called (the caller sees the return value).
  bool Start(const Endpoint& endpoint, std::string token, uint64_t cursor);
  // Queues a frame; it is written after the current loop turn (frames queued in one turn
  // share TLS records and system calls).
  void Send(uint8_t opcode, const google::protobuf::MessageLite& m);
  // Writes what is queued now.
  void Flush();
  // Closes at once: abortive (RST, as a vanished network would look after a reset) or
  // orderly (TLS close_notify, then FIN). State becomes kIdle. OnFailed is not called.
  void Close(bool abortive);

  void OnEvents(uint32_t events) override;

  State state() const { return state_; }
  bool ready() const { return state_ == State::kReady; }
  // Why the last attempt failed ("connect: ...", "ERROR RATE_LIMITED", "peer closed", ...).
  const std::string& failure() const { return failure_; }
  // The code of the last ERROR frame received (0 when none) and its retry_after_ms.
  uint32_t last_error_code() const { return last_error_code_; }
  uint32_t last_retry_after_ms() const { return last_retry_after_ms_; }
  // Timestamps (monotonic ns) of the current attempt.
  int64_t start_ns() const { return start_ns_; }
  int64_t tcp_ns() const { return tcp_ns_; }
  int64_t tls_ns() const { return tls_ns_; }
  int64_t welcome_ns() const { return welcome_ns_; }
  int64_t ready_ns() const { return ready_ns_; }
  int64_t last_send_ns() const { return last_send_ns_; }
  // The highest message id received (the client's persisted cursor).
  uint64_t cursor() const { return cursor_; }
  uint64_t welcome_user() const { return welcome_user_; }

  // Owner's bookkeeping.
  uint32_t tag = 0;

 private:
  void Fail(std::string reason);
  void Release();
  void UpdateInterest();
  void OnConnected();
  void DoHandshake();
  void DoRead();
  bool HandleFrame(uint8_t opcode, std::string_view payload);

  net::EventLoop& loop_;
  Delegate* delegate_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  State state_ = State::kIdle;
  bool want_write_ = false;
  bool flush_scheduled_ = false;
  uint32_t interest_ = 0;
  uint64_t cursor_ = 0;
  uint64_t acked_cursor_ = 0;
  uint64_t welcome_user_ = 0;
  uint32_t last_error_code_ = 0;
  uint32_t last_retry_after_ms_ = 0;
  uint32_t generation_ = 0;  // invalidates deferred flushes of an earlier attempt
  int64_t start_ns_ = 0, tcp_ns_ = 0, tls_ns_ = 0, welcome_ns_ = 0, ready_ns_ = 0;
  int64_t last_send_ns_ = 0;
  std::string token_;
  std::string out_;
  size_t out_pos_ = 0;
  std::string failure_;
  wire::FrameDecoder decoder_;
};

// CLOCK_MONOTONIC in nanoseconds.
int64_t MonoNowNs();

}  // namespace iris::bench
