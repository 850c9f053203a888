// EtcdClient, LeaseKeeper and EtcdWatch against a real etcd.

#include "cluster/etcd_client.h"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>

#include "cluster/pki.h"
#include "cluster/test_util.h"
#include "common/clock.h"
#include "harness/etcd_process.h"

namespace iris::cluster {
namespace {

using iris::testing::EtcdProcess;
using iris::testing::WaitFor;

std::unique_ptr<EtcdClient> ClientFor(const std::string& endpoints) {
  EtcdOptions o;
  o.endpoints = ParseEndpoints(endpoints).value();
  o.request_timeout_ms = 2000;
  return EtcdClient::Create(o).value();
}

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(etcd_.Start());
    client_ = ClientFor(etcd_.endpoint());
  }
  EtcdProcess etcd_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(EtcdClientTest, RangePutDeleteAndTxn) {
  ASSERT_TRUE(client_->Put("/t/a", "1").ok());
  ASSERT_TRUE(client_->Put("/t/b", std::string("\0\xff two", 6)).ok());
  ASSERT_TRUE(client_->Put("/u/c", "3").ok());
  auto r = client_->Range("/t/", /*prefix=*/true);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->kvs.size(), 2u);
  EXPECT_EQ(r->kvs[0].key, "/t/a");
  EXPECT_EQ(r->kvs[0].value, "1");
  EXPECT_EQ(r->kvs[1].value, std::string("\0\xff two", 6));
  EXPECT_GT(r->revision, 0);
  auto one = client_->Range("/t/a");
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->kvs.size(), 1u);

  // Create-if-absent fails on an existing key and runs the else branch.
  auto t = client_->Txn({Compare::Absent("/t/a")}, {TxnOp::Put("/t/a", "x")},
                        {TxnOp::Put("/t/else", "ran")});
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_FALSE(t->succeeded);
  EXPECT_EQ(client_->Range("/t/else")->kvs.at(0).value, "ran");
  // Value and mod-revision compares.
  t = client_->Txn({Compare::ValueEquals("/t/a", "1"),
                    Compare::ModRevisionEquals("/t/a", one->kvs[0].mod_revision)},
                   {TxnOp::Put("/t/a", "2"), TxnOp::Delete("/t/else")});
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->succeeded);
  EXPECT_EQ(client_->Range("/t/a")->kvs.at(0).value, "2");
  EXPECT_TRUE(client_->Range("/t/else")->kvs.empty());
  t = client_->Txn({Compare::VersionEquals("/t/a", 1)}, {TxnOp::Put("/t/a", "3")});
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->succeeded);  // version is 2 now

  auto d = client_->Delete("/t/", /*prefix=*/true);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, 2);
  EXPECT_EQ(client_->Range("/u/c")->kvs.size(), 1u);
}

TEST_F(EtcdClientTest, FailsOverToTheNextEndpoint) {
  // Port 1 on loopback refuses connections; the second endpoint answers.
  auto client = ClientFor("127.0.0.1:1," + etcd_.endpoint());
  for (int i = 0; i < 3; ++i) {
    auto p = client->Put("/f/" + std::to_string(i), "v");
    ASSERT_TRUE(p.ok()) << p.status().ToString();
  }
  auto bad = ClientFor("127.0.0.1:1");
  auto r = bad->Range("/f/", true);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
}

TEST_F(EtcdClientTest, LeaseGrantRevokeAndUnknownLease) {
  auto lease = client_->LeaseGrant(5);
  ASSERT_TRUE(lease.ok()) << lease.status().ToString();
  EXPECT_EQ(lease->ttl_s, 5);
  ASSERT_TRUE(client_->Put("/l/k", "v", lease->id).ok());
  EXPECT_EQ(client_->Range("/l/k")->kvs.at(0).lease, lease->id);
  auto ttl = client_->LeaseKeepAliveOnce(lease->id);
  ASSERT_TRUE(ttl.ok());
  EXPECT_EQ(*ttl, 5);
  ASSERT_TRUE(client_->LeaseRevoke(lease->id).ok());
  EXPECT_TRUE(client_->Range("/l/k")->kvs.empty());  // revoking deletes the lease's keys
  EXPECT_EQ(client_->LeaseKeepAliveOnce(lease->id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client_->LeaseRevoke(lease->id).code(), StatusCode::kNotFound);
}

TEST_F(EtcdClientTest, KeeperKeepsAKeyAlivePastSeveralTtlsAndAStoppedKeeperLetsItLapse) {
  auto lease = client_->LeaseGrant(2);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(client_->Put("/k/alive", "v", lease->id).ok());
  bool lost = false;
  LeaseKeeper keeper(*client_, *lease, [&] { lost = true; });
  keeper.Start();
  // The keeper renews every TTL/3: six renewals span at least two TTLs, and without them
  // the key would be gone after one. The key is checked at every poll meanwhile.
  int64_t missing_at_renewal = -1;
  const bool renewed = WaitFor(
      [&] {
        const int64_t n = keeper.renewals();
        if (missing_at_renewal < 0 && client_->Range("/k/alive")->kvs.empty()) {
          missing_at_renewal = n;
        }
        return n >= 6 || keeper.lost();
      },
      20'000);
  ASSERT_TRUE(renewed) << "the keeper renewed " << keeper.renewals() << " times";
  EXPECT_EQ(missing_at_renewal, -1) << "the key was gone after renewal " << missing_at_renewal;
  EXPECT_GE(keeper.renewals(), 6);
  EXPECT_EQ(client_->Range("/k/alive")->kvs.size(), 1u);
  EXPECT_FALSE(keeper.lost());
  keeper.Stop();
  EXPECT_TRUE(WaitFor([&] { return client_->Range("/k/alive")->kvs.empty(); }, 10'000));
  EXPECT_FALSE(lost);  // a stopped keeper reports nothing
}

TEST_F(EtcdClientTest, KeeperReportsALostLease) {
  auto lease = client_->LeaseGrant(3);
  ASSERT_TRUE(lease.ok());
  std::atomic<int> lost{0};
  LeaseKeeper keeper(*client_, *lease, [&] { ++lost; });
  keeper.Start();
  ASSERT_TRUE(client_->LeaseRevoke(lease->id).ok());
  EXPECT_TRUE(WaitFor([&] { return lost.load() == 1; }, 10'000));
  EXPECT_TRUE(keeper.lost());
}

// Collects watch events by revision.
struct Seen {
  std::mutex mu;
  std::vector<std::pair<int64_t, std::string>> events;  // (mod_revision, key)
  int connects = 0, disconnects = 0;
  int64_t compacted = 0;
  EtcdWatch::Callbacks Callbacks() {
    EtcdWatch::Callbacks cb;
    cb.on_events = [this](const std::vector<WatchEvent>& ev, int64_t) {
      std::lock_guard<std::mutex> l(mu);
      for (const auto& e : ev) events.emplace_back(e.kv.mod_revision, e.kv.key);
    };
    cb.on_connection = [this](bool up) {
      std::lock_guard<std::mutex> l(mu);
      (up ? connects : disconnects)++;
    };
    cb.on_compacted = [this](int64_t rev) {
      std::lock_guard<std::mutex> l(mu);
      compacted = rev;
    };
    return cb;
  }
  size_t count() {
    std::lock_guard<std::mutex> l(mu);
    return events.size();
  }
};

TEST_F(EtcdClientTest, WatchResumesAfterAnEtcdRestartWithoutMissingOrRepeatingEvents) {
  const int64_t start = client_->Range("/w/", true)->revision + 1;
  Seen seen;
  EtcdWatch watch(*client_, "/w/", start, seen.Callbacks());
  watch.Start();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.connects == 1;
  }));
  std::vector<std::string> written;
  for (int i = 0; i < 5; ++i) {
    written.push_back("/w/before-" + std::to_string(i));
    ASSERT_TRUE(client_->Put(written.back(), "v").ok());
  }
  ASSERT_TRUE(client_->Put("/other/ignored", "v").ok());
  ASSERT_TRUE(WaitFor([&] { return seen.count() == 5; }));
  etcd_.Stop(SIGKILL);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.disconnects == 1;
  }));
  ASSERT_TRUE(etcd_.Start());
  // Written while the watcher is still disconnected (it reconnects with backoff).
  for (int i = 0; i < 5; ++i) {
    written.push_back("/w/during-" + std::to_string(i));
    ASSERT_TRUE(client_->Put(written.back(), "v").ok());
  }
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.connects == 2;
  }));
  for (size_t i = 0; i < 5; ++i) {  // after the reconnection: deletes of the first keys
    const std::string key = written[i];
    ASSERT_TRUE(client_->Delete(key).ok());
    written.push_back(key);
  }
  ASSERT_TRUE(WaitFor([&] { return seen.count() >= written.size(); }));
  watch.Stop();
  std::lock_guard<std::mutex> l(seen.mu);
  ASSERT_EQ(seen.events.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ(seen.events[i].second, written[i]) << i;
    if (i > 0) {
      EXPECT_GT(seen.events[i].first, seen.events[i - 1].first) << i;
    }
  }
}

TEST_F(EtcdClientTest, WatchNoticesAnUnresponsiveEtcdAndResumesWhenItAnswersAgain) {
  const int64_t start = client_->Range("/s/", true)->revision + 1;
  Seen seen;
  EtcdWatch watch(*client_, "/s/", start, seen.Callbacks());
  watch.Start();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.connects == 1;
  }));
  ASSERT_TRUE(client_->Put("/s/1", "v").ok());
  ASSERT_TRUE(WaitFor([&] { return seen.count() == 1; }));
  etcd_.Signal(SIGSTOP);  // no FIN, no RST: the stream just goes silent
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.disconnects == 1;
  }));
  etcd_.Signal(SIGCONT);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.connects == 2;
  }));
  ASSERT_TRUE(client_->Put("/s/2", "v").ok());
  ASSERT_TRUE(WaitFor([&] { return seen.count() == 2; }));
  watch.Stop();
  std::lock_guard<std::mutex> l(seen.mu);
  EXPECT_EQ(seen.events[1].second, "/s/2");
}

TEST_F(EtcdClientTest, WatchReportsCompactionSoTheCallerReReads) {
  const int64_t start = client_->Range("/c/", true)->revision + 1;
  int64_t last = 0;
  for (int i = 0; i < 4; ++i) last = client_->Put("/c/k", std::to_string(i)).value();
  ASSERT_TRUE(client_->Compact(last).ok());
  Seen seen;
  EtcdWatch watch(*client_, "/c/", start, seen.Callbacks());
  watch.Start();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.compacted != 0;
  }));
  watch.Stop();
  std::lock_guard<std::mutex> l(seen.mu);
  EXPECT_EQ(seen.compacted, last);
  EXPECT_TRUE(seen.events.empty());
}

// etcd replaced by one with a shorter history (restored from an older snapshot, or wiped):
// the revision a watch would resume from is far ahead of etcd's, so waiting for it would
// wait forever. The watch reports it like a compaction and the caller re-reads.
TEST_F(EtcdClientTest, WatchReportsAnEtcdWhoseHistoryWentBack) {
  int64_t last = 0;
  for (int i = 0; i < 20; ++i) last = client_->Put("/h/k", std::to_string(i)).value();
  Seen seen;
  EtcdWatch watch(*client_, "/h/", last + 1, seen.Callbacks());
  watch.Start();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.connects > 0;
  }));
  etcd_.Stop();
  std::filesystem::remove_all(etcd_.dir() + "/data");  // a new etcd: revision 1
  ASSERT_TRUE(etcd_.Start());
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(seen.mu);
    return seen.compacted != 0;
  })) << "the watch kept waiting for revision "
      << last + 1;
  watch.Stop();
  std::lock_guard<std::mutex> l(seen.mu);
  EXPECT_LT(seen.compacted, last);  // the new etcd's revision, for the caller's re-read
  EXPECT_TRUE(seen.events.empty());
}

int Sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// TLS to etcd with client certificates (--etcd-ca/--etcd-cert/--etcd-key): the CA and the
// client certificate come from IssueNodeCertificate, the server certificate (SAN
// IP:127.0.0.1) from the openssl command.
TEST(EtcdClientTlsTest, TalksToEtcdOverTlsWithAClientCertificateAndRefusesAnotherCa) {
  EtcdProcess etcd;
  const std::string d = etcd.dir() + "/pki";
  auto issued = IssueNodeCertificate(d, 1);
  ASSERT_TRUE(issued.ok()) << issued.status().ToString();
  {
    std::ofstream ext(d + "/ext.cnf");
    ext << "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
  }
  ASSERT_EQ(Sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + d +
               "/srv.key -subj /CN=etcd -out " + d + "/srv.csr"),
            0);
  ASSERT_EQ(Sh("openssl x509 -req -in " + d + "/srv.csr -CA " + d + "/ca.crt -CAkey " + d +
               "/ca.key -CAcreateserial -days 1 -extfile " + d + "/ext.cnf -out " + d + "/srv.crt"),
            0);
  etcd.EnableTls(d + "/srv.crt", d + "/srv.key", d + "/ca.crt", issued->node_cert,
                 issued->node_key);
  ASSERT_TRUE(etcd.Start());
  EtcdOptions o;
  o.endpoints = {etcd.endpoint()};
  o.tls = {issued->ca_cert, issued->node_cert, issued->node_key};
  auto client = EtcdClient::Create(o).value();
  ASSERT_TRUE(client->Put("/tls/k", "v").ok());
  EXPECT_EQ(client->Range("/tls/k")->kvs.at(0).value, "v");

  // A client that trusts another CA refuses the server.
  auto other = IssueNodeCertificate(etcd.dir() + "/other", 1);
  ASSERT_TRUE(other.ok());
  o.tls = {other->ca_cert, other->node_cert, other->node_key};
  auto stranger = EtcdClient::Create(o).value();
  EXPECT_EQ(stranger->Range("/tls/k").status().code(), StatusCode::kUnavailable);
  o.tls = {"/nonexistent/ca.crt", "", ""};
  EXPECT_EQ(EtcdClient::Create(o).status().code(), StatusCode::kBadRequest);
}

TEST(EtcdClientUnitTest, EndpointsAndBase64) {
  EXPECT_EQ(ParseEndpoints("a:1, b:2").value(), (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(ParseEndpoints("").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ParseEndpoints("hostonly").status().code(), StatusCode::kBadRequest);
  for (const std::string& s :
       std::vector<std::string>{"", "f", "fo", "foo", "foob", std::string("\0\xff\x10", 3)}) {
    EXPECT_EQ(Base64Decode(Base64Encode(s)).value(), s);
  }
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(PrefixEnd("/a/"), "/a0");
}

}  // namespace
}  // namespace iris::cluster
