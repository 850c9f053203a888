// rpc: RemoteCore <-> CoreServer over real sockets on loopback. Peer links use mutual TLS 1.3
// with certificates made for the test by the openssl command line (a cluster CA
// "iris-cluster-ca", node certificates with CN iris-node-<id>, and a second CA). Covers: a
// call and a push round trip; refusal of a client without a certificate, with a
// certificate from another CA, and with a hello claiming another node than its
// certificate; a client refusing a server that is not the node it dialled; per-call
// deadlines; the write-queue bound against a peer that stops reading; link loss failing
// pending calls.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "net/listener.h"
#include "net/peer_tls.h"
#include "net/tls.h"
#include "rpc/core_server.h"
#include "rpc/remote_core.h"
#include "support/wait_for.h"

namespace iris::rpc {
namespace {

namespace fs = std::filesystem;
namespace ipb = internal::v1;
using SteadyClock = std::chrono::steady_clock;
constexpr auto kDeadline = std::chrono::seconds(20);

bool WaitFor(const std::function<bool()>& done) {
  return testing::PollUntil(done, std::chrono::milliseconds(kDeadline).count());
}

int Run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// A temporary PKI: dir/ca.{crt,key} (CN iris-cluster-ca), dir/node-<id>.{crt,key} signed
// by it, and dir/other/ (another CA "other-ca" with its own node-1 certificate).
class Pki {
 public:
  Pki() {
    char tmpl[] = "/tmp/iris-rpc-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    fs::create_directories(dir_ + "/other");
    ok_ = MakeCa(dir_, "iris-cluster-ca") && MakeCa(dir_ + "/other", "other-ca");
    for (uint32_t id : {1u, 2u, 3u}) ok_ = ok_ && MakeNode(dir_, id);
    ok_ = ok_ && MakeNode(dir_ + "/other", 1);
  }
  ~Pki() { fs::remove_all(dir_); }
  bool ok() const { return ok_; }
  net::PeerTlsConfig Node(uint32_t id) const { return In(dir_, id); }
  net::PeerTlsConfig OtherCaNode(uint32_t id) const {
    net::PeerTlsConfig c = In(dir_ + "/other", id);
    c.ca_file = dir_ + "/ca.crt";  // trusts the cluster CA, but holds a foreign certificate
    return c;
  }
  std::string ca() const { return dir_ + "/ca.crt"; }

 private:
  static net::PeerTlsConfig In(const std::string& d, uint32_t id) {
    const std::string n = d + "/node-" + std::to_string(id);
    return net::PeerTlsConfig{d + "/ca.crt", n + ".crt", n + ".key"};
  }
  static bool MakeCa(const std::string& d, const std::string& cn) {
    return Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
               " -keyout " +
               d + "/ca.key -out " + d + "/ca.crt -days 2 -subj /CN=" + cn) == 0;
  }
  static bool MakeNode(const std::string& d, uint32_t id) {
    const std::string name = "iris-node-" + std::to_string(id);
    const std::string n = d + "/node-" + std::to_string(id);
    std::ofstream(n + ".ext") << "subjectAltName=DNS:" << name << "\nbasicConstraints=CA:FALSE\n"
                              << "extendedKeyUsage=serverAuth,clientAuth\n";
    return Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
               " -keyout " +
               n + ".key -out " + n + ".csr -subj /CN=" + name) == 0 &&
           Run("openssl x509 -req -in " + n + ".csr -CA " + d + "/ca.crt -CAkey " + d +
               "/ca.key -CAcreateserial -days 2 -out " + n + ".crt -extfile " + n + ".ext") == 0;
  }
  std::string dir_;
  bool ok_ = false;
};

// A core that answers sends at once (message id 42) or holds them unanswered, and records
// registered session refs.
class FakeCore final : public core::CoreApi {
 public:
  std::atomic<bool> hold_sends{false};
  std::mutex mu;
  std::vector<core::SessionRef> registered;    // mu
  std::vector<core::SessionRef> reregistered;  // mu
  std::vector<SendDone> held;                // mu

  void RegisterSession(uint64_t, core::SessionRef ref) override {
    std::lock_guard<std::mutex> lock(mu);
    registered.push_back(ref);
  }
  void ReRegisterSession(uint64_t, core::SessionRef ref) override {
    std::lock_guard<std::mutex> lock(mu);
    reregistered.push_back(ref);
  }
  void UnregisterSession(uint64_t, core::SessionRef, const core::RateDebt&) override {}
  bool Typing(uint64_t, const v1::Typing&) override { return true; }
  void Unsubscribe(const core::SessionRef&, const std::vector<uint64_t>&) override {}
  core::PressureReport ReportPressure(double, int64_t) override { return {}; }
  void Send(uint64_t, const v1::Send& send, const std::string&, SendDone done, uint64_t) override {
    if (hold_sends.load()) {
      std::lock_guard<std::mutex> lock(mu);
      held.push_back(std::move(done));
      return;
    }
    done(core::AppendResult{42, 1000 + send.body().size(), false});
  }
  void Receipt(uint64_t, const v1::Receipt&, SendDone done) override { done(Internal("n/a")); }
  void UpdateSettings(uint64_t, const v1::Settings&, StatusDone done) override {
    done(Status::Ok());
  }
  void Subscribe(const core::SessionRef&, const std::vector<uint64_t>&,
                 PresenceDone done) override {
    done(std::vector<v1::Presence>{});
  }
  void QueryPresence(const std::vector<uint64_t>&, PresenceDone done) override {
    done(std::vector<v1::Presence>{});
  }
  void UploadKeys(uint64_t, const v1::KeysUpload&, StatusDone done) override { done(Status::Ok()); }
  void FetchKeys(uint64_t, KeysDone done) override { done(NotFound("no keys")); }
  void CreateGroup(uint64_t, const v1::GroupCreate&, GroupDone done) override {
    done(NotFound("n/a"));
  }
  void UpdateGroup(uint64_t, const v1::GroupUpdate&, GroupDone done) override {
    done(NotFound("n/a"));
  }
  void GetGroup(uint64_t, uint64_t, GroupDone done) override { done(NotFound("n/a")); }
  void Scan(uint64_t, uint64_t, uint32_t, size_t, PageDone done) override { done(core::Page{}); }
  void History(uint64_t, uint64_t, uint32_t, size_t, PageDone done) override { done(core::Page{}); }
  size_t registered_count() {
    std::lock_guard<std::mutex> lock(mu);
    return registered.size();
  }
  size_t held_count() {
    std::lock_guard<std::mutex> lock(mu);
    return held.size();
  }
};

// Records the pushes that reach a node.
class RecordingSink final : public core::EdgeSink {
 public:
  std::mutex mu;
  std::vector<std::pair<core::SessionRef, v1::Envelope>> delivered;  // mu
  void Deliver(const core::SessionRef& to, const v1::Envelope& e) override {
    std::lock_guard<std::mutex> lock(mu);
    delivered.emplace_back(to, e);
  }
  void Replace(const core::SessionRef&) override {}
  void SettleRate(const core::SessionRef&, uint64_t, const core::RateDebt&) override {}
  void SendPresence(const core::SessionRef&, const v1::Presence&) override {}
  void SendTyping(const core::SessionRef&, const v1::Typing&) override {}
  size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return delivered.size();
  }
};

// The outcome of one asynchronous send.
struct SendResult {
  std::mutex mu;
  std::optional<Result<core::AppendResult>> r;
  core::CoreApi::SendDone Done() {
    return [this](Result<core::AppendResult> x) {
      std::lock_guard<std::mutex> lock(mu);
      r.emplace(std::move(x));
    };
  }
  bool ready() {
    std::lock_guard<std::mutex> lock(mu);
    return r.has_value();
  }
};

class RpcPeerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pki_.ok()) << "the openssl command line could not make the test PKI";
    server_.set_core(&core_);
    server_.set_on_replication([this](NodeId from, const ipb::ReplicationMessage& m) {
      std::lock_guard<std::mutex> lock(replication_mu_);
      replication_.emplace_back(from, m);
    });
    ASSERT_TRUE(server_.ListenPeers("127.0.0.1:0", pki_.Node(2), 2).ok());
    ASSERT_TRUE(server_.Start().ok());
    address_ = "127.0.0.1:" + std::to_string(server_.peer_port());
  }
  void TearDown() override { server_.Stop(); }

 public:
  std::unique_ptr<net::PeerTlsContext> Context(const net::PeerTlsConfig& c) {
    auto ctx = net::PeerTlsContext::Create(c);
    EXPECT_TRUE(ctx.ok()) << ctx.status().ToString();
    return ctx.ok() ? std::move(*ctx) : nullptr;
  }

  Pki pki_;
  FakeCore core_;
  CoreServer server_;
  std::string address_;
  std::mutex replication_mu_;
  std::vector<std::pair<NodeId, ipb::ReplicationMessage>> replication_;
};

// Replication messages travel one way over a peer link and arrive with the node the link
// authenticated, whatever the message says.
TEST_F(RpcPeerTest, ReplicationMessagesArriveFromTheLinksAuthenticatedNode) {
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  RemoteCore a(/*process_index=*/0);
  ASSERT_TRUE(a.ConnectPeer(address_, *tls, 2, 1, {}, 10'000).ok());
  for (uint64_t lsn = 1; lsn <= 3; ++lsn) {
    ipb::ReplicationMessage m;
    m.set_shard(4);
    m.mutable_ship_batch()->set_epoch(7);
    m.mutable_ship_batch()->mutable_batch()->set_lsn(lsn);
    m.mutable_ship_batch()->mutable_batch()->set_payload("batch " + std::to_string(lsn));
    a.SendReplication(m);
  }
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(replication_mu_);
    return replication_.size() == 3;
  }));
  std::lock_guard<std::mutex> lock(replication_mu_);
  for (uint64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(replication_[i].first, 1u);
    EXPECT_EQ(replication_[i].second.shard(), 4u);
    EXPECT_EQ(replication_[i].second.ship_batch().batch().lsn(), i + 1);
    EXPECT_EQ(replication_[i].second.ship_batch().batch().payload(),
              "batch " + std::to_string(i + 1));
  }
  a.Stop();
}

TEST_F(RpcPeerTest, CallAndPushRoundTripOverMutualTls) {
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  RecordingSink sink;
  RemoteCore a(/*process_index=*/3);
  RemoteCore::PushHandler h;
  h.sink = &sink;
  const Status up = a.ConnectPeer(address_, *tls, /*expected_node=*/2, /*my_node=*/1, h, 10'000);
  ASSERT_TRUE(up.ok()) << up.ToString();
  EXPECT_TRUE(WaitFor([&] { return server_.connected_peers() == 1; }));

  // A call: node 1 calls node 2's CoreApi.
  SendResult res;
  v1::Send send;
  send.set_recipient(8);
  send.set_body("hello");
  a.Send(7, send, "", res.Done());
  ASSERT_TRUE(WaitFor([&] { return res.ready(); }));
  ASSERT_TRUE(res.r->ok()) << res.r->status().ToString();
  EXPECT_EQ((*res.r)->message_id, 42u);
  EXPECT_EQ((*res.r)->accepted_at_ms, 1005u);

  // A session registered over the link is stamped with the calling node...
  a.RegisterSession(7, core::SessionRef{.node = 0, .edge = (3u << 8) | 1, .session = 99});
  ASSERT_TRUE(WaitFor([&] { return core_.registered_count() == 1; }));
  const core::SessionRef ref = core_.registered[0];
  EXPECT_EQ(ref.node, 1u);
  EXPECT_EQ(ref.session, 99u);
  // A registration asked again travels as such (not as a new registration).
  a.ReRegisterSession(7, core::SessionRef{.node = 0, .edge = (3u << 8) | 1, .session = 99});
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(core_.mu);
    return core_.reregistered.size() == 1;
  }));
  EXPECT_EQ(core_.reregistered[0], ref);
  EXPECT_EQ(core_.registered_count(), 1u);

  // ...so node 2's push for it goes back over the link node 1 opened.
  v1::Envelope e;
  e.set_id(5);
  e.set_body("pushed");
  server_.Deliver(ref, e);
  ASSERT_TRUE(WaitFor([&] { return sink.count() == 1; }));
  EXPECT_EQ(sink.delivered[0].first.session, 99u);
  EXPECT_EQ(sink.delivered[0].first.edge, (3u << 8) | 1);
  EXPECT_EQ(sink.delivered[0].second.body(), "pushed");
  // A push for a node without a link goes nowhere.
  server_.Deliver(core::SessionRef{.node = 9, .edge = 3u << 8, .session = 99}, e);
  a.Stop();
}

TEST_F(RpcPeerTest, RefusesClientWithoutCertificate) {
  // An OpenSSL client that trusts the cluster CA but presents no certificate.
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ASSERT_NE(ctx, nullptr);
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  ASSERT_EQ(SSL_CTX_load_verify_locations(ctx, pki_.ca().c_str(), nullptr), 1);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server_.peer_port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{10, 0};  // a server that neither answers nor refuses fails the test, not hangs it
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set1_host(ssl, "iris-node-2");
  // TLS 1.3: the client finishes its side first; the server's refusal arrives as an alert.
  const int hs = SSL_connect(ssl);
  std::string error;
  if (hs == 1) {
    char buf[256];
    const int r = SSL_read(ssl, buf, sizeof(buf));
    EXPECT_LE(r, 0) << "the server answered a client without a certificate";
  }
  error = net::OpenSslError();
  EXPECT_NE(error.find("certificate required"), std::string::npos) << error;
  EXPECT_EQ(server_.connected_peers(), 0u);
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);
}

TEST_F(RpcPeerTest, RefusesCertificateFromAnotherCa) {
  auto tls = Context(pki_.OtherCaNode(1));
  ASSERT_NE(tls, nullptr);
  RemoteCore a(0);
  const Status s = a.ConnectPeer(address_, *tls, 2, 1, {}, 10'000);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("unknown ca"), std::string::npos) << s.ToString();
  EXPECT_EQ(server_.connected_peers(), 0u);
}

TEST_F(RpcPeerTest, RefusesHelloClaimingAnotherNodeThanItsCertificate) {
  auto tls = Context(pki_.Node(3));  // a valid certificate of node 3...
  ASSERT_NE(tls, nullptr);
  RemoteCore a(0);
  std::atomic<int> lost{0};
  RemoteCore::PushHandler h;
  h.on_link_lost = [&] { lost.fetch_add(1); };
  const Status s = a.ConnectPeer(address_, *tls, 2, /*my_node=*/1, h, 10'000);  // ...claims 1
  EXPECT_EQ(s.code(), StatusCode::kForbidden) << s.ToString();
  EXPECT_NE(s.message().find("names node 3 but the hello claims node 1"), std::string::npos)
      << s.ToString();
  EXPECT_EQ(server_.connected_peers(), 0u);
  // The refused link is closed: calls on it fail at once.
  SendResult res;
  a.Send(1, v1::Send{}, "", res.Done());
  ASSERT_TRUE(res.ready());
  EXPECT_EQ(res.r->status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(lost.load(), 0);  // a link that never came up is not reported lost

  // The same certificate claiming its own id is accepted.
  RemoteCore b(0);
  const Status ok = b.ConnectPeer(address_, *tls, 2, 3, {}, 10'000);
  EXPECT_TRUE(ok.ok()) << ok.ToString();
}

TEST_F(RpcPeerTest, ClientRefusesServerThatIsNotTheDialledNode) {
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  RemoteCore a(0);
  // The server at address_ is node 2; dialling it as node 3 must fail the name check.
  const Status s = a.ConnectPeer(address_, *tls, /*expected_node=*/3, 1, {}, 10'000);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("certificate verify failed"), std::string::npos) << s.ToString();
  EXPECT_EQ(server_.connected_peers(), 0u);
}

TEST_F(RpcPeerTest, CallPastItsDeadlineFailsUnavailable) {
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  core_.hold_sends = true;  // node 2 never answers
  RemoteCoreOptions options;
  options.call_timeout_ms = 200;
  RemoteCore a(0, options);
  ASSERT_TRUE(a.ConnectPeer(address_, *tls, 2, 1, {}, 10'000).ok());
  SendResult res;
  a.Send(1, v1::Send{}, "", res.Done());
  ASSERT_TRUE(WaitFor([&] { return res.ready(); }));
  EXPECT_EQ(res.r->status().code(), StatusCode::kUnavailable) << res.r->status().ToString();
  EXPECT_NE(res.r->status().message().find("no answer within 200 ms"), std::string::npos);
  EXPECT_TRUE(a.link_up());  // a late call does not end the link
  ASSERT_TRUE(WaitFor([&] { return core_.held_count() == 1; }));
  // The late answer is dropped (the completion ran once already).
  core::CoreApi::SendDone late;
  {
    std::lock_guard<std::mutex> lock(core_.mu);
    late = core_.held[0];
  }
  late(core::AppendResult{1, 1, false});
  // The link still carries calls.
  core_.hold_sends = false;
  SendResult next;
  a.Send(1, v1::Send{}, "", next.Done());
  ASSERT_TRUE(WaitFor([&] { return next.ready(); }));
  EXPECT_TRUE(next.r->ok()) << next.r->status().ToString();
}

TEST_F(RpcPeerTest, LinkLossFailsPendingCalls) {
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  core_.hold_sends = true;
  std::atomic<int> lost{0};
  RemoteCore::PushHandler h;
  h.on_link_lost = [&] { lost.fetch_add(1); };
  RemoteCore a(0);
  ASSERT_TRUE(a.ConnectPeer(address_, *tls, 2, 1, h, 10'000).ok());
  SendResult res;
  a.Send(1, v1::Send{}, "", res.Done());
  ASSERT_TRUE(WaitFor([&] { return core_.held_count() == 1; }));
  server_.Stop();  // node 2 goes away with the call unanswered
  ASSERT_TRUE(WaitFor([&] { return res.ready(); }));
  EXPECT_EQ(res.r->status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(WaitFor([&] { return lost.load() == 1; }));
  EXPECT_FALSE(a.link_up());
}

constexpr size_t kQueueBound = 1u << 20;

// What streaming sends into a link that stops draining came to.
struct StreamOutcome {
  int issued = 0;                // sends issued (at most 1024 of 64 KiB: far more than the
                                 // socket buffers and the bound together can hold)
  bool link_up_after = true;     // the link was still up after the last send
  bool all_answered = false;     // every send's callback ran within the deadline
  int unavailable = 0;           // sends that failed with UNAVAILABLE
  int other = 0;                 // sends answered any other way
  bool lost_once = false;        // on_link_lost ran exactly once within the deadline
  size_t peak_queued_bytes = 0;  // the most the link's write queue held
};

// Issues 64 KiB sends on `rc` while its link is up; then waits for every answer and for
// `lost` (counted by the on_link_lost handler given to `rc`) to reach 1. `rc`'s link must
// have max_queued_bytes = kQueueBound.
StreamOutcome StreamSendsUntilLinkDown(RemoteCore& rc, const std::atomic<int>& lost) {
  StreamOutcome out;
  std::atomic<int> failed{0};
  std::atomic<int> other{0};
  v1::Send send;
  send.set_recipient(2);
  send.set_body(std::string(64u << 10, 'x'));
  while (rc.link_up() && out.issued < 1024) {
    rc.Send(1, send, "", [&](Result<core::AppendResult> r) {
      (r.status().code() == StatusCode::kUnavailable ? failed : other).fetch_add(1);
    });
    ++out.issued;
  }
  out.link_up_after = rc.link_up();
  out.all_answered = WaitFor([&] { return failed.load() + other.load() == out.issued; });
  out.unavailable = failed.load();
  out.other = other.load();
  out.lost_once = WaitFor([&] { return lost.load() == 1; });
  out.peak_queued_bytes = rc.link()->peak_queued_bytes();
  return out;
}

RemoteCoreOptions BoundedQueueOptions() {
  RemoteCoreOptions options;
  options.link.max_queued_bytes = kQueueBound;
  return options;
}

// What a run against a TLS peer that stops reading came to.
struct StalledTlsPeerRun {
  Status connected = Internal("not run");  // RemoteCore::ConnectPeer to the stalled node
  StreamOutcome stream;
  bool peer_saw_end = false;  // the stalled node read the end of the TLS stream
};

// Over mutual TLS: a node that accepts the hello and then stops reading (or, with
// `close_after_hello`, goes away). Sends stream to it until the link ends. Fatal failures
// (the test PKI, the listener) are reported through gtest; wrap the call in
// ASSERT_NO_FATAL_FAILURE.
void RunAgainstAPeerThatStopsReading(RpcPeerTest& t, bool close_after_hello,
                                     StalledTlsPeerRun* run) {
  auto server_tls = t.Context(t.pki_.Node(2));
  auto client_tls = t.Context(t.pki_.Node(1));
  ASSERT_NE(server_tls, nullptr);
  ASSERT_NE(client_tls, nullptr);
  Result<int> listen_fd = net::ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(listen_fd.ok());
  const int lfd = *listen_fd;
  fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL, 0) & ~O_NONBLOCK);
  const uint16_t port = *net::LocalPort(lfd);
  std::atomic<bool> client_done{false};
  std::atomic<bool> connected{false};
  std::atomic<bool> saw_end{false};
  // The stalled node: handshake, answer the hello, then read nothing until the client
  // reports its link down; then drain and expect the end of the stream.
  std::thread stalled([&] {
    const int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    const int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    SSL* ssl = server_tls->NewServer(fd);
    auto read_full = [&](char* p, size_t n) {
      while (n > 0) {
        const int r = SSL_read(ssl, p, static_cast<int>(n));
        if (r <= 0) return false;
        p += r;
        n -= static_cast<size_t>(r);
      }
      return true;
    };
    char head[4];
    if (SSL_accept(ssl) == 1 && read_full(head, 4)) {
      uint32_t n = 0;
      for (char c : head) n = (n << 8) | static_cast<uint8_t>(c);
      std::string body(n, '\0');
      internal::v1::CoreRequest hello;
      if (read_full(body.data(), n) && hello.ParseFromString(body)) {
        internal::v1::CoreMessage ok;
        ok.set_call_id(hello.call_id());
        ok.mutable_status()->set_code(0);
        std::string frame(4, '\0');
        ok.AppendToString(&frame);
        frame[3] = static_cast<char>(frame.size() - 4);
        SSL_write(ssl, frame.data(), static_cast<int>(frame.size()));
        if (close_after_hello) {
          WaitFor([&] { return connected.load(); });
          saw_end = true;
          SSL_free(ssl);
          close(fd);
          return;
        }
        WaitFor([&] { return client_done.load(); });
        char buf[65536];
        int r;
        while ((r = SSL_read(ssl, buf, sizeof(buf))) > 0) {
        }
        saw_end = true;
      }
    }
    SSL_free(ssl);
    close(fd);
  });

  RemoteCore a(0, BoundedQueueOptions());
  std::atomic<int> lost{0};
  RemoteCore::PushHandler h;
  h.on_link_lost = [&] { lost.fetch_add(1); };
  run->connected = a.ConnectPeer("127.0.0.1:" + std::to_string(port), *client_tls, 2, 1, h, 10'000);
  connected = true;
  if (run->connected.ok()) run->stream = StreamSendsUntilLinkDown(a, lost);
  a.Stop();
  client_done = true;
  stalled.join();
  run->peer_saw_end = saw_end.load();
  close(lfd);
}

// A node that stops reading: sends keep coming until the link ends; every call fails with
// UNAVAILABLE, the write queue never passes its bound, and the node sees the end.
TEST_F(RpcPeerTest, StalledPeerOverTlsClosesLinkAtTheQueueBound) {
  StalledTlsPeerRun run;
  ASSERT_NO_FATAL_FAILURE(RunAgainstAPeerThatStopsReading(*this, false, &run));
  ASSERT_TRUE(run.connected.ok()) << run.connected.ToString();
  const StreamOutcome& s = run.stream;
  EXPECT_FALSE(s.link_up_after) << "the link outlived " << s.issued << " sends to a stalled peer";
  EXPECT_TRUE(s.all_answered) << s.unavailable + s.other << " of " << s.issued << " answered";
  EXPECT_EQ(s.unavailable, s.issued);
  EXPECT_TRUE(s.lost_once);
  EXPECT_LE(s.peak_queued_bytes, kQueueBound);
  EXPECT_TRUE(run.peer_saw_end);  // the stalled node sees the link end
}

// A TLS peer that goes away while calls stream to it: the link ends (whichever of the read
// and write sides notices first), every call fails with UNAVAILABLE, and the process
// survives (nothing in this test ignores SIGPIPE).
TEST_F(RpcPeerTest, PeerThatGoesAwayFailsStreamingCalls) {
  StalledTlsPeerRun run;
  ASSERT_NO_FATAL_FAILURE(RunAgainstAPeerThatStopsReading(*this, true, &run));
  ASSERT_TRUE(run.connected.ok()) << run.connected.ToString();
  ASSERT_TRUE(run.peer_saw_end) << "the peer never went away";
  EXPECT_FALSE(run.stream.link_up_after)
      << "the link outlived " << run.stream.issued << " sends to a peer that went away";
  EXPECT_TRUE(run.stream.all_answered);
  EXPECT_EQ(run.stream.other, 0);
  EXPECT_EQ(run.stream.unavailable, run.stream.issued);
  EXPECT_TRUE(run.stream.lost_once);
}

// Figures (printed, not asserted): 20,000 pipelined sends of 100-byte bodies over the mTLS
// link and over a Unix-socket link, all answered OK.
TEST_F(RpcPeerTest, PipelinedCallsFigures) {
  CoreServer local;
  local.set_core(&core_);
  char tmpl[] = "/tmp/iris-link-fig-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  ASSERT_TRUE(local.Listen(dir + "/core.sock").ok());
  ASSERT_TRUE(local.Start().ok());
  auto tls = Context(pki_.Node(1));
  ASSERT_NE(tls, nullptr);
  RemoteCore over_tls(0);
  ASSERT_TRUE(over_tls.ConnectPeer(address_, *tls, 2, 1, {}, 10'000).ok());
  RemoteCore over_unix(0);
  ASSERT_TRUE(over_unix.Connect(dir + "/core.sock", 5'000).ok());
  over_unix.Start({});
  constexpr int kCalls = 20'000;
  v1::Send send;
  send.set_recipient(2);
  send.set_body(std::string(100, 'x'));
  for (auto [name, rc] : {std::pair<const char*, RemoteCore*>{"mTLS TCP", &over_tls},
                          std::pair<const char*, RemoteCore*>{"Unix socket", &over_unix}}) {
    std::atomic<int> ok{0};
    std::atomic<int> bad{0};
    const auto start = SteadyClock::now();
    for (int i = 0; i < kCalls; ++i) {
      rc->Send(1, send, "",
               [&](Result<core::AppendResult> r) { (r.ok() ? ok : bad).fetch_add(1); });
    }
    ASSERT_TRUE(WaitFor([&] { return ok.load() + bad.load() == kCalls; }));
    const double secs = std::chrono::duration<double>(SteadyClock::now() - start).count();
    EXPECT_EQ(bad.load(), 0);
    std::printf(
        "[ figures  ] %s: %d pipelined calls in %.3f s (%.0f calls/s), peak queue %zu bytes\n",
        name, kCalls, secs, kCalls / secs, rc->link()->peak_queued_bytes());
  }
  over_tls.Stop();
  over_unix.Stop();
  local.Stop();
  fs::remove_all(dir);
}

TEST(PeerTlsTest, BadCertificateFilesGiveAClearError) {
  auto ctx = net::PeerTlsContext::Create(
      net::PeerTlsConfig{"/nonexistent/ca.crt", "/nonexistent/n.crt", "/nonexistent/n.key"});
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(ctx.status().message().find("--peer-cert /nonexistent/n.crt"), std::string::npos)
      << ctx.status().ToString();
}

// A peer that stops reading: the Unix-socket link to a listener that never accepts fills
// the socket buffers, then the write queue reaches its bound; the link closes, every
// pending call fails with UNAVAILABLE, and the queue never held more than the bound.
TEST(LinkTest, StalledPeerClosesLinkAtTheQueueBound) {
  char tmpl[] = "/tmp/iris-link-test-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string path = dir + "/core.sock";
  const int listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listen_fd, 4), 0);

  RemoteCore rc(0, BoundedQueueOptions());
  ASSERT_TRUE(rc.Connect(path, 5'000).ok());
  std::atomic<int> lost{0};
  RemoteCore::PushHandler h;
  h.on_link_lost = [&] { lost.fetch_add(1); };
  rc.Start(h);

  const StreamOutcome s = StreamSendsUntilLinkDown(rc, lost);
  EXPECT_FALSE(s.link_up_after) << "the link outlived " << s.issued << " sends to a stalled peer";
  ASSERT_TRUE(s.all_answered);
  EXPECT_EQ(s.other, 0);
  EXPECT_EQ(s.unavailable, s.issued);
  EXPECT_TRUE(s.lost_once);
  EXPECT_LE(s.peak_queued_bytes, kQueueBound);

  // The other side sees the link end: what was written, then end of stream.
  rc.Stop();  // (only matters when the check above failed: a link still up never ends)
  const int fd = accept(listen_fd, nullptr, nullptr);
  ASSERT_GE(fd, 0);
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
  }
  EXPECT_EQ(n, 0);
  close(fd);
  close(listen_fd);
  fs::remove_all(dir);
}

// The link's frame decoder (TakeLinkFrames, what Link::ReadFrames runs on each read; also
// the core of iris_link_fuzz): complete frames in order, an incomplete one left for the next
// read, an early stop, and an oversized header refused after the frames before it.
TEST(LinkFramesTest, HandsOutCompleteFramesAndRefusesOversizedOnes) {
  auto frame = [](std::string_view body) {
    std::string out(4, '\0');
    for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(body.size() >> (8 * (3 - i)));
    return out + std::string(body);
  };
  std::vector<std::string> got;
  auto collect = [&got](std::string_view f) {
    got.emplace_back(f);
    return true;
  };
  const std::string two = frame("ab") + frame("");
  const std::string partial = frame("xyz").substr(0, 5);

  Result<size_t> r = TakeLinkFrames(two + partial, collect);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, two.size());  // the incomplete frame stays
  EXPECT_EQ(got, (std::vector<std::string>{"ab", ""}));

  got.clear();
  r = TakeLinkFrames(two, [&got](std::string_view f) {
    got.emplace_back(f);
    return false;  // e.g. the handler closed the link
  });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 6u);
  EXPECT_EQ(got, std::vector<std::string>{"ab"});

  got.clear();
  const std::string oversized("\x01\x00\x00\x01", 4);  // kMaxLinkMessageBytes + 1
  r = TakeLinkFrames(frame("ok") + oversized + frame("never"), collect);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(r.status().message().find("oversized frame of 16777217 bytes"), std::string::npos);
  EXPECT_EQ(got, std::vector<std::string>{"ok"});

  std::string at_limit(4, '\0');
  at_limit[0] = 1;  // exactly kMaxLinkMessageBytes: waits for the body
  r = TakeLinkFrames(at_limit, collect);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 0u);
}

}  // namespace
}  // namespace iris::rpc

namespace iris::rpc {
namespace {

// Liveness (LinkOptions::keepalive_ms / dead_after_ms): a link writes empty frames while it
// has nothing to say, the receiving link drops them (no message), and a link that hears
// nothing for dead_after_ms ends with a clear reason: a peer that vanished without a reset
// is seen in seconds, not when TCP gives up.
TEST(LinkKeepaliveTest, EmptyFramesKeepALinkAliveAndSilenceEndsIt) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  LinkOptions o;
  o.keepalive_ms = 20;
  o.dead_after_ms = 400;
  std::mutex mu;
  std::vector<std::string> messages;
  std::atomic<bool> closed{false};
  std::string reason;
  Link::Handlers h;
  h.on_message = [&](std::string_view frame) {
    std::lock_guard<std::mutex> lock(mu);
    messages.emplace_back(frame);
  };
  h.on_close = [&](const Status& why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      reason = why.message();
    }
    closed.store(true);
  };
  auto link = std::make_shared<Link>(sv[0], MakePlainTransport(sv[0]), o, h);
  ASSERT_TRUE(link->Start().ok());

  // The link's keepalives arrive on the raw side as frames of length zero.
  const int raw = sv[1];
  std::string got;
  ASSERT_TRUE(iris::testing::PollUntil([&] {
    char buf[64];
    const ssize_t n = recv(raw, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<size_t>(n));
    return got.size() >= 8;
  }, 10'000));
  EXPECT_EQ(got.substr(0, 8), std::string(8, '\0'));

  // An empty frame from the raw side is not a message; the frame after it is.
  const std::string frames = std::string(4, '\0') + std::string("\0\0\0\3abc", 7);
  ASSERT_EQ(write(raw, frames.data(), frames.size()), static_cast<ssize_t>(frames.size()));
  ASSERT_TRUE(iris::testing::PollUntil([&] {
    std::lock_guard<std::mutex> lock(mu);
    return !messages.empty();
  }, 10'000));
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(messages.size(), 1u);
    EXPECT_EQ(messages[0], "abc");
  }

  // The raw side says nothing more: the link ends on its own, saying why.
  ASSERT_TRUE(iris::testing::PollUntil([&] { return closed.load(); }, 10'000))
      << "a silent peer did not end the link";
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(reason.find("nothing received"), std::string::npos) << reason;
  }
  link->Stop();
  close(raw);
}

}  // namespace
}  // namespace iris::rpc
