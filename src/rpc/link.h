#pragma once
// Link: one framed, message-oriented connection of the internal transport (edge process <->
// core process over a Unix socket; node <-> node over TCP with mutual TLS 1.3). Frames are a
// 4-byte big-endian length followed by a serialised protobuf message of at most
// kMaxLinkMessageBytes.
//
// Each link runs ONE I/O thread that owns the socket (non-blocking) and the transport
// (plain or TLS): it polls the socket and an eventfd (wake-ups from other threads), does
// the TLS handshake if any, reads and parses frames, writes the queued frames, and runs
// the link's timer. Nothing else touches the socket.
//
//  - Send() may be called from any thread: it serialises the message into the write
//    queue and wakes the I/O thread; it never waits for the socket. The queue is bounded
//    in bytes (LinkOptions::max_queued_bytes): a Send that would exceed the bound closes
//    the link (a peer that stops reading cannot make us hold unbounded memory) and
//    returns UNAVAILABLE, as does a Send on a closed link.
//  - Received frames are handed to Handlers::on_message on the I/O thread, in order. The
//    handler must not block (it hands work off; CoreApi calls are asynchronous).
//  - The timer: ArmTimer(due) from any thread; Handlers::on_timer runs on the I/O thread
//    once the earliest armed time has passed and returns the next due time (or kNoTimer).
//  - The link ends on a read or write error, end of stream, an oversized or unreadable
//    frame, the write-queue bound, a handshake that failed or did not finish within
//    handshake_timeout_ms, silence for dead_after_ms (when set), or Close(). Handlers::on_close then runs exactly once on the I/O
//    thread with the reason, and the socket is closed: the other side sees the link end.
//
// Lifetime: create with std::make_shared, then Start(). Stop() (or the destructor) closes
// the link and joins the I/O thread; call it from another thread than the I/O thread
// (there it only closes). Handlers may capture objects that outlive Stop(). The last
// reference to a started link must not be dropped on its own I/O thread (from a handler):
// its owner keeps one until it has called Stop() from another thread.

#include <openssl/ssl.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace iris::rpc {

constexpr uint32_t kMaxLinkMessageBytes = 16u << 20;
constexpr int64_t kNoTimer = std::numeric_limits<int64_t>::max();

// The frame decoder of a link, apart from any socket: hands out the complete frames at the
// front of `in` (each a 4-byte big-endian length, then that many bytes of message), in
// order, calling on_frame with each message while it returns true. Returns the bytes taken
// (the frames handed out; an incomplete frame at the end stays for the next read), or
// BAD_REQUEST when the next frame announces more than kMaxLinkMessageBytes: the frames
// before it were handed out, and the link must end (nothing after them is trusted). Never
// allocates: the frames are views into `in`.
Result<size_t> TakeLinkFrames(std::string_view in,
                              const std::function<bool(std::string_view frame)>& on_frame);

// The byte stream under a link: the socket itself, or TLS over it. Used only by the link's
// I/O thread; the socket is non-blocking.
class Transport {
 public:
  enum class Io { kDone, kWantRead, kWantWrite, kClosed, kError };
  struct Result {
    Io io;
    size_t bytes = 0;  // with kDone: bytes read or written (> 0)
  };
  virtual ~Transport() = default;
  // Advances the handshake; kDone once the transport carries data (plain: at once).
  virtual Io Handshake() = 0;
  virtual Result Read(char* p, size_t n) = 0;
  virtual Result Write(const char* p, size_t n) = 0;
  // Why the last call returned kError or kClosed (for logs and close reasons).
  virtual std::string LastError() = 0;
  // The TLS connection (after the handshake: the peer's certificate); nullptr when plain.
  virtual SSL* ssl() = 0;
  // An orderly end, best effort and without waiting (TLS: sends close_notify).
  virtual void Shutdown() = 0;
};

// A plain stream socket (does not own the fd).
std::unique_ptr<Transport> MakePlainTransport(int fd);
// TLS over the socket; takes ownership of `ssl` (not of its fd).
std::unique_ptr<Transport> MakeTlsTransport(SSL* ssl);

struct LinkOptions {
  // Bytes queued for writing (serialised frames not yet accepted by the socket) beyond
  // which the link is closed.
  size_t max_queued_bytes = 64u << 20;
  // The transport must be established within this time (0 = no limit).
  int64_t handshake_timeout_ms = 10'000;
  // Liveness (0 = off). keepalive_ms: an empty frame (length 0, which the receiving link
  // drops) is written whenever nothing was written for this long. dead_after_ms: the link
  // ends when nothing was received for this long. A peer that vanished without a reset (its
  // network cut, its host gone, the process stopped) is otherwise seen only when TCP gives
  // up, minutes later. Both sides must send keepalives for either to use dead_after_ms.
  int64_t keepalive_ms = 0;
  int64_t dead_after_ms = 0;
};

// Node-to-node links: a keepalive every second, dead after 6 s of silence (three lease
// TTLs by default: a peer that is only slow is not cut off).
inline LinkOptions PeerLinkOptions() {
  LinkOptions o;
  o.keepalive_ms = 1'000;
  o.dead_after_ms = 6'000;
  return o;
}

class Link {
 public:
  struct Handlers {
    // Once the transport is established (after the TLS handshake), before any frame is
    // read. A non-OK status closes the link with it.
    std::function<Status(Transport& transport)> on_established;
    // Every received frame (the serialised message), in order. Must not block.
    std::function<void(std::string_view frame)> on_message;
    // The armed time has passed (`now_ms`: monotonic); returns the next due time or
    // kNoTimer.
    std::function<int64_t(int64_t now_ms)> on_timer;
    // Exactly once, when the link has ended; `why` is never OK.
    std::function<void(const Status& why)> on_close;
  };

  // Takes ownership of `fd` (a connected stream socket; made non-blocking here).
  Link(int fd, std::unique_ptr<Transport> transport, LinkOptions options, Handlers handlers);
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Starts the I/O thread (once). INTERNAL when the thread's resources cannot be made.
  Status Start();
  // Queues `m` (any thread). UNAVAILABLE when the link is closed or the write queue would
  // pass its bound (which closes the link); INTERNAL when `m` cannot be serialised or is
  // larger than kMaxLinkMessageBytes.
  Status Send(const google::protobuf::MessageLite& m);
  // Queues `m`, then closes the link with `why` once every queued byte is written.
  void SendAndClose(const google::protobuf::MessageLite& m, Status why);
  // on_timer runs on the I/O thread at or after `due_ms` (monotonic, SystemClock).
  void ArmTimer(int64_t due_ms);
  // Ends the link with `why` (any thread; asynchronous: on_close follows on the I/O thread).
  void Close(Status why);
  // Close, then wait for the I/O thread to finish (only closes when called on it).
  void Stop();

  bool open() const { return !closed_.load(); }
  // Bytes in the write queue now, and the most it ever held.
  size_t queued_bytes() const { return queued_.load(); }
  size_t peak_queued_bytes() const { return peak_queued_.load(); }

 private:
  void Run();
  void Wake();
  // Reads what the socket has and hands out complete frames; false (and *why) when done.
  bool ReadFrames(Status* why, bool* want_write);
  // Writes queued bytes until the socket would block; false (and *why) on an error.
  bool WriteQueued(Status* why, bool* blocked);
  Status Enqueue(const google::protobuf::MessageLite& m);

  const int fd_;
  int wake_fd_ = -1;
  std::unique_ptr<Transport> transport_;  // I/O thread
  const LinkOptions options_;
  Handlers handlers_;
  std::thread thread_;
  bool thread_started_ = false;      // Start() made the I/O thread (it closes the socket)
  std::atomic<bool> closed_{false};  // no more sends are accepted
  std::atomic<int64_t> timer_due_{kNoTimer};
  std::atomic<size_t> queued_{0};
  std::atomic<size_t> peak_queued_{0};

  std::mutex mu_;
  std::string pending_;             // mu_: frames queued by Send, not yet taken by the I/O thread
  bool close_requested_ = false;    // mu_
  bool close_after_flush_ = false;  // mu_
  Status close_why_;                // mu_

  // I/O thread only.
  int64_t last_rx_ms_ = 0;  // when bytes last arrived (or the link was established)
  int64_t last_tx_ms_ = 0;  // when bytes were last written (or the link was established)
  std::string out_;
  size_t out_off_ = 0;
  std::string in_;
};

}  // namespace iris::rpc
