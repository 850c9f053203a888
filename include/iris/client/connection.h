#pragma once
// iris::client::Connection: one blocking TLS 1.3 connection to an Iris server that sends and
// receives protocol frames (PROTOCOL.md sections 1-2). It is the transport under the client
// library, the CLI and the integration tests.
//
// The server is always verified: by a CA file (chain + host name / IP address) or by a pinned
// SHA-256 certificate fingerprint. There is no way to turn verification off.
//
// Thread-safety: one thread may send (SendFrame) while another receives (ReadFrame): every
// OpenSSL call on the shared SSL object is made under a mutex, which is not held while
// waiting for the socket. Connect/Close/Abort, and several senders or several readers, need
// the caller's own serialisation.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "iris/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace iris::client {

struct ConnectOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 7443;
  std::string ca_file;         // PEM CA (or the server's self-signed certificate)
  std::string fingerprint;     // pin: "pin-sha256:BASE64" (public key) or "SHA256:AB:.." (cert)
  int timeout_ms = 10'000;     // TCP connect + TLS handshake
  std::string source_address;  // optional local address to bind (e.g. 127.0.0.2)
};

struct ReceivedFrame {
  uint8_t opcode = 0;
  std::string payload;
};

class Connection {
 public:
  // UNAVAILABLE when the server cannot be reached, UNAUTHENTICATED when its certificate
  // does not verify (the message says which check failed).
  static Result<std::unique_ptr<Connection>> Connect(const ConnectOptions& options);
  ~Connection();

  Status SendFrame(uint8_t opcode, const google::protobuf::MessageLite& message);
  // The next frame. UNAVAILABLE when the connection closed (message says how),
  // OVERLOADED (used as "timed out") when none arrived within timeout_ms.
  Result<ReceivedFrame> ReadFrame(int timeout_ms);
  // The same, but the wait also ends (OVERLOADED, message "woken") as soon as `wake_fd`
  // is readable (e.g. an eventfd another thread writes to); the caller drains wake_fd. A
  // partly received frame is kept for the next call.
  Result<ReceivedFrame> ReadFrame(int timeout_ms, int wake_fd);
  // Closes the TLS session and the socket.
  void Close();
  // Half-closes nothing and sends no close_notify: the socket is just dropped (simulates a
  // vanished network peer from the server's point of view only when combined with no FIN;
  // here it is a plain abortive close with SO_LINGER 0).
  void Abort();
  bool closed() const { return fd_ < 0; }

 private:
  struct Tls;  // the OpenSSL session, its context and the mutex over them (connection.cc)
  // client/connection_test_access.h: raw bytes for the project's own tests.
  friend struct ConnectionTestAccess;

  Connection();
  // Writes `bytes` exactly as given.
  Status SendBytes(std::string_view bytes);
  Status FillAtLeast(size_t n, int timeout_ms, int wake_fd);

  int fd_ = -1;
  std::unique_ptr<Tls> tls_;
  std::string in_;
};

}  // namespace iris::client
