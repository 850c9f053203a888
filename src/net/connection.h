#pragma once
// Connection: one non-blocking TCP socket with a server-side TLS 1.3 session, driven by one
// EventLoop. It moves bytes only; the protocol lives in the Delegate (edge::Session).
//
// Memory (NFR-19): OpenSSL runs the handshake only. Once it is done the connection keeps
// the application traffic keys in a Tls13Records (about 200 bytes) and frees its SSL object
// (about 14 KB even with SSL_MODE_RELEASE_BUFFERS). An idle connection keeps no read buffer
// (records are read and decrypted in place in the loop's shared scratch buffer; only a
// partly received record is kept) and its output queues are released once drained. Should
// OpenSSL hold unread bytes at the end of the handshake, or its secrets be unavailable, the
// connection stays on OpenSSL (SSL_read/SSL_write) instead.
//
// Output is bounded: Write() fails once more than max_output_bytes are queued, and the
// caller closes the connection (a reader too slow to drain is cut off, never allowed to grow
// memory without bound).
//
// Thread-safety: loop thread only. The Connection is owned by whoever created it; after
// Delegate::OnClosed() it must be destroyed (e.g. with EventLoop::Defer), not used again.

#include <openssl/ssl.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "net/event_loop.h"
#include "net/proxy_protocol.h"
#include "net/tls.h"
#include "net/tls_records.h"

namespace iris::net {

class Connection final : public EventLoop::Handler {
 public:
  class Delegate {
   public:
    virtual ~Delegate() = default;
    virtual void OnHandshakeDone() {}
    // ExpectProxyHeader(): the header (or why it is malformed), before any TLS byte. True
    // goes on to the handshake; false closes the connection (OnClosed follows).
    virtual bool OnProxyHeader(const Result<ProxyHeader>& header) {
      (void)header;
      return false;
    }
    // Decrypted bytes; valid only during the call.
    virtual void OnData(std::span<const uint8_t> data) = 0;
    // The output queue drained completely (used to resume paused producers).
    virtual void OnWritable() {}
    // The connection is closed (peer closed, error, or Close()/Abort() finished). Called once.
    virtual void OnClosed(std::string_view reason) = 0;
  };

  // Takes ownership of `fd` (a connected, non-blocking socket).
  Connection(EventLoop& loop, SSL_CTX* ctx, int fd, Delegate* delegate, size_t max_output_bytes);
  ~Connection() override;

  Status Start();
  // The connection starts with a PROXY protocol v2 header (proxy_protocol.h) before TLS:
  // it is read (without taking a byte past it) and handed to Delegate::OnProxyHeader, and
  // only then does the handshake begin. Call before Start().
  void ExpectProxyHeader();
  // Queues bytes for sending at the end of this loop turn (EventLoop::ScheduleFlush), so
  // frames written in one turn share TLS records and system calls. Returns false (and
  // queues nothing) when the queue would exceed its bound, or when the connection is closing.
  bool Write(std::string_view bytes);
  // Stops reading, sends what is queued, then closes (TLS close_notify). Idempotent.
  void Close(std::string_view reason);
  // Closes at once, dropping queued output. Idempotent.
  void Abort(std::string_view reason);
  // Stops or resumes reading (backpressure from the application).
  void PauseReading(bool paused);
  // Releases the plaintext output and partial-record buffers if they were not used since
  // the previous call. A busy connection keeps them between loop turns (no malloc/free of
  // a large buffer per turn); the owner calls this periodically (edge: every loop tick), so
  // an idle connection holds none within two ticks.
  void TrimBuffers();

  size_t queued_bytes() const { return out_.size() - out_pos_ + wire_.size() - wire_pos_; }
  // True once the handshake is done and records are handled by Tls13Records.
  bool records_offloaded() const { return records_.has_value(); }
  bool closing() const { return state_ >= State::kClosing; }
  bool handshake_done() const { return state_ >= State::kOpen; }
  const std::string& peer_address() const { return peer_; }
  void set_peer_address(std::string peer) { peer_ = std::move(peer); }

  void OnEvents(uint32_t events) override;
  void OnFlush() override;

 private:
  enum class State : uint8_t { kProxyHeader, kHandshake, kOpen, kClosing, kClosed };

  void DoProxyHeader();
  void DoHandshake();
  void OffloadRecords();
  void DoRead();
  void DoReadRecords();
  // One recv() of at most *budget bytes into `buf` (the budget shrinks by what was read):
  // the bytes read, 0 when the socket has nothing now, or -1 once the connection has been
  // finished (end of stream or a socket error).
  ssize_t RecvSome(std::span<uint8_t> buf, size_t* budget);
  // Closing: reads and drops what arrives (at most a turn's budget); the peer's EOF ends
  // the connection.
  void DiscardInput();
  // Opens and delivers the complete records at the head of `buf`; returns how many bytes
  // it consumed (it stops early when reading is paused or the connection closes).
  size_t ProcessRecords(std::span<uint8_t> buf);
  void DoWrite();
  void DoWriteRecords();
  // Sends as much of `data` as the socket takes now: the bytes sent, or -1 on an error.
  ssize_t SendAvailable(std::string_view data);
  void UpdateInterest();
  void Finish(std::string_view reason);
  // Seals and sends `alert` (best effort, never waiting; Tls13Records::kNoAlert sends
  // nothing) before Finish.
  void FailWithAlert(uint8_t alert, std::string_view reason);

  EventLoop& loop_;
  SSL* ssl_ = nullptr;
  int fd_;
  Delegate* delegate_;
  uint32_t max_output_;
  State state_ = State::kHandshake;
  bool paused_ = false;
  bool want_write_ = false;  // OpenSSL needs the socket writable to make progress
  bool flush_scheduled_ = false;
  bool buffers_used_ = false;  // since the last TrimBuffers()
  uint32_t interest_ = 0;
  std::string out_;  // plaintext not yet handed to TLS
  size_t out_pos_ = 0;
  // Offloaded record layer: the keys, sealed bytes not yet sent, a partly received record.
  std::optional<Tls13Records> records_;
  std::string wire_;
  size_t wire_pos_ = 0;
  std::string in_;
  std::unique_ptr<TlsTrafficSecrets> secrets_;  // during the handshake only
  std::unique_ptr<ProxyHeaderParser> proxy_;    // in kProxyHeader only
  std::string peer_;
  std::string close_reason_;
};

}  // namespace iris::net
