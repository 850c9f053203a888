// The public C++ API (include/iris/client/client.h) in-process against a real irisd: two
// Clients exchange a message, a read receipt and a typing indicator; argument errors come
// back as specific codes; one state directory admits one Client at a time.

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>

#include "harness/server_process.h"
#include "iris/client/client.h"
#include "support/wait_for.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

using namespace iris::client;

// Collects a client's events; waits on a condition variable with a deadline.
class EventLog {
 public:
  void Add(const Event& e) {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(e);
    cv_.notify_all();
  }
  template <typename T, typename Pred>
  std::optional<T> WaitFor(Pred pred, int timeout_ms = 15'000) {
    std::unique_lock<std::mutex> l(mu_);
    std::optional<T> found;
    cv_.wait_for(l, std::chrono::milliseconds(timeout_ms), [&] {
      for (const Event& e : events_) {
        if (const T* t = std::get_if<T>(&e); t != nullptr && pred(*t)) {
          found = *t;
          return true;
        }
      }
      return false;
    });
    return found;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> events_;
};

class ClientApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Start();
    char tmpl[] = "/tmp/iris-api-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  ClientOptions Options(uint64_t user, EventLog* log) {
    ClientOptions o;
    o.state_dir = dir_ + "/" + std::to_string(user);
    o.server.host = "127.0.0.1";
    o.server.port = server_.port();
    o.server.ca_file = server_.cert_file();
    o.token = server_.Token(user);
    o.prekey_pool_size = 5;
    o.seed = 1234 + user;
    o.on_event = [log](const Event& e) { log->Add(e); };
    return o;
  }

  static bool Live(EventLog& log) {
    return log
        .WaitFor<StateEvent>([](const StateEvent& s) { return s.state == SessionState::kLive; })
        .has_value();
  }

  ServerProcess server_{{"--degradation-level", "0"}};  // typing is never shed here
  std::string dir_;
};

// Writing to a connection the server has closed is an error for the caller, not a
// SIGPIPE that ends the application (the library blocks it around its TLS writes).
TEST_F(ClientApiTest, WritingAfterTheServerClosedFailsWithoutKillingTheProcess) {
  auto c = TestClient::Connect(server_);
  ASSERT_TRUE(c);
  v1::Ping ping;  // anything but HELLO first: the server answers with an error and closes
  ping.set_nonce(1);
  v1::Send send;
  send.set_request_id(1);
  ASSERT_TRUE(c->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kSend), send).ok());
  for (;;) {
    auto f = c->Next(10'000);
    if (!f.ok()) break;  // closed by the server
  }
  // The peer has gone (or is about to close its socket, on a busy machine): the first
  // writes may still land in the socket buffer; later ones hit the closed socket (EPIPE),
  // which must come back as an error rather than a SIGPIPE.
  Status last = Status::Ok();
  EXPECT_TRUE(PollUntil(
      [&] {
        last = c->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kPing), ping);
        return !last.ok();
      },
      20'000, 5));
  EXPECT_EQ(last.code(), StatusCode::kUnavailable) << last.ToString();
}

TEST_F(ClientApiTest, MessageReceiptAndTypingBetweenTwoClients) {
  EventLog alice_log, bob_log;
  auto alice = Client::Open(Options(11, &alice_log));
  auto bob = Client::Open(Options(12, &bob_log));
  ASSERT_TRUE(alice.ok()) << alice.status().ToString();
  ASSERT_TRUE(bob.ok()) << bob.status().ToString();
  EXPECT_EQ((*alice)->IdentityFingerprint().size(), 64u);
  (*alice)->Start();
  (*bob)->Start();
  ASSERT_TRUE(Live(alice_log));
  ASSERT_TRUE(Live(bob_log));
  ASSERT_TRUE(bob_log.WaitFor<KeysUploadedEvent>(
      [](const KeysUploadedEvent& k) { return k.identity && k.one_time_prekeys == 5; }));
  EXPECT_TRUE((*bob)->KeysPublished());
  EXPECT_EQ((*alice)->user_id(), 11u);

  auto id = (*alice)->Send(12, "hello through the API");
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto acked =
      alice_log.WaitFor<SendAckedEvent>([&](const SendAckedEvent& a) { return a.local_id == *id; });
  ASSERT_TRUE(acked);
  auto msg = bob_log.WaitFor<MessageEvent>([](const MessageEvent& m) { return m.sender == 11; });
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->text, "hello through the API");
  EXPECT_TRUE(msg->prekey_message);
  EXPECT_EQ(msg->id, acked->message_id);
  EXPECT_EQ((*bob)->cursor(), msg->id) << "the cursor moved past the stored message";
  auto stored = (*bob)->Messages(0, 10);
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].text, "hello through the API");

  ASSERT_TRUE((*bob)->MarkRead(11, {msg->id}).ok());
  auto read = alice_log.WaitFor<ReceiptEvent>(
      [](const ReceiptEvent& r) { return r.kind == ReceiptKind::kRead; });
  ASSERT_TRUE(read);
  EXPECT_EQ(read->from, 12u);
  EXPECT_EQ(read->message_ids, std::vector<uint64_t>{msg->id});
  EXPECT_TRUE(alice_log.WaitFor<ReceiptEvent>(
      [](const ReceiptEvent& r) { return r.kind == ReceiptKind::kDelivered; }));

  (*bob)->SetTyping(11, true);
  auto typing = alice_log.WaitFor<TypingEvent>([](const TypingEvent& t) { return t.typing; });
  ASSERT_TRUE(typing);
  EXPECT_EQ(typing->user, 12u);

  (*alice)->QueryPresence({12});
  auto online =
      alice_log.WaitFor<PresenceEvent>([](const PresenceEvent& p) { return p.user == 12; });
  ASSERT_TRUE(online);
  EXPECT_TRUE(online->online);

  EXPECT_EQ((*alice)->Cancel(*id).code(), StatusCode::kNotFound) << "already acknowledged";
  (*alice)->Stop();
  (*bob)->Stop();
  EXPECT_EQ((*alice)->state(), SessionState::kStopped);
}

TEST_F(ClientApiTest, LargePreKeyPoolIsUploadedInFramesOfAtMostHundred) {
  EventLog log;
  ClientOptions o = Options(51, &log);
  o.prekey_pool_size = 150;
  auto c = Client::Open(std::move(o));
  ASSERT_TRUE(c.ok());
  (*c)->Start();
  ASSERT_TRUE(log.WaitFor<KeysUploadedEvent>(
      [](const KeysUploadedEvent& k) { return k.identity && k.one_time_prekeys == 100; }));
  ASSERT_TRUE(log.WaitFor<KeysUploadedEvent>(
      [](const KeysUploadedEvent& k) { return !k.identity && k.one_time_prekeys == 50; }));
  auto fetcher = TestClient::Connect(server_);
  fetcher->Login(server_, 52);
  std::vector<v1::Envelope> none;
  fetcher->CatchUp(&none);
  v1::KeysFetch f;
  f.set_request_id(3);
  f.set_user(51);
  ASSERT_TRUE(fetcher->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kKeysFetch), f).ok());
  v1::KeysBundle b;
  ASSERT_TRUE(
      b.ParseFromString(fetcher->Expect(static_cast<uint8_t>(wire::Opcode::kKeysBundle)).payload));
  EXPECT_TRUE(b.has_one_time_prekey());
  EXPECT_EQ(b.one_time_prekeys_left(), 149u);
}

TEST_F(ClientApiTest, QueuedSendSurvivesReopenAndCanBeCancelled) {
  EventLog log;
  std::string keep, drop;
  {
    auto c = Client::Open(Options(21, &log));  // never started: nothing leaves
    ASSERT_TRUE(c.ok());
    keep = *(*c)->Send(22, "keep me");
    drop = *(*c)->Send(22, "drop me");
  }
  auto c = Client::Open(Options(21, &log));
  ASSERT_TRUE(c.ok());
  auto pending = (*c)->PendingSends();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].local_id, keep);
  EXPECT_EQ(pending[0].text, "keep me");
  EXPECT_FALSE(pending[0].encrypted);
  ASSERT_TRUE((*c)->Cancel(drop).ok());
  EXPECT_EQ((*c)->PendingSends().size(), 1u);
  EXPECT_EQ((*c)->Cancel(drop).code(), StatusCode::kNotFound);
}

// Settings set while nothing carries them to the server (here the Client is closed before it
// ever connects) stay pending and go out at the next connection; the server's OK clears the
// mark, and the server applies them: with presence sharing off, a watcher sees the user
// offline (last seen 0) although it is connected.
TEST_F(ClientApiTest, PendingSettingsAreSentAtTheNextConnectionUntilConfirmed) {
  EventLog log;
  {
    auto c = Client::Open(Options(41, &log));  // never started: nothing leaves
    ASSERT_TRUE(c.ok());
    (*c)->UpdateSettings(/*read_receipts=*/false, /*share_presence=*/false);
    const Client::SettingsRecord rec = (*c)->LocalSettings();
    EXPECT_TRUE(rec.set);
    EXPECT_FALSE(rec.read_receipts);
    EXPECT_FALSE(rec.share_presence);
    EXPECT_TRUE(rec.pending);
  }
  auto c = Client::Open(Options(41, &log));
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE((*c)->LocalSettings().pending);
  (*c)->Start();
  ASSERT_TRUE(Live(log));
  ASSERT_TRUE(PollUntil([&] { return !(*c)->LocalSettings().pending; }, 15'000, 10))
      << "the server never confirmed the pending settings";
  EXPECT_FALSE((*c)->LocalSettings().share_presence);

  auto watcher = TestClient::Connect(server_);
  watcher->Login(server_, 42);
  v1::PresenceQuery q;
  q.set_request_id(1);
  q.add_users(41);
  ASSERT_TRUE(watcher->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kPresenceQuery), q).ok());
  auto f = watcher->Expect(static_cast<uint8_t>(wire::Opcode::kPresence));
  v1::Presence p;
  ASSERT_TRUE(p.ParseFromString(f.payload));
  EXPECT_EQ(p.user(), 41u);
  EXPECT_FALSE(p.online()) << "the server does not have share_presence = false";
  EXPECT_EQ(p.last_seen_ms(), 0);
}

TEST_F(ClientApiTest, RejectsBadArgumentsAndASecondClientOnOneStateDirectory) {
  EventLog log;
  auto c = Client::Open(Options(31, &log));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Send(0, "x").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ((*c)->Send(32, "").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ((*c)->Send(32, std::string(64'000, 'x')).status().code(), StatusCode::kTooLarge);
  EXPECT_EQ((*c)->MarkRead(32, {}).code(), StatusCode::kBadRequest);
  auto second = Client::Open(Options(31, &log));
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable);
  ClientOptions unverified = Options(33, &log);
  unverified.server.ca_file.clear();
  EXPECT_EQ(Client::Open(unverified).status().code(), StatusCode::kBadRequest);
}

TEST_F(ClientApiTest, ExpiredTokenFailsWithUnauthenticatedAndNewTokenRecovers) {
  EventLog log;
  ClientOptions o = Options(41, &log);
  auth::Claims claims;
  claims.user_id = 41;
  claims.iat = static_cast<int64_t>(std::time(nullptr)) - 7200;
  claims.exp = claims.iat + 3600;
  claims.jti = "api-expired";
  o.token = server_.Token(claims);
  auto c = Client::Open(std::move(o));
  ASSERT_TRUE(c.ok());
  (*c)->Start();
  auto failed =
      log.WaitFor<StateEvent>([](const StateEvent& s) { return s.state == SessionState::kFailed; });
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->status.code(), StatusCode::kUnauthenticated);
  (*c)->SetToken(server_.Token(41));
  EXPECT_TRUE(Live(log));
}

}  // namespace
}  // namespace iris::testing
