// A cluster edge's session whose registration the owner of the user's shard never answers
// (the owner dropped it: it did not know yet that it owned the user, as right after a start
// or a failover) asks again until it is answered, so pushes reach it without the client
// reconnecting. The stack is real and in-process: a RocksDB InboxStore, core::Core, an
// edge::Edge with the cluster's rate-debt handshake on, and TLS clients over loopback; the
// only stand-in is a CoreApi that forwards to the real core but drops the first
// registration of each session, as a node that does not own the user yet does.

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "auth/jwt.h"
#include "auth/keyring.h"
#include "auth/revocation.h"
#include "common/clock.h"
#include "common/uuid.h"
#include "core/core.h"
#include "edge/edge.h"
#include "iris/client/connection.h"
#include "net/tls.h"
#include "store/inbox_store.h"
#include "support/forwarding_sink.h"
#include "support/wait_for.h"
#include "wire/messages.h"
#include "wire/opcode.h"

namespace iris {
namespace {

namespace fs = std::filesystem;
using wire::Opcode;

const std::string kSecret = "session-registration-test-secret-0123456789";

using Forward = testing::ForwardingSink;

// The real core behind a link to an owner that drops the first registration of each
// session (ServedCore does so while it does not own the user).
class DropFirstRegistration final : public core::CoreApi {
 public:
  explicit DropFirstRegistration(core::Core& core) : c_(core) {}

  std::atomic<int> dropped{0};
  std::atomic<int> asked_again{0};

  void RegisterSession(uint64_t user, core::SessionRef ref) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (seen_.insert(ref.session).second) {
        ++dropped;
        return;
      }
    }
    c_.RegisterSession(user, ref);
  }
  void ReRegisterSession(uint64_t user, core::SessionRef ref) override {
    ++asked_again;
    c_.ReRegisterSession(user, ref);
  }
  void UnregisterSession(uint64_t user, core::SessionRef ref, const core::RateDebt& d) override {
    c_.UnregisterSession(user, ref, d);
  }
  bool Typing(uint64_t from, const v1::Typing& t) override { return c_.Typing(from, t); }
  void Unsubscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users) override {
    c_.Unsubscribe(ref, users);
  }
  core::PressureReport ReportPressure(double p, int64_t now_ms) override {
    return c_.ReportPressure(p, now_ms);
  }
  void Send(uint64_t sender, const v1::Send& s, const std::string& trace_id, SendDone done,
            uint64_t parent) override {
    c_.Send(sender, s, trace_id, std::move(done), parent);
  }
  void Receipt(uint64_t author, const v1::Receipt& r, SendDone done) override {
    c_.Receipt(author, r, std::move(done));
  }
  void UpdateSettings(uint64_t user, const v1::Settings& s, StatusDone done) override {
    c_.UpdateSettings(user, s, std::move(done));
  }
  void Subscribe(const core::SessionRef& ref, const std::vector<uint64_t>& users,
                 PresenceDone done) override {
    c_.Subscribe(ref, users, std::move(done));
  }
  void QueryPresence(const std::vector<uint64_t>& users, PresenceDone done) override {
    c_.QueryPresence(users, std::move(done));
  }
  void UploadKeys(uint64_t user, const v1::KeysUpload& u, StatusDone done) override {
    c_.UploadKeys(user, u, std::move(done));
  }
  void FetchKeys(uint64_t user, KeysDone done) override { c_.FetchKeys(user, std::move(done)); }
  void CreateGroup(uint64_t owner, const v1::GroupCreate& m, GroupDone done) override {
    c_.CreateGroup(owner, m, std::move(done));
  }
  void UpdateGroup(uint64_t user, const v1::GroupUpdate& m, GroupDone done) override {
    c_.UpdateGroup(user, m, std::move(done));
  }
  void GetGroup(uint64_t user, uint64_t gid, GroupDone done) override {
    c_.GetGroup(user, gid, std::move(done));
  }
  void Scan(uint64_t user, uint64_t after, uint32_t limit, size_t max_bytes,
            PageDone done) override {
    c_.Scan(user, after, limit, max_bytes, std::move(done));
  }
  void History(uint64_t user, uint64_t before, uint32_t limit, size_t max_bytes,
               PageDone done) override {
    c_.History(user, before, limit, max_bytes, std::move(done));
  }

 private:
  core::Core& c_;
  std::mutex mu_;
  std::set<uint64_t> seen_;  // sessions whose first registration was dropped
};

class SessionRegistrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "iris-edge-reg-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(net::GenerateSelfSignedCertificate(dir_ + "/server.crt", dir_ + "/server.key",
                                                   "iris")
                    .ok());
    auto t = net::TlsContext::Server(dir_ + "/server.crt", dir_ + "/server.key");
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tls_ = std::move(t).value();
    ASSERT_TRUE(keyring_.AddKey("", kSecret).ok());
    verifier_ = std::make_unique<auth::TokenVerifier>(keyring_, revocations_, auth::VerifyOptions{});
    store::StoreOptions so;
    so.path = dir_ + "/store";
    auto st = store::InboxStore::Open(so);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    store_ = std::move(st).value();
    core_ = std::make_unique<core::Core>(*store_, forward_, SystemClock::Instance());
    link_ = std::make_unique<DropFirstRegistration>(*core_);
    edge::EdgeOptions eo;
    eo.listen = "127.0.0.1:0";
    eo.loops = 1;
    eo.carry_rate_debt = true;  // a cluster node: a login waits for the owner's answer
    edge_ = std::make_unique<edge::Edge>(eo, *link_, *verifier_, *tls_, SystemClock::Instance());
    forward_.to = edge_.get();
    ASSERT_TRUE(edge_->Start().ok());
  }
  void TearDown() override {
    edge_.reset();
    link_.reset();
    core_.reset();
    store_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::unique_ptr<client::Connection> Login(uint64_t user) {
    client::ConnectOptions o;
    o.port = edge_->port();
    o.ca_file = dir_ + "/server.crt";
    auto c = client::Connection::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    if (!c.ok()) return nullptr;
    auth::Claims claims;
    claims.user_id = user;
    claims.iat = SystemClock::Instance().WallMillis() / 1000 - 10;
    claims.exp = claims.iat + 3600;
    claims.jti = "reg-" + std::to_string(user);
    v1::Hello h;
    h.add_versions(1);
    h.set_token(auth::MintToken(kSecret, claims));
    EXPECT_TRUE((*c)->SendFrame(static_cast<uint8_t>(Opcode::kHello), h).ok());
    auto f = (*c)->ReadFrame(10'000);
    EXPECT_TRUE(f.ok() && f->opcode == static_cast<uint8_t>(Opcode::kWelcome))
        << (f.ok() ? "opcode " + std::to_string(f->opcode) : f.status().ToString());
    return std::move(c).value();
  }

  // The next frame of `opcode`, skipping others; nullopt after the deadline.
  static std::optional<client::ReceivedFrame> Await(client::Connection& c, Opcode opcode,
                                                    int timeout_ms) {
    const int64_t deadline = SystemClock::Instance().MonoMillis() + timeout_ms;
    for (;;) {
      const int64_t left = deadline - SystemClock::Instance().MonoMillis();
      if (left <= 0) return std::nullopt;
      auto f = c.ReadFrame(static_cast<int>(left));
      if (!f.ok()) {
        if (f.status().code() == StatusCode::kOverloaded) return std::nullopt;  // timed out
        ADD_FAILURE() << f.status().ToString();
        return std::nullopt;
      }
      if (f->opcode == static_cast<uint8_t>(opcode)) return *f;
      if (f->opcode == static_cast<uint8_t>(Opcode::kSyncPage)) {
        v1::SyncPage page;
        EXPECT_TRUE(page.ParseFromString(f->payload));
        v1::SyncAck ack;
        ack.set_cursor(page.cursor());
        EXPECT_TRUE(c.SendFrame(static_cast<uint8_t>(Opcode::kSyncAck), ack).ok());
      }
    }
  }

  std::string dir_;
  auth::Keyring keyring_;
  auth::RevocationList revocations_;
  std::unique_ptr<auth::TokenVerifier> verifier_;
  std::unique_ptr<net::TlsContext> tls_;
  std::unique_ptr<store::InboxStore> store_;
  Forward forward_;
  std::unique_ptr<core::Core> core_;
  std::unique_ptr<DropFirstRegistration> link_;
  std::unique_ptr<edge::Edge> edge_;
};

TEST_F(SessionRegistrationTest, UnansweredRegistrationIsAskedAgainAndPushesArrive) {
  const uint64_t recipient = 501, sender = 502;
  auto r = Login(recipient);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(Await(*r, Opcode::kSyncDone, 10'000).has_value());
  // The owner dropped the registration; the session asks again after the settle timeout.
  ASSERT_TRUE(
      iris::testing::PollUntil([&] { return core_->FindSession(recipient).has_value(); }, 10'000))
      << "the session never asked again";
  EXPECT_GE(link_->dropped.load(), 1);
  EXPECT_GE(link_->asked_again.load(), 1);

  auto s = Login(sender);
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(Await(*s, Opcode::kSyncDone, 10'000).has_value());
  v1::Send send;
  send.set_request_id(1);
  send.set_recipient(recipient);
  send.set_body("pushed after asking again");
  UuidV7Generator keys(SystemClock::Instance(), 7);
  send.set_idempotency_key(std::string(UuidBytes(keys.Next())));
  ASSERT_TRUE(s->SendFrame(static_cast<uint8_t>(Opcode::kSend), send).ok());
  ASSERT_TRUE(Await(*s, Opcode::kSendAck, 15'000).has_value());
  auto d = Await(*r, Opcode::kDeliver, 10'000);
  ASSERT_TRUE(d.has_value()) << "the recipient's session got no push";
  v1::Deliver deliver;
  ASSERT_TRUE(deliver.ParseFromString(d->payload));
  EXPECT_EQ(deliver.message().body(), "pushed after asking again");
}

}  // namespace
}  // namespace iris
