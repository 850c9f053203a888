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
// Deferred responses: a route registered with RouteDeferred() hands its handler an
// HttpResponder instead of expecting a response back, so slow work (a write to etcd) runs
// elsewhere while the poll loop keeps serving other clients. The connection stays open until
// the responder completes (from any thread; the response is handed to the server's thread)
// or the route's deadline passes, when the server answers 503 itself and a later Complete()
// is refused.
//
// Thread-safety: Route() and RouteDeferred() must be called before Start(). Start() and
// Stop() are called from one controlling thread (not from a handler). port() and
// open_connections() may be called from any thread; HttpResponder::Complete() too.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"
#include "net/http/http_message.h"

namespace iris::net::http {

using Handler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer;

// The pending answer to one request of a deferred route. Thread-safe; shared by the server
// and whoever completes it, and may outlive both the connection and the server.
class HttpResponder {
 public:
  // Sends `response` on the request's connection (from the server's thread, soon after).
  // Returns false, dropping `response`, when the request no longer waits for an answer: it
  // was completed before, answered 503 at the route's deadline, its client went away, or
  // the server stopped. Only the first call can return true.
  bool Complete(HttpResponse response);

 private:
  friend class HttpServer;
  struct Mailbox;
  HttpResponder(std::shared_ptr<Mailbox> mailbox, uint64_t connection_id)
      : mailbox_(std::move(mailbox)), connection_id_(connection_id) {}
  // Marks the request as no longer waiting; false when it was completed first. Server only.
  bool Abandon();

  const std::shared_ptr<Mailbox> mailbox_;
  const uint64_t connection_id_;
  bool done_ = false;  // guarded by mailbox_->mu
};

// A handler of a deferred route: answers through `responder`, now or later, from any
// thread. It runs on the server's thread, so it must not block either.
using DeferredHandler =
    std::function<void(const HttpRequest&, std::shared_ptr<HttpResponder> responder)>;

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
  // As Route(), for a handler that answers later through its HttpResponder. A request not
  // answered within `deadline` of its dispatch gets 503 from the server; a handler that
  // throws before answering gets 500. Precondition: Start() has not been called.
  void RouteDeferred(std::string method, std::string path, DeferredHandler handler,
                     std::chrono::milliseconds deadline);

  // Binds `address` (numeric IPv4 or IPv6, optionally in brackets; "" or "localhost" mean
  // 127.0.0.1) and `port` (0: an ephemeral port, see port()), then starts the thread.
  // Errors: kBadRequest for an unparsable address, kUnavailable when the address cannot be
  // bound (in use, not local), kInternal for other system call failures or a second Start().
  Status Start(const std::string& address = "127.0.0.1", uint16_t port = 0);

  // Closes the listener and every connection (in-flight requests, deferred ones included,
  // are dropped unanswered) and joins the thread; responders still held then refuse their
  // Complete(). Idempotent; a stopped server cannot be started again.
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
  // Answers `request` on `c`, or starts a deferred route's handler and leaves `c` pending.
  // Returns false when the connection is to be closed.
  bool Dispatch(Connection& c, const HttpRequest& request, Clock::time_point now);
  // Sends the responses deferred handlers completed since the last call.
  void DeliverCompleted(Clock::time_point now);
  void CloseConnection(Connection& c);

  struct RouteEntry {
    Handler handler;                        // a plain route, or
    DeferredHandler deferred;               // a deferred one,
    std::chrono::milliseconds deadline{0};  // answered 503 after this
  };

  const HttpServerOptions options_;
  // path -> method -> handler; written only before Start().
  std::map<std::string, std::map<std::string, RouteEntry>, std::less<>> routes_;
  // Where responders leave completed responses; created by Start().
  std::shared_ptr<HttpResponder::Mailbox> mailbox_;
  uint64_t next_connection_id_ = 1;  // server thread only

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
