#pragma once
// A small HTTP/1.1 server for the admin listener (PROTOCOL.md section 9: /metrics, /healthz,
// /readyz, /v1/revoke).
//
// Concurrency model: one background thread runs a poll() loop over a non-blocking
// listening socket, the open connections and a wake-up eventfd. Handlers run on that thread,
// one at a time, so they must be quick (render metrics, flip a flag, queue work); a slow
// handler delays every other admin client, never the data path.
//
// Hostile input is bounded, not trusted: the request line and headers may take at most
// `max_head_bytes` (431 beyond), a body at most `max_body_bytes` and only with Content-Length
// (413 / 411), anything malformed gets 400, an unknown path 404, a known path with another
// method 405. Each connection must deliver its whole request within `read_timeout` (408
// then close) and take its response within `write_timeout`; at most `max_connections` are
// open at once, and at most `max_connections_per_ip` from one client address, so that one
// address holding idle connections cannot take every slot; a connection over either cap
// is answered 503 and closed at once. Every
// response carries `Connection: close`; after it the server half-closes and discards what
// the client still sends for up to `linger` so that the response is not lost to a reset.
//
// Thread-safety: Route() must be called before Start(). Start() and Stop() are called from
// one controlling thread (not from a handler). port() and open_connections() may be called
// from any thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"
#include "net/http/http_message.h"

namespace iris::net::http {

using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpServerOptions {
  size_t max_head_bytes = 16 * 1024;
  size_t max_body_bytes = 64 * 1024;
  std::chrono::milliseconds read_timeout{10'000};
  std::chrono::milliseconds write_timeout{10'000};
  std::chrono::milliseconds linger{1'000};
  size_t max_connections = 64;
  // Open connections from one client address (IPv4, or IPv6 as a whole address), counted
  // against max_connections as well. 0 is taken as 1.
  size_t max_connections_per_ip = 8;
};

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options = {});
  // Calls Stop().
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Answers `method` on exactly `path` (no prefix matching, query ignored) with `handler`.
  // A later Route() for the same method and path replaces the earlier one. A handler that
  // throws is answered 500. Precondition: Start() has not been called.
  void Route(std::string method, std::string path, Handler handler);

  // Binds `address` (numeric IPv4 or IPv6, optionally in brackets; "" or "localhost" mean
  // 127.0.0.1) and `port` (0: an ephemeral port, see port()), then starts the thread.
  // Errors: kBadRequest for an unparsable address, kUnavailable when the address cannot be
  // bound (in use, not local), kInternal for other system call failures or a second Start().
  Status Start(const std::string& address = "127.0.0.1", uint16_t port = 0);

  // Closes the listener and every connection (in-flight requests are dropped unanswered)
  // and joins the thread. Idempotent; a stopped server cannot be started again.
  void Stop();

  // The bound port; 0 before Start().
  uint16_t port() const { return port_.load(std::memory_order_acquire); }
  // Connections currently open (including those lingering after their response).
  size_t open_connections() const { return open_connections_.load(std::memory_order_relaxed); }

 private:
  struct Connection;
  using Clock = std::chrono::steady_clock;

  void Run();
  // Accepts what is queued; false when out of descriptors (the caller pauses accepting).
  bool AcceptAll(Clock::time_point now);
  // Each returns false when the connection is to be closed.
  bool OnReadable(Connection& c, Clock::time_point now);
  bool OnWritable(Connection& c, Clock::time_point now);
  bool OnDrain(Connection& c);
  // Gives back the per-address slot of a connection being closed.
  void ReleaseSlot(const Connection& c);
  bool Respond(Connection& c, const HttpResponse& response, Clock::time_point now);
  HttpResponse Dispatch(const HttpRequest& request) const;

  const HttpServerOptions options_;
  // path -> method -> handler; written only before Start().
  std::map<std::string, std::map<std::string, Handler>, std::less<>> routes_;

  std::list<Connection> connections_;  // owned by the server thread
  // Client address (without port) -> its open connections; server thread only.
  std::map<std::string, size_t, std::less<>> per_ip_;

  int listen_fd_ = -1;
  int wake_fd_ = -1;
  bool started_ = false;
  std::atomic<bool> stopping_{false};
  std::atomic<uint16_t> port_{0};
  std::atomic<size_t> open_connections_{0};
  std::thread thread_;
};

// Whether `request` carries `Authorization: Bearer <token>` (scheme case-insensitive) whose
// token equals `token`, compared in time independent of where they differ. Always false
// when `token` is empty, so an unset admin token never authorises.
bool CheckBearer(const HttpRequest& request, std::string_view token);

// Compares the contents in time that depends only on the lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace iris::net::http
