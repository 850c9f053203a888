#pragma once
// EtcdClient: the operations Iris needs from etcd v3 (KV range/put/delete/txn, leases,
// watches), spoken over etcd's JSON gateway (/v3/kv/range, /v3/kv/txn, /v3/lease/*,
// /v3/watch; keys and values base64 in JSON).
//
// Why the gateway and not gRPC: etcd 3.4 serves the same API as JSON over HTTP/1.1 on the
// client port, so one small blocking HTTP client (http_client.h) covers everything without
// protobuf/gRPC code generation or a gRPC runtime in irisd; the few calls Iris makes per
// second (lease renewals, placement changes, one watch stream) do not need gRPC's
// multiplexing.
//
// Endpoints: a comma-separated list ("127.0.0.1:2379,127.0.0.1:22379"). A request that cannot
// reach the current endpoint is tried on the next one (within the request's timeout); the
// endpoint that answered becomes the current one.
//
// Retries: a request whose connection fails is sent again (on a fresh connection or the next
// endpoint) within its timeout, so a write may be applied twice when an answer was lost.
// Puts and deletes are idempotent; callers of Txn re-check the outcome when it matters (the
// controller looks for its own lease on the key it failed to create).
//
// Errors: UNAVAILABLE (retryable) when no endpoint answered in time; NOT_FOUND for a missing
// lease; BAD_REQUEST for bad options; INTERNAL for an answer etcd should not give.
//
// Thread-safety: EtcdClient is thread-safe (each call takes an idle connection from a small
// pool). Every call blocks for up to the request timeout: call it only from cluster threads,
// never from an event loop. LeaseKeeper and EtcdWatch each own a thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster/http_client.h"
#include "common/status.h"

namespace iris::cluster {

struct EtcdOptions {
  std::vector<std::string> endpoints;  // host:port each
  TlsFiles tls;                        // --etcd-ca / --etcd-cert / --etcd-key
  int request_timeout_ms = 3000;
};

// "a:1,b:2" -> {"a:1","b:2"}; BAD_REQUEST when empty.
Result<std::vector<std::string>> ParseEndpoints(const std::string& comma_separated);

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;  // the store revision the range was read at
};

// One comparison of a transaction.
struct Compare {
  enum class Target { kValue, kVersion, kModRevision, kCreateRevision };
  enum class Op { kEqual, kNotEqual, kGreater, kLess };
  std::string key;
  Target target = Target::kValue;
  Op op = Op::kEqual;
  std::string value;   // for kValue
  int64_t number = 0;  // for the others (0 create_revision: the key does not exist)

  static Compare ValueEquals(std::string key, std::string value);
  static Compare Absent(std::string key);  // create_revision == 0
  static Compare ModRevisionEquals(std::string key, int64_t rev);
  static Compare VersionEquals(std::string key, int64_t version);
};

struct TxnOp {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  std::string key;
  std::string value;
  int64_t lease = 0;
  static TxnOp Put(std::string key, std::string value, int64_t lease = 0) {
    return {Type::kPut, std::move(key), std::move(value), lease};
  }
  static TxnOp Delete(std::string key) { return {Type::kDelete, std::move(key), {}, 0}; }
};

struct TxnResult {
  bool succeeded = false;
  int64_t revision = 0;
};

struct Lease {
  int64_t id = 0;
  int64_t ttl_s = 0;
};

// A watch event (PUT or DELETE); `kv.value` is empty for a delete.
struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;
};

// Standard base64 (RFC 4648 §4, padded), as the gateway wants keys and values.
std::string Base64Encode(std::string_view bytes);
std::optional<std::string> Base64Decode(std::string_view text);
// The end of the range of every key starting with `prefix` (etcd's "prefix" range_end).
std::string PrefixEnd(const std::string& prefix);

class EtcdClient {
 public:
  // BAD_REQUEST for no endpoints or unusable TLS files.
  static Result<std::unique_ptr<EtcdClient>> Create(EtcdOptions options);
  ~EtcdClient();

  const EtcdOptions& options() const { return options_; }

  Result<RangeResult> Range(const std::string& key, bool prefix = false);
  // Returns the revision of the put.
  Result<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0);
  // Returns how many keys were deleted.
  Result<int64_t> Delete(const std::string& key, bool prefix = false);
  Result<TxnResult> Txn(const std::vector<Compare>& compares, const std::vector<TxnOp>& then_ops,
                        const std::vector<TxnOp>& else_ops = {});
  Result<Lease> LeaseGrant(int64_t ttl_s);
  // One renewal: the lease's new TTL; NOT_FOUND when the lease has expired or was revoked.
  Result<int64_t> LeaseKeepAliveOnce(int64_t lease_id);
  // NOT_FOUND when the lease no longer exists.
  Status LeaseRevoke(int64_t lease_id);
  // Compacts the key-value history up to `revision` (tests use it to exercise watch
  // compaction handling).
  Status Compact(int64_t revision);

  // POST `body` to `path` on the current endpoint, failing over to the others; the parsed
  // JSON text of a 200 answer. Used by the calls above.
  Result<std::string> Call(const std::string& path, const std::string& body);

  // A fresh, unpooled connection to the current endpoint (the watcher's stream).
  std::unique_ptr<HttpConnection> NewConnection(size_t* endpoint_index);
  // Marks endpoint `index` as failed so the next connection tries the following one.
  void EndpointFailed(size_t index);

 private:
  EtcdClient(EtcdOptions options, std::shared_ptr<SSL_CTX> tls);

  const EtcdOptions options_;
  const std::shared_ptr<SSL_CTX> tls_;
  std::mutex mu_;
  size_t current_ = 0;                                 // guarded by mu_
  std::vector<std::unique_ptr<HttpConnection>> idle_;  // guarded by mu_
};

// LeaseKeeper renews one lease every TTL/3 on its own thread until Stop(). When a renewal
// says the lease is gone, or no renewal succeeded for a whole TTL since the last success
// (etcd unreachable), it calls `on_lost` once (on the keeper's thread) and stops renewing.
// The keeper does not revoke the lease: Stop() just stops renewing (the lease then lapses
// after its TTL); revoke it with EtcdClient::LeaseRevoke for a prompt goodbye.
class LeaseKeeper {
 public:
  LeaseKeeper(EtcdClient& client, Lease lease, std::function<void()> on_lost);
  ~LeaseKeeper();
  void Start();
  void Stop();  // waits for the thread; idempotent
  bool lost() const { return lost_.load(); }
  // Renewals etcd has accepted since Start(). Thread-safe.
  int64_t renewals() const { return renewals_.load(); }
  const Lease& lease() const { return lease_; }

 private:
  void Run();
  EtcdClient& client_;
  const Lease lease_;
  std::function<void()> on_lost_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::atomic<bool> lost_{false};
  std::atomic<int64_t> renewals_{0};
  std::thread thread_;
};

// EtcdWatch follows every change under a key prefix from a start revision, on its own
// thread, across disconnects: after a broken stream it reconnects (next endpoint, backoff
// 100 ms doubling to 2 s) and resumes from the revision after the last event it delivered,
// so each event is delivered exactly once, in revision order. When etcd has compacted the
// revision it needs, it calls `on_compacted(compact_revision)` and stops: the caller
// re-reads (Range) and starts a new watch from that read's revision + 1.
//
// A stream silent for 2 s is checked with one read through the client; when that fails the
// stream counts as broken (on_connection(false)) and is re-established, so a stopped or
// partitioned etcd is noticed within about 2 s plus the request timeout.
//
// Callbacks run on the watch thread, one at a time.
class EtcdWatch {
 public:
  struct Callbacks {
    // Events of one revision batch, in order; `revision` is the last one's.
    std::function<void(const std::vector<WatchEvent>&, int64_t revision)> on_events;
    std::function<void(int64_t compact_revision)> on_compacted;
    // The stream is established (true) or broken (false).
    std::function<void(bool connected)> on_connection;
  };
  EtcdWatch(EtcdClient& client, std::string prefix, int64_t start_revision, Callbacks callbacks);
  ~EtcdWatch();
  void Start();
  void Stop();  // waits for the thread; idempotent; no callback runs after it returns
  // The revision the next (re)connection resumes from.
  int64_t next_revision() const { return next_revision_.load(); }

 private:
  void Run();
  // One stream until it breaks or Stop(); false when the watch must end (compaction).
  bool RunStream();

  EtcdClient& client_;
  const std::string prefix_;
  std::atomic<int64_t> next_revision_;
  Callbacks callbacks_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace iris::cluster
