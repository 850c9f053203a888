#pragma once
// Helpers shared by the security integration tests (RFC-001 FR-9/10/11, NFR-14, NFR-16..18):
// reading fatal errors and connection closes, raw TCP sockets, the Prometheus text of the
// admin listener, and child processes bounded by a deadline. Every wait is on an observable
// condition (a frame, a socket event, a child's exit) with a deadline; nothing sleeps.
//
// Thread-safety: the functions keep no state; each TestClient and socket is used by one
// thread at a time.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "harness/server_process.h"
#include "wire/opcode.h"

namespace iris::testing {

constexpr uint8_t Op(wire::Opcode op) { return static_cast<uint8_t>(op); }

int64_t MonoMs();
int64_t WallMs();

// The payload of an ERROR frame; a failed expectation when `f` is another frame.
v1::Error ParseError(const client::ReceivedFrame& f);

// Reads until the server closes the connection or `timeout_ms` passes. True when it closed
// (the read failed with UNAVAILABLE); the frames that arrived first go to *frames.
bool WaitClosed(TestClient& c, int timeout_ms,
                std::vector<client::ReceivedFrame>* frames = nullptr);

// The next frame must be ERROR `code` with fatal = true (and `request_id`), after which the
// server must close the connection within a few seconds. Returns the error.
v1::Error ExpectFatal(TestClient& c, StatusCode code, uint64_t request_id = 0);

// The next frame must be ERROR `code` with fatal = false and `request_id`; the connection
// then still answers a PING. Returns the error.
v1::Error ExpectNonFatal(TestClient& c, StatusCode code, uint64_t request_id);

// Sends PING(nonce) and waits for PONG(nonce); other frames are kept for later reads.
void ExpectPong(TestClient& c, uint64_t nonce, int timeout_ms = 5'000);

// A HELLO with versions [1] and `token` on a fresh connection from `source_address`
// ("" = any); the first reply. `client` receives the connection.
client::ReceivedFrame HelloOnNewConnection(const ServerProcess& server, const std::string& token,
                                           std::unique_ptr<TestClient>* client,
                                           const std::string& source_address = "");

// HELLO with `token` on a fresh connection must be refused with a fatal ERROR `code` and the
// connection closed. Returns the error.
v1::Error ExpectHelloRefused(const ServerProcess& server, const std::string& token,
                             StatusCode code = StatusCode::kUnauthenticated,
                             const std::string& source_address = "");

// Logs `user` in on a fresh connection and runs catch-up to SYNC_DONE.
std::unique_ptr<TestClient> LoggedIn(const ServerProcess& server, uint64_t user,
                                     const std::string& source_address = "");

// Two fresh users exchange a message (SEND -> SEND_ACK, DELIVER); fails the test otherwise.
// `user_base` must not collide with users of the calling test.
void ExpectServerServes(const ServerProcess& server, uint64_t user_base);

// A plain TCP connection to 127.0.0.1:port (blocking); -1 on failure.
int ConnectTcp(uint16_t port);
// Reads and discards until EOF or a reset, within `timeout_ms`. True when the peer closed.
bool WaitTcpEof(int fd, int timeout_ms);

// The value of one series of the admin listener's /metrics ("name" or "name{labels}"), or
// nullopt when absent or unreachable.
std::optional<double> Metric(const ServerProcess& server, const std::string& series);

// Runs argv as a child with stdin on /dev/null, stdout and stderr captured, killed after
// `timeout_ms`. Returns the wait status (-1 when it could not run) and sets *output.
int RunBounded(const std::vector<std::string>& argv, int timeout_ms, std::string* output);

// A frame with an arbitrary opcode and payload bytes.
std::string RawFrame(uint8_t opcode, std::string_view payload);

}  // namespace iris::testing
