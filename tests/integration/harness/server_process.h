#pragma once
// Test harness: a real irisd process on loopback with ephemeral ports and a temporary data
// directory, and a protocol-level test client. Waiting is always on an observable condition
// with a deadline (the banner on the child's stdout, a frame on a socket, waitpid).

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/jwt.h"
#include "iris/client/connection.h"
#include "iris/v1/client.pb.h"
#include "wire/opcode.h"

namespace iris::testing {

class ServerProcess {
 public:
  // Which flags come before `extra_args`.
  enum class Defaults {
    // Tests independent of the production limits that are not under test: loopback exempt
    // from the per-IP connection limit, generous send rates.
    kTestFriendly,
    // Only the ephemeral listeners, the loop count and --exempt-loopback false: every limit
    // is irisd's own default (or what extra_args say) as a remote client meets it, so tests
    // of the per-IP limits can use loopback addresses.
    kProductionLimits,
    // Only the ephemeral listeners and the loop count: irisd exactly as `irisd` starts
    // (loopback exempt from the per-IP limits).
    kIrisdDefaults,
  };
  explicit ServerProcess(std::vector<std::string> extra_args = {},
                         Defaults defaults = Defaults::kTestFriendly);
  ~ServerProcess();

  // Starts irisd and waits (up to 20 s) for its banner. Fails the test on error.
  void Start();
  // Sends `sig` and waits for the process to exit; returns its wait status.
  int Stop(int sig = 15);
  // SIGKILL, then start again on the same data directory.
  void KillAndRestart();
  // Runs irisd with the same arguments when it is expected NOT to start (bad configuration,
  // unsafe files): waits up to `timeout_ms` for it to exit and returns its exit code, with
  // everything it wrote to stdout and stderr in *output. -1 when it was still running at the
  // deadline (it is then killed) or could not be run. Precondition: not running().
  int RunUntilExit(std::string* output, int timeout_ms = 20'000);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  uint16_t port() const { return port_; }
  uint16_t admin_port() const { return admin_port_; }
  const std::string& data_dir() const { return data_dir_; }
  std::string cert_file() const { return data_dir_ + "/tls/server.crt"; }
  // The JWT secret and admin token in force: the files named by --jwt-secret-file and
  // --admin-token-file when given (a cluster's nodes share them), else the generated ones.
  std::string jwt_secret() const;
  std::string admin_token() const;
  // The value given to `flag` in args(), or `fallback`.
  std::string FlagOr(const std::string& flag, const std::string& fallback) const;
  // A valid token for `user` (1 h), or with the given claims.
  std::string Token(uint64_t user) const;
  // A token for `device` of `user` (the `dev` claim; what irisctl token --device mints).
  std::string Token(uint64_t user, uint32_t device) const;
  std::string Token(const auth::Claims& c) const;

  std::vector<std::string>& args() { return args_; }
  // The open-file limit (RLIMIT_NOFILE) irisd starts with, set in the child before exec;
  // hard 0 keeps the inherited hard limit. Takes effect at the next Start().
  void set_open_file_limit(uint64_t soft, uint64_t hard = 0) {
    nofile_soft_ = soft;
    nofile_hard_ = hard;
  }
  // Sends irisd's standard error (its structured log) to `path` (appended) instead of the
  // test's; "" = inherited. Takes effect at the next Start().
  void set_log_file(std::string path) { log_file_ = std::move(path); }
  // Runs irisd in the network namespace at `path` (/run/netns/<name>; setns in the child
  // before exec), its listeners on `host` instead of loopback: the client, admin and (when
  // given) peer listeners bind host:0, the generated certificate names it, and clients
  // (TestClient, the chaos harness) connect to it; `clients` (a CIDR range) is exempt from
  // the per-IP limits, as loopback is otherwise. Takes effect at the next Start().
  void set_network(std::string netns_path, std::string host, const std::string& clients);
  const std::string& host() const { return host_; }
  // Sets `flag`'s value in args(): the existing occurrence is replaced, else appended.
  void SetFlag(const std::string& flag, const std::string& value);

 private:
  std::vector<std::string> args_;
  uint64_t nofile_soft_ = 0;  // 0: inherited
  uint64_t nofile_hard_ = 0;
  std::string log_file_;
  std::string netns_;
  std::string host_ = "127.0.0.1";
  std::string data_dir_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
};

// An HTTP request to the admin listener; returns the status code (-1 on failure).
// One series of the node's /metrics ("name" or "name{labels}"), or nullopt when absent or
// unreachable, read so that it includes everything that happened before the call: with
// --edge-processes the node's /metrics carries the edge processes' series as last scraped,
// so this waits (deadline 10 s) until two more scrape rounds have completed
// (iris_edge_scrape_cycles_total); a single process answers from its registry at once.
std::optional<double> FreshMetric(const ServerProcess& server, const std::string& series);

int AdminRequest(uint16_t port, const std::string& method, const std::string& path,
                 const std::string& bearer, const std::string& body, std::string* response);
// The same to the admin listener at `host` (a node in a network namespace: its lab address).
int AdminRequest(const std::string& host, uint16_t port, const std::string& method,
                 const std::string& path, const std::string& bearer, const std::string& body,
                 std::string* response);

class TestClient {
 public:
  // Connects over TLS 1.3 verifying the server's certificate (CA file).
  static std::unique_ptr<TestClient> Connect(const ServerProcess& server);
  // The same from a given local address (e.g. "127.0.0.2": another client IP on loopback).
  static std::unique_ptr<TestClient> Connect(const ServerProcess& server,
                                             const std::string& source_address);

  // HELLO; returns the first reply frame (WELCOME or ERROR).
  client::ReceivedFrame Hello(const std::string& token, uint64_t cursor = 0,
                              uint32_t page_size = 0);
  // HELLO that must succeed.
  v1::Welcome Login(const ServerProcess& server, uint64_t user, uint64_t cursor = 0,
                    uint32_t page_size = 0);
  // Runs catch-up to SYNC_DONE (acknowledging every page); appends messages to *out.
  // Returns the SYNC_DONE cursor; a test failure (and 0) when TryCatchUp fails.
  uint64_t CatchUp(std::vector<v1::Envelope>* out, int timeout_ms = 20'000);
  // The same without the test failure: nullopt, and why, when a fatal ERROR ends it (the server
  // ends a session whose catch-up it cannot read with a fatal UNAVAILABLE), the connection
  // fails or the deadline passes. Other frames read meanwhile stay for later reads.
  std::optional<uint64_t> TryCatchUp(std::vector<v1::Envelope>* out, int timeout_ms,
                                     std::string* why);

  // SEND; does not wait.
  void SendAsync(uint64_t request_id, uint64_t recipient, const std::string& body,
                 const std::string& idempotency_key, const std::string& trace_id = "");
  // SEND and wait for the reply (SEND_ACK or ERROR).
  client::ReceivedFrame Send(uint64_t request_id, uint64_t recipient, const std::string& body,
                             const std::string& idempotency_key);
  // The next frame of `opcode` (other frames are kept for later reads), or a failed test.
  client::ReceivedFrame Expect(uint8_t opcode, int timeout_ms = 10'000);
  // The next frame, whatever it is.
  Result<client::ReceivedFrame> Next(int timeout_ms = 10'000);
  // Sends a request and returns the frame answering it: the first frame whose opcode is one
  // of `answers`, or an ERROR (frames read before it are dropped). A failed test (and an
  // empty frame) when neither comes within 10 s.
  client::ReceivedFrame Ask(uint8_t opcode, const google::protobuf::MessageLite& m,
                            const std::vector<uint8_t>& answers);
  // The same with the protocol's opcode names.
  client::ReceivedFrame Ask(wire::Opcode opcode, const google::protobuf::MessageLite& m,
                            std::initializer_list<wire::Opcode> answers);

  // Writes `bytes` exactly as given (malformed input, partial frames, bursts in one write).
  Status SendRaw(std::string_view bytes);

  client::Connection& conn() { return *conn_; }

 private:
  std::unique_ptr<client::Connection> conn_;
  std::vector<client::ReceivedFrame> stash_;
};

// A fresh UUIDv7 idempotency key (16 bytes).
std::string NewKey();
// The ERROR in `f` (a failed test when `f` is another frame).
v1::Error ErrorOf(const client::ReceivedFrame& f);

// What a recipient got from one sender that sent the bodies "0", "1", ... "n-1" in that
// order: exactly n messages, body i at position i, ids unique and strictly increasing.
// Success, or every discrepancy found (up to 10).
::testing::AssertionResult DeliveredOnceInOrder(const std::vector<v1::Envelope>& got, int n);
// Success when `c` receives no DELIVER within `timeout_ms` (nothing is delivered twice
// after the last expected message).
::testing::AssertionResult NoFurtherDeliver(TestClient& c, int timeout_ms = 300);

}  // namespace iris::testing
