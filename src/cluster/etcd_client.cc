#include "cluster/etcd_client.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "obs/log.h"

namespace iris::cluster {

using obs::LogError;
using obs::LogInfo;
using obs::LogWarn;
namespace {

using nlohmann::json;

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

// The gateway writes int64 fields as JSON strings; absent means 0.
int64_t Int(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return 0;
  if (it->is_string()) return std::strtoll(it->get<std::string>().c_str(), nullptr, 10);
  if (it->is_number_integer()) return it->get<int64_t>();
  return 0;
}

KeyValue ParseKv(const json& j) {
  KeyValue kv;
  kv.key = Base64Decode(j.value("key", "")).value_or("");
  kv.value = Base64Decode(j.value("value", "")).value_or("");
  kv.create_revision = Int(j, "create_revision");
  kv.mod_revision = Int(j, "mod_revision");
  kv.version = Int(j, "version");
  kv.lease = Int(j, "lease");
  return kv;
}

json OpJson(const TxnOp& op) {
  if (op.type == TxnOp::Type::kPut) {
    json p = {{"key", Base64Encode(op.key)}, {"value", Base64Encode(op.value)}};
    if (op.lease != 0) p["lease"] = std::to_string(op.lease);
    return {{"request_put", p}};
  }
  return {{"request_delete_range", {{"key", Base64Encode(op.key)}}}};
}

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

std::string Base64Encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v =
        (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::optional<std::string> Base64Decode(std::string_view in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+' || c == '-')
      v = 62;
    else if (c == '/' || c == '_')
      v = 63;
    else if (c == '=') {
      ++pad;
      continue;
    } else {
      return std::nullopt;
    }
    if (pad != 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (pad > 2) return std::nullopt;
  return out;
}

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

Result<std::vector<std::string>> ParseEndpoints(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    std::string ep = text.substr(start, comma - start);
    while (!ep.empty() && ep.front() == ' ') ep.erase(0, 1);
    while (!ep.empty() && ep.back() == ' ') ep.pop_back();
    if (!ep.empty()) {
      if (ep.find(':') == std::string::npos) {
        return BadRequest("etcd endpoint '" + ep + "' needs a port (host:port)");
      }
      out.push_back(ep);
    }
    start = comma + 1;
  }
  if (out.empty()) return BadRequest("--etcd needs at least one host:port endpoint");
  return out;
}

Compare Compare::ValueEquals(std::string key, std::string value) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::kValue;
  c.value = std::move(value);
  return c;
}
Compare Compare::Absent(std::string key) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::kCreateRevision;
  c.number = 0;
  return c;
}
Compare Compare::ModRevisionEquals(std::string key, int64_t rev) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::kModRevision;
  c.number = rev;
  return c;
}
Compare Compare::VersionEquals(std::string key, int64_t version) {
  Compare c;
  c.key = std::move(key);
  c.target = Target::kVersion;
  c.number = version;
  return c;
}

Result<std::unique_ptr<EtcdClient>> EtcdClient::Create(EtcdOptions options) {
  if (options.endpoints.empty()) return BadRequest("no etcd endpoints");
  IRIS_ASSIGN_OR_RETURN(auto tls, MakeClientTlsContext(options.tls));
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(options), std::move(tls)));
}

EtcdClient::EtcdClient(EtcdOptions options, std::shared_ptr<SSL_CTX> tls)
    : options_(std::move(options)), tls_(std::move(tls)) {}

EtcdClient::~EtcdClient() = default;

std::unique_ptr<HttpConnection> EtcdClient::NewConnection(size_t* endpoint_index) {
  std::lock_guard<std::mutex> lock(mu_);
  *endpoint_index = current_;
  return std::make_unique<HttpConnection>(options_.endpoints[current_], tls_);
}

void EtcdClient::EndpointFailed(size_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (current_ == index) {
    current_ = (current_ + 1) % options_.endpoints.size();
    idle_.clear();
  }
}

Result<std::string> EtcdClient::Call(const std::string& path, const std::string& body) {
  const int64_t deadline = NowMs() + options_.request_timeout_ms;
  const size_t n = options_.endpoints.size();
  Status last = Unavailable("etcd unreachable");
  for (size_t attempt = 0; attempt < n; ++attempt) {
    const int64_t now = NowMs();
    if (now >= deadline) break;
    // Leave time for the remaining endpoints.
    const int64_t attempt_deadline = now + (deadline - now) / static_cast<int64_t>(n - attempt);
    std::unique_ptr<HttpConnection> conn;
    size_t index;
    {
      std::lock_guard<std::mutex> lock(mu_);
      index = current_;
      if (!idle_.empty()) {
        conn = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!conn) conn = std::make_unique<HttpConnection>(options_.endpoints[index], tls_);
    auto resp = conn->Post(path, body, attempt_deadline);
    if (!resp.ok()) {
      last = Unavailable(resp.status().message());
      EndpointFailed(index);
      continue;
    }
    if (conn->connected()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (index == current_ && idle_.size() < 4) idle_.push_back(std::move(conn));
    }
    if (resp->status == 200) return std::move(resp->body);
    // A gRPC status in JSON: {"error","message","code"}.
    const json err = json::parse(resp->body, nullptr, false);
    const int64_t code = err.is_object() ? err.value("code", int64_t{2}) : 2;
    const std::string msg = err.is_object() ? err.value("message", resp->body) : resp->body;
    if (code == 5) return NotFound("etcd: " + msg);
    if (code == 14 || code == 4 || code == 10) {
      // UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED: this member cannot serve now.
      last = Unavailable("etcd: " + msg);
      EndpointFailed(index);
      continue;
    }
    if (code == 3 || code == 11) return BadRequest("etcd: " + msg);
    return Internal("etcd " + path + " failed (HTTP " + std::to_string(resp->status) + "): " + msg);
  }
  return last;
}

namespace {
Result<json> ParseObject(Result<std::string> text) {
  if (!text.ok()) return text.status();
  json j = json::parse(*text, nullptr, false);
  if (!j.is_object()) return Internal("etcd answered with malformed JSON");
  return j;
}
}  // namespace

Result<RangeResult> EtcdClient::Range(const std::string& key, bool prefix) {
  json req = {{"key", Base64Encode(key)}};
  if (prefix) req["range_end"] = Base64Encode(PrefixEnd(key));
  IRIS_ASSIGN_OR_RETURN(json j, ParseObject(Call("/v3/kv/range", req.dump())));
  RangeResult r;
  r.revision = Int(j.value("header", json::object()), "revision");
  for (const auto& kv : j.value("kvs", json::array())) r.kvs.push_back(ParseKv(kv));
  return r;
}

Result<int64_t> EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) {
  json req = {{"key", Base64Encode(key)}, {"value", Base64Encode(value)}};
  if (lease != 0) req["lease"] = std::to_string(lease);
  IRIS_ASSIGN_OR_RETURN(json j, ParseObject(Call("/v3/kv/put", req.dump())));
  return Int(j.value("header", json::object()), "revision");
}

Result<int64_t> EtcdClient::Delete(const std::string& key, bool prefix) {
  json req = {{"key", Base64Encode(key)}};
  if (prefix) req["range_end"] = Base64Encode(PrefixEnd(key));
  IRIS_ASSIGN_OR_RETURN(json j, ParseObject(Call("/v3/kv/deleterange", req.dump())));
  return Int(j, "deleted");
}

Result<TxnResult> EtcdClient::Txn(const std::vector<Compare>& compares,
                                  const std::vector<TxnOp>& then_ops,
                                  const std::vector<TxnOp>& else_ops) {
  json cmp = json::array();
  for (const Compare& c : compares) {
    json x = {{"key", Base64Encode(c.key)}};
    static const char* kOps[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
    x["result"] = kOps[static_cast<int>(c.op)];
    switch (c.target) {
      case Compare::Target::kValue:
        x["target"] = "VALUE";
        x["value"] = Base64Encode(c.value);
        break;
      case Compare::Target::kVersion:
        x["target"] = "VERSION";
        x["version"] = std::to_string(c.number);
        break;
      case Compare::Target::kModRevision:
        x["target"] = "MOD";
        x["mod_revision"] = std::to_string(c.number);
        break;
      case Compare::Target::kCreateRevision:
        x["target"] = "CREATE";
        x["create_revision"] = std::to_string(c.number);
        break;
    }
    cmp.push_back(std::move(x));
  }
  json success = json::array(), failure = json::array();
  for (const TxnOp& op : then_ops) success.push_back(OpJson(op));
  for (const TxnOp& op : else_ops) failure.push_back(OpJson(op));
  const json req = {{"compare", cmp}, {"success", success}, {"failure", failure}};
  IRIS_ASSIGN_OR_RETURN(json j, ParseObject(Call("/v3/kv/txn", req.dump())));
  TxnResult r;
  r.succeeded = j.value("succeeded", false);
  r.revision = Int(j.value("header", json::object()), "revision");
  return r;
}

Result<Lease> EtcdClient::LeaseGrant(int64_t ttl_s) {
  if (ttl_s <= 0) return BadRequest("lease TTL must be positive");
  const json req = {{"TTL", std::to_string(ttl_s)}, {"ID", "0"}};
  IRIS_ASSIGN_OR_RETURN(json j, ParseObject(Call("/v3/lease/grant", req.dump())));
  if (j.contains("error") && !j["error"].get<std::string>().empty()) {
    return Unavailable("etcd lease grant: " + j["error"].get<std::string>());
  }
  Lease l{Int(j, "ID"), Int(j, "TTL")};
  if (l.id == 0) return Internal("etcd granted no lease id");
  return l;
}

Result<int64_t> EtcdClient::LeaseKeepAliveOnce(int64_t lease_id) {
  const json req = {{"ID", std::to_string(lease_id)}};
  // A streaming call in gRPC; the gateway answers one request body with one result.
  IRIS_ASSIGN_OR_RETURN(std::string text, Call("/v3/lease/keepalive", req.dump()));
  const size_t nl = text.find('\n');
  json j = json::parse(nl == std::string::npos ? text : text.substr(0, nl), nullptr, false);
  if (!j.is_object() || !j.contains("result")) {
    if (j.is_object() && j.contains("error")) {
      return Unavailable("etcd keepalive: " + j["error"].value("message", std::string()));
    }
    return Internal("etcd keepalive answered with malformed JSON");
  }
  const int64_t ttl = Int(j["result"], "TTL");
  if (ttl <= 0) return NotFound("lease " + std::to_string(lease_id) + " expired");
  return ttl;
}

Status EtcdClient::LeaseRevoke(int64_t lease_id) {
  const json req = {{"ID", std::to_string(lease_id)}};
  auto r = Call("/v3/lease/revoke", req.dump());
  return r.status();
}

Status EtcdClient::Compact(int64_t revision) {
  const json req = {{"revision", std::to_string(revision)}, {"physical", true}};
  return Call("/v3/kv/compaction", req.dump()).status();
}

// ---------------------------------------------------------------------------------------------

LeaseKeeper::LeaseKeeper(EtcdClient& client, Lease lease, std::function<void()> on_lost)
    : client_(client), lease_(lease), on_lost_(std::move(on_lost)) {}

LeaseKeeper::~LeaseKeeper() { Stop(); }

void LeaseKeeper::Start() {
  thread_ = std::thread([this] { Run(); });
}

void LeaseKeeper::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LeaseKeeper::Run() {
  const int64_t ttl_ms = std::max<int64_t>(lease_.ttl_s, 1) * 1000;
  const int64_t interval_ms = std::max<int64_t>(ttl_ms / 3, 100);
  int64_t last_ok = NowMs();
  int64_t wait_ms = interval_ms;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, std::chrono::milliseconds(wait_ms), [this] { return stop_; })) return;
    }
    auto r = client_.LeaseKeepAliveOnce(lease_.id);
    if (r.ok()) {
      last_ok = NowMs();
      renewals_.fetch_add(1);
      wait_ms = interval_ms;
      continue;
    }
    const bool gone = r.status().code() == StatusCode::kNotFound;
    if (!gone && NowMs() - last_ok < ttl_ms) {
      wait_ms = std::min<int64_t>(interval_ms, 250);  // retry sooner while time remains
      continue;
    }
    LogWarn("etcd lease lost", {{"lease", lease_.id}, {"reason", r.status().message()}});
    lost_ = true;
    if (on_lost_) on_lost_();
    return;
  }
}

// ---------------------------------------------------------------------------------------------

EtcdWatch::EtcdWatch(EtcdClient& client, std::string prefix, int64_t start_revision,
                     Callbacks callbacks)
    : client_(client),
      prefix_(std::move(prefix)),
      next_revision_(start_revision),
      callbacks_(std::move(callbacks)) {}

EtcdWatch::~EtcdWatch() { Stop(); }

void EtcdWatch::Start() {
  thread_ = std::thread([this] { Run(); });
}

void EtcdWatch::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EtcdWatch::Run() {
  int64_t backoff_ms = 100;
  while (!stop_) {
    const int64_t started = NowMs();
    if (!RunStream()) return;
    if (stop_) return;
    if (NowMs() - started > 5000) backoff_ms = 100;  // it had been working for a while
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [this] { return stop_.load(); });
    backoff_ms = std::min<int64_t>(backoff_ms * 2, 2000);
  }
}

bool EtcdWatch::RunStream() {
  size_t index = 0;
  std::unique_ptr<HttpConnection> conn = client_.NewConnection(&index);
  const json req = {{"create_request",
                     {{"key", Base64Encode(prefix_)},
                      {"range_end", Base64Encode(PrefixEnd(prefix_))},
                      {"start_revision", std::to_string(next_revision_.load())}}}};
  int status = 0;
  Status s = conn->StartStream("/v3/watch", req.dump(),
                               NowMs() + client_.options().request_timeout_ms, &status);
  if (!s.ok() || status != 200) {
    client_.EndpointFailed(index);
    return true;
  }
  bool connected = false;
  std::string buf;
  auto disconnected = [&] {
    if (connected && callbacks_.on_connection) callbacks_.on_connection(false);
  };
  // Liveness: a stream that stays silent may be a dead connection (etcd stopped or
  // partitioned away without a FIN/RST). After kIdleProbeMs without a byte, one cheap read
  // through the client must succeed, or the stream is treated as broken and re-established.
  constexpr int64_t kIdleProbeMs = 2000;
  int64_t last_heard = NowMs();
  while (!stop_) {
    const size_t before = buf.size();
    s = conn->ReadSome(&buf, NowMs() + 200);
    if (!s.ok()) {
      client_.EndpointFailed(index);
      disconnected();
      return true;
    }
    if (buf.size() != before) {
      last_heard = NowMs();
    } else if (NowMs() - last_heard >= kIdleProbeMs) {
      if (!client_.Range(prefix_).ok()) {
        LogWarn("etcd watch: etcd does not answer; re-establishing the stream",
                {{"prefix", prefix_}});
        client_.EndpointFailed(index);
        disconnected();
        return true;
      }
      last_heard = NowMs();
    }
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      const std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      const json j = json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("result")) {
        // {"error": ...}: the member failed the stream; reconnect.
        disconnected();
        return true;
      }
      const json& r = j["result"];
      if (r.value("created", false) && !connected) {
        // etcd's history went back (restored from an older snapshot, or wiped): the
        // revision to resume from will not come for a long time, and what it then brings is
        // another history. Treated as compaction: the caller re-reads everything.
        const int64_t current = r.contains("header") ? Int(r["header"], "revision") : int64_t{0};
        if (current > 0 && current + 1 < next_revision_.load()) {
          LogError(
              "etcd watch: etcd's revision is behind what was already seen (etcd was "
              "restored or replaced); re-reading",
              {{"prefix", prefix_}, {"revision", current}, {"seen", next_revision_.load() - 1}});
          if (callbacks_.on_compacted) callbacks_.on_compacted(current);
          return false;
        }
        connected = true;
        if (callbacks_.on_connection) callbacks_.on_connection(true);
      }
      if (r.value("canceled", false)) {
        const int64_t compact = Int(r, "compact_revision");
        disconnected();
        if (compact > 0) {
          LogWarn("etcd watch: revision compacted; caller re-reads",
                  {{"prefix", prefix_}, {"compact_revision", compact}});
          if (callbacks_.on_compacted) callbacks_.on_compacted(compact);
          return false;
        }
        return true;
      }
      auto events = r.find("events");
      if (events == r.end() || !events->is_array() || events->empty()) continue;
      std::vector<WatchEvent> out;
      int64_t last = 0;
      for (const auto& e : *events) {
        WatchEvent ev;
        ev.type = e.value("type", std::string("PUT")) == "DELETE" ? WatchEvent::Type::kDelete
                                                                  : WatchEvent::Type::kPut;
        ev.kv = ParseKv(e.value("kv", json::object()));
        last = std::max(last, ev.kv.mod_revision);
        out.push_back(std::move(ev));
      }
      // Skip anything already delivered (cannot happen with a correct start revision; a
      // guard for exactly-once across reconnects).
      const int64_t next = next_revision_.load();
      out.erase(std::remove_if(out.begin(), out.end(),
                               [&](const WatchEvent& ev) { return ev.kv.mod_revision < next; }),
                out.end());
      if (out.empty()) continue;
      next_revision_ = last + 1;
      if (callbacks_.on_events) callbacks_.on_events(out, last);
    }
  }
  return false;
}

}  // namespace iris::cluster
