// The public C++ API (include/iris/client/client.h) in-process against a real irisd: two
// Clients exchange a message, a read receipt and a typing indicator; argument errors come
// back as specific codes; one state directory admits one Client at a time.

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

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

  // One device of a user: its own state directory and a token naming the device.
  struct Device {
    uint64_t user = 0;
    uint32_t id = 0;
    EventLog log;
    std::unique_ptr<Client> client;
  };
  std::unique_ptr<Device> StartDevice(uint64_t user, uint32_t id) {
    auto d = std::make_unique<Device>();
    d->user = user;
    d->id = id;
    ClientOptions o = Options(user, &d->log);
    o.state_dir += "-" + std::to_string(id);
    o.token = server_.Token(user, id);
    auto c = Client::Open(std::move(o));
    if (!c.ok()) {
      ADD_FAILURE() << c.status().ToString();
      return nullptr;
    }
    d->client = std::move(*c);
    d->client->Start();
    return d;
  }
  // The primary device links `linked` (which has connected: its keys are published) with
  // its link code; the answer lists `expect` devices.
  static ::testing::AssertionResult Link(Device& primary, Device& linked, size_t expect) {
    auto code = linked.client->LinkCode();
    if (!code.ok()) return ::testing::AssertionFailure() << code.status().ToString();
    auto request = primary.client->LinkDevice(*code);
    if (!request.ok()) return ::testing::AssertionFailure() << request.status().ToString();
    auto answer = primary.log.WaitFor<DevicesEvent>(
        [&](const DevicesEvent& e) { return e.request == *request; });
    if (!answer) return ::testing::AssertionFailure() << "no DevicesEvent";
    if (answer->devices.size() != expect) {
      return ::testing::AssertionFailure() << answer->devices.size() << " devices listed";
    }
    return ::testing::AssertionSuccess();
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
  ASSERT_TRUE(
      watcher->conn().SendFrame(static_cast<uint8_t>(wire::Opcode::kPresenceQuery), q).ok());
  auto f = watcher->Expect(static_cast<uint8_t>(wire::Opcode::kPresence));
  v1::Presence p;
  ASSERT_TRUE(p.ParseFromString(f.payload));
  EXPECT_EQ(p.user(), 41u);
  EXPECT_FALSE(p.online()) << "the server does not have share_presence = false";
  EXPECT_EQ(p.last_seen_ms(), 0);
}

// Consent (docs/protocol.md appendix 19): a block made while the Client is closed is kept
// pending in the local store and sent at the next connection; the server then refuses the
// blocked user's message for good (FORBIDDEN: the sender's queue drops it, nothing reaches
// the blocker) and lists the block in SETTINGS_INFO; after Unblock the next message arrives.
// A device list the primary device did not sign (here: set over a raw connection with the
// primary's token, as a server adding a device on its own would) is refused by the sender's
// client: the key fetch fails with FORBIDDEN naming the signature, the message fails for
// good, and nothing is encrypted for the made-up device.
TEST_F(ClientApiTest, ForgedDeviceListIsRefusedByTheSender) {
  constexpr uint64_t kAlice = 81, kBob = 82;
  EventLog alice_log, bob_log;
  {
    auto bob = Client::Open(Options(kBob, &bob_log));
    ASSERT_TRUE(bob.ok());
    (*bob)->Start();
    ASSERT_TRUE(
        bob_log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) { return k.identity; }));
  }
  // A second "device" of Bob publishes keys, and a list naming it is stored.
  auto device2 = TestClient::Connect(server_);
  ASSERT_EQ(device2->Hello(server_.Token(kBob, 2)).opcode,
            static_cast<uint8_t>(wire::Opcode::kWelcome));
  v1::KeysUpload up;
  up.set_request_id(1);
  up.set_identity_key("bob device 2 identity");
  up.mutable_signed_prekey()->set_id(1);
  up.mutable_signed_prekey()->set_public_key("spk");
  up.mutable_signed_prekey()->set_signature("sig");
  ASSERT_EQ(device2
                ->Ask(static_cast<uint8_t>(wire::Opcode::kKeysUpload), up,
                      {static_cast<uint8_t>(wire::Opcode::kOk)})
                .opcode,
            static_cast<uint8_t>(wire::Opcode::kOk));
  auto primary = TestClient::Connect(server_);
  primary->Login(server_, kBob);
  v1::DeviceList list;
  list.set_user(kBob);
  list.set_version(1);
  for (uint32_t d : {1u, 2u}) {
    v1::Device* dev = list.add_devices();
    dev->set_id(d);
    dev->set_identity_key("key " + std::to_string(d));
  }
  v1::Settings settings;
  settings.set_request_id(2);
  settings.mutable_device_list()->set_list(list.SerializeAsString());
  settings.mutable_device_list()->set_signature(std::string(64, 'x'));
  const client::ReceivedFrame set =
      primary->Ask(static_cast<uint8_t>(wire::Opcode::kSettings), settings,
                   {static_cast<uint8_t>(wire::Opcode::kOk)});
  ASSERT_EQ(set.opcode, static_cast<uint8_t>(wire::Opcode::kOk)) << ErrorOf(set).message();

  auto alice = Client::Open(Options(kAlice, &alice_log));
  ASSERT_TRUE(alice.ok());
  (*alice)->Start();
  ASSERT_TRUE(Live(alice_log));
  auto id = (*alice)->Send(kBob, "hello bob");
  ASSERT_TRUE(id.ok());
  auto refused = alice_log.WaitFor<SendFailedEvent>(
      [&](const SendFailedEvent& f) { return f.local_id == *id; });
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status.code(), StatusCode::kForbidden) << refused->status.ToString();
  EXPECT_NE(refused->status.message().find("device list"), std::string::npos)
      << refused->status.message();
  EXPECT_TRUE(refused->permanent);
  EXPECT_TRUE((*alice)->PendingSends().empty());
  // Nothing ever reached the made-up device's inbox.
  auto again = TestClient::Connect(server_);
  ASSERT_EQ(again->Hello(server_.Token(kBob, 2)).opcode,
            static_cast<uint8_t>(wire::Opcode::kWelcome));
  std::vector<v1::Envelope> inbox;
  again->CatchUp(&inbox);
  EXPECT_TRUE(inbox.empty()) << inbox.size() << " envelopes for the made-up device";
}

// Two users with three devices each (docs/protocol.md appendix 20, "Devices in the
// client"): the primaries link their other devices with link codes; every device sends
// two messages to the other user. Each device then holds exactly the ten messages of the
// five other devices (the other user's six, and its siblings' four as transcripts), each
// once. Removing a device stops copies to it while the others still get theirs.
TEST_F(ClientApiTest, ThreeDevicesPerUserEachGetEveryOtherDevicesMessagesOnce) {
  constexpr uint64_t kUsers[2] = {91, 92};
  std::vector<std::unique_ptr<Device>> devices;
  for (uint64_t user : kUsers) {
    for (uint32_t id = 1; id <= 3; ++id) {
      devices.push_back(StartDevice(user, id));
      ASSERT_TRUE(devices.back());
    }
  }
  for (auto& d : devices) {
    ASSERT_TRUE(Live(d->log));
    ASSERT_TRUE(
        d->log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) { return k.identity; }));
    EXPECT_EQ(d->client->device_id(), d->id);
  }
  // Link devices 2 and 3 on each primary.
  for (int u = 0; u < 2; ++u) {
    Device& primary = *devices[u * 3];
    EXPECT_EQ(primary.client->LinkCode().status().code(), StatusCode::kBadRequest);
    for (int k = 1; k <= 2; ++k) {
      auto code = devices[u * 3 + k]->client->LinkCode();
      ASSERT_TRUE(code.ok()) << code.status().ToString();
      EXPECT_EQ(devices[u * 3 + k]->client->LinkDevice(*code).status().code(),
                StatusCode::kBadRequest)
          << "only the primary links";
      ASSERT_TRUE(Link(primary, *devices[u * 3 + k], static_cast<size_t>(k + 1)));
    }
    // Another user's code is refused before anything is sent.
    auto foreign = devices[(1 - u) * 3 + 1]->client->LinkCode();
    ASSERT_TRUE(foreign.ok());
    EXPECT_EQ(primary.client->LinkDevice(*foreign).status().code(), StatusCode::kBadRequest);
  }
  // The list as a linked device reads it (verified against the primary's key).
  const uint64_t list_request = devices[4]->client->RequestDevices();
  auto listed = devices[4]->log.WaitFor<DevicesEvent>(
      [&](const DevicesEvent& e) { return e.request == list_request; });
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->devices.size(), 3u);
  EXPECT_TRUE(listed->devices[1].this_device);
  EXPECT_EQ(listed->devices[0].fingerprint, devices[3]->client->IdentityFingerprint());

  // Every device sends two messages to the other user.
  for (auto& d : devices) {
    const uint64_t other = d->user == kUsers[0] ? kUsers[1] : kUsers[0];
    for (int i = 0; i < 2; ++i) {
      const std::string text = "from " + std::to_string(d->user) + "." + std::to_string(d->id) +
                               " #" + std::to_string(i);
      ASSERT_TRUE(d->client->Send(other, text).ok());
    }
  }
  for (auto& d : devices) {
    std::vector<StoredMessage> got;
    ASSERT_TRUE(PollUntil(
        [&] {
          got = d->client->Messages(0, 100);
          return got.size() >= 10 &&
                 std::all_of(got.begin(), got.end(),
                             [](const StoredMessage& m) { return m.decrypted; });
        },
        60'000, 20))
        << "device " << d->user << "." << d->id << " holds " << got.size() << " messages";
    std::multiset<std::string> texts;
    for (const StoredMessage& m : got) {
      EXPECT_TRUE(m.decrypted) << m.error;
      texts.insert(m.text);
      const uint64_t other = d->user == kUsers[0] ? kUsers[1] : kUsers[0];
      EXPECT_EQ(m.peer, other);
      EXPECT_EQ(m.outgoing, m.text.starts_with("from " + std::to_string(d->user) + "."));
    }
    std::multiset<std::string> want;
    for (auto& from : devices) {
      if (from.get() == d.get()) continue;
      for (int i = 0; i < 2; ++i) {
        want.insert("from " + std::to_string(from->user) + "." + std::to_string(from->id) + " #" +
                    std::to_string(i));
      }
    }
    EXPECT_EQ(texts, want) << "device " << d->user << "." << d->id;
  }

  // The first user removes device 3; a message from the other user reaches devices 1 and 2.
  auto removed = devices[0]->client->RemoveDevice(3);
  ASSERT_TRUE(removed.ok());
  auto after = devices[0]->log.WaitFor<DevicesEvent>(
      [&](const DevicesEvent& e) { return e.request == *removed; });
  ASSERT_TRUE(after);
  EXPECT_EQ(after->devices.size(), 2u);
  // Its session ended: the removed device's client stops (it does not reconnect in a loop).
  auto ended = devices[2]->log.WaitFor<StateEvent>(
      [](const StateEvent& e) { return e.state == SessionState::kFailed; });
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->status.code(), StatusCode::kDeviceRemoved) << ended->status.ToString();
  ASSERT_TRUE(devices[3]->client->Send(kUsers[0], "after the removal").ok());
  for (int k : {0, 1}) {
    EXPECT_TRUE(PollUntil(
        [&] {
          for (const StoredMessage& m : devices[k]->client->Messages(0, 100)) {
            if (m.text == "after the removal") return true;
          }
          return false;
        },
        60'000, 20))
        << "device " << k + 1;
  }
  for (const StoredMessage& m : devices[2]->client->Messages(0, 100)) {
    EXPECT_NE(m.text, "after the removal") << "a removed device got a copy";
  }
  // The sender encrypted it again for the new device set after MISMATCHED_DEVICES: the same
  // message (conversation counter), so no gap shows.
  auto late = devices[0]->log.WaitFor<MessageEvent>(
      [](const MessageEvent& m) { return m.text == "after the removal"; });
  ASSERT_TRUE(late);
  EXPECT_EQ(late->missing, 0u);
  EXPECT_FALSE(late->reordered);
  for (auto& d : devices) d->client->Stop();
}

// A linked device names its own copy of a message (its own envelope id) in receipts and
// session-reset requests. The author matches it through SEND_ACK.copy_ids: a read receipt
// from Bob's laptop reports the id Alice's SEND_ACK gave, and when the laptop lost its
// session with Alice, she re-sends the message to the laptop alone (Bob's phone gets a
// filler and shows the message once). Alice's own second device, which shows her message
// as a transcript, matches the receipt to that transcript.
TEST_F(ClientApiTest, LinkedDevicesReceiptsAndSessionResetsNameTheMessageItsAuthorKnows) {
  auto alice = StartDevice(95, 1);
  auto alice_tablet = StartDevice(95, 2);
  auto phone = StartDevice(96, 1);
  auto laptop = StartDevice(96, 2);
  ASSERT_TRUE(alice && alice_tablet && phone && laptop);
  for (Device* d : {alice.get(), alice_tablet.get(), phone.get(), laptop.get()}) {
    ASSERT_TRUE(Live(d->log));
    ASSERT_TRUE(
        d->log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) { return k.identity; }));
  }
  ASSERT_TRUE(Link(*phone, *laptop, 2));
  ASSERT_TRUE(Link(*alice, *alice_tablet, 2));
  auto got = [](Device& d, const std::string& text) {
    return d.log.WaitFor<MessageEvent>(
        [&](const MessageEvent& m) { return m.text == text && m.decrypted; }, 30'000);
  };
  auto send = [&](const std::string& text) -> uint64_t {
    auto id = alice->client->Send(96, text);
    if (!id.ok()) return 0;
    auto acked = alice->log.WaitFor<SendAckedEvent>(
        [&](const SendAckedEvent& a) { return a.local_id == *id; }, 30'000);
    return acked ? acked->message_id : 0;
  };

  const uint64_t first = send("first");
  ASSERT_NE(first, 0u);
  auto on_phone = got(*phone, "first");
  auto on_laptop = got(*laptop, "first");
  ASSERT_TRUE(on_phone && on_laptop);
  EXPECT_NE(on_phone->id, on_laptop->id) << "one envelope per device";
  // Both the phone's copy and the laptop's map to the id Alice knows.
  EXPECT_TRUE(on_phone->id == first || on_laptop->id == first);
  ASSERT_TRUE(laptop->client->MarkRead(95, {on_laptop->id}).ok());
  auto read = alice->log.WaitFor<ReceiptEvent>(
      [](const ReceiptEvent& r) { return r.kind == ReceiptKind::kRead; }, 30'000);
  ASSERT_TRUE(read);
  EXPECT_EQ(read->from, 96u);
  EXPECT_EQ(read->message_ids, std::vector<uint64_t>{first});
  // On Alice's tablet the message is a transcript with its own id; the receipt names it.
  auto transcript = alice_tablet->log.WaitFor<MessageEvent>(
      [](const MessageEvent& m) { return m.outgoing && m.text == "first"; }, 30'000);
  ASSERT_TRUE(transcript);
  auto tablet_read = alice_tablet->log.WaitFor<ReceiptEvent>(
      [](const ReceiptEvent& r) { return r.kind == ReceiptKind::kRead; }, 30'000);
  ASSERT_TRUE(tablet_read);
  EXPECT_EQ(tablet_read->message_ids, std::vector<uint64_t>{transcript->id});
  auto delivered = alice->log.WaitFor<ReceiptEvent>(
      [](const ReceiptEvent& r) { return r.kind == ReceiptKind::kDelivered; }, 30'000);
  ASSERT_TRUE(delivered);
  EXPECT_EQ(delivered->message_ids, std::vector<uint64_t>{first});

  // The laptop loses its session with Alice (as after restoring an old backup of its state).
  const std::string laptop_dir = dir_ + "/96-2";
  laptop->client->Stop();
  laptop.reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((laptop_dir + "/state.db").c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    EXPECT_EQ(
        sqlite3_exec(db, "DELETE FROM signal_sessions WHERE name = '95'", nullptr, nullptr, &err),
        SQLITE_OK)
        << (err != nullptr ? err : "");
    sqlite3_free(err);
    EXPECT_EQ(sqlite3_changes(db), 2) << "with both of Alice's devices";
    sqlite3_close(db);
  }
  laptop = StartDevice(96, 2);
  ASSERT_TRUE(laptop && Live(laptop->log));
  const uint64_t second = send("second");
  ASSERT_NE(second, 0u);
  // The laptop cannot decrypt it and asks for a re-send; Alice re-sends it to the laptop.
  auto failed = alice->log.WaitFor<PeerDecryptFailedEvent>(
      [](const PeerDecryptFailedEvent& f) { return !f.resent.empty(); }, 30'000);
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->peer, 96u);
  EXPECT_EQ(failed->resent, std::vector<uint64_t>{second}) << "named by the id Alice knows";
  auto again = got(*laptop, "second");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->sender, 95u);
  EXPECT_EQ(again->missing, 0u) << "the message keeps its place in the conversation";
  // A message after the re-send: once the phone has it, it has had the re-send's copy too.
  ASSERT_NE(send("third"), 0u);
  ASSERT_TRUE(got(*phone, "third"));
  ASSERT_TRUE(got(*laptop, "third"));
  auto count = [](Device& d, const std::string& text) {
    int n = 0;
    for (const StoredMessage& m : d.client->Messages(0, 100)) n += m.text == text ? 1 : 0;
    return n;
  };
  EXPECT_EQ(count(*phone, "second"), 1) << "the phone did not get the re-send as a message";
  EXPECT_EQ(count(*laptop, "second"), 1);
  // The laptop's read receipt for the re-sent copy names the message too.
  ASSERT_TRUE(laptop->client->MarkRead(95, {again->id}).ok());
  EXPECT_TRUE(alice->log.WaitFor<ReceiptEvent>(
      [&](const ReceiptEvent& r) {
        return r.kind == ReceiptKind::kRead && r.message_ids == std::vector<uint64_t>{second};
      },
      30'000));
  for (Device* d : {alice.get(), alice_tablet.get(), phone.get(), laptop.get()}) {
    d->client->Stop();
  }
}

// A member links a device after the other members gave it their sender keys: the new
// device asks each sender for its key (a control message), the sender's device checks the
// list again and sends it to every device of the member, from the key's start (the member
// held it already), and the new device reads the group messages it had to keep.
TEST_F(ClientApiTest, ADeviceLinkedLaterAsksForTheSenderKeysItMisses) {
  constexpr uint64_t kAlice = 105, kBob = 106;
  auto alice = StartDevice(kAlice, 1);
  auto phone = StartDevice(kBob, 1);
  auto laptop = StartDevice(kBob, 2);
  ASSERT_TRUE(alice && phone && laptop);
  for (Device* d : {alice.get(), phone.get(), laptop.get()}) {
    ASSERT_TRUE(
        d->log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) { return k.identity; }));
  }
  // The laptop's keys are published; it is set aside until linked.
  auto code = laptop->client->LinkCode();
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  laptop->client->Stop();
  laptop.reset();

  const uint64_t create = alice->client->CreateGroup({kBob});
  auto created = alice->log.WaitFor<GroupInfoEvent>(
      [&](const GroupInfoEvent& g) { return g.request == create; });
  ASSERT_TRUE(created);
  const uint64_t group = created->group_id;
  ASSERT_TRUE(PollUntil(
      [&] {
        for (const GroupRecord& g : phone->client->Groups()) {
          if (g.id == group) return true;
        }
        return false;
      },
      30'000, 20));
  auto read_on = [&](Device& d, const std::string& text) {
    return PollUntil(
        [&] {
          for (const StoredMessage& m : d.client->Messages(0, 100)) {
            if (m.text == text && m.decrypted && m.group_id == group) return true;
          }
          return false;
        },
        60'000, 20);
  };
  // Alice's sender key reaches Bob's phone, the only device Alice knows of.
  ASSERT_TRUE(alice->client->SendGroup(group, "before the laptop").ok());
  ASSERT_TRUE(read_on(*phone, "before the laptop"));

  // Bob links the laptop; Alice sends again without knowing of it.
  auto request = phone->client->LinkDevice(*code);
  ASSERT_TRUE(request.ok());
  ASSERT_TRUE(phone->log.WaitFor<DevicesEvent>(
      [&](const DevicesEvent& e) { return e.request == *request && e.devices.size() == 2; }));
  ASSERT_TRUE(alice->client->SendGroup(group, "after the link").ok());
  ASSERT_TRUE(read_on(*phone, "after the link"));
  laptop = StartDevice(kBob, 2);
  ASSERT_TRUE(laptop);
  EXPECT_TRUE(read_on(*laptop, "before the laptop"));
  EXPECT_TRUE(read_on(*laptop, "after the link"));
  // Later messages need no asking.
  ASSERT_TRUE(alice->client->SendGroup(group, "later").ok());
  EXPECT_TRUE(read_on(*laptop, "later"));
  // The phone, which held the key, shows each message once.
  std::multiset<std::string> texts;
  for (const StoredMessage& m : phone->client->Messages(0, 100)) texts.insert(m.text);
  EXPECT_EQ(texts.count("before the laptop"), 1u);
  EXPECT_EQ(texts.count("after the link"), 1u);
  for (Device* d : {alice.get(), phone.get(), laptop.get()}) d->client->Stop();
}

// A group whose members use several devices: a sender key travels over the pairwise
// sessions, so to every device of every member; each device of the other members decrypts
// every group message, and the sender's other device sees it as its own (a group
// transcript). Devices of one user send with their own sender keys.
TEST_F(ClientApiTest, GroupMessagesReachEveryDeviceAndTheSendersOthers) {
  constexpr uint64_t kAlice = 101, kBob = 102, kCarol = 103;
  std::vector<std::unique_ptr<Device>> d;
  for (auto [user, id] : std::vector<std::pair<uint64_t, uint32_t>>{
           {kAlice, 1}, {kAlice, 2}, {kBob, 1}, {kBob, 2}, {kCarol, 1}}) {
    d.push_back(StartDevice(user, id));
    ASSERT_TRUE(d.back());
  }
  for (auto& x : d) {
    ASSERT_TRUE(
        x->log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) { return k.identity; }));
  }
  ASSERT_TRUE(Link(*d[0], *d[1], 2));
  ASSERT_TRUE(Link(*d[2], *d[3], 2));
  const uint64_t create = d[0]->client->CreateGroup({kBob, kCarol});
  auto created = d[0]->log.WaitFor<GroupInfoEvent>(
      [&](const GroupInfoEvent& g) { return g.request == create; });
  ASSERT_TRUE(created);
  const uint64_t group = created->group_id;
  // Every device learns of the group from its GROUP_EVENT (Bob's second device sends next).
  ASSERT_TRUE(PollUntil(
      [&] {
        for (auto& x : d) {
          bool known = false;
          for (const GroupRecord& g : x->client->Groups()) known |= g.id == group;
          if (!known) return false;
        }
        return true;
      },
      30'000, 20));
  ASSERT_TRUE(d[0]->client->SendGroup(group, "from alice's phone").ok());
  ASSERT_TRUE(PollUntil(
      [&] {
        for (const StoredMessage& m : d[3]->client->Messages(0, 100)) {
          if (m.text == "from alice's phone") return true;
        }
        return false;
      },
      60'000, 20));
  ASSERT_TRUE(d[3]->client->SendGroup(group, "from bob's laptop").ok());
  struct Want {
    size_t device;
    std::string text;
    bool outgoing;
  };
  const std::vector<Want> want = {
      {1, "from alice's phone", true},  {2, "from alice's phone", false},
      {3, "from alice's phone", false}, {4, "from alice's phone", false},
      {0, "from bob's laptop", false},  {1, "from bob's laptop", false},
      {2, "from bob's laptop", true},   {4, "from bob's laptop", false}};
  for (const Want& w : want) {
    std::optional<StoredMessage> got;
    EXPECT_TRUE(PollUntil(
        [&] {
          for (const StoredMessage& m : d[w.device]->client->Messages(0, 100)) {
            if (m.text == w.text && m.decrypted) got = m;
          }
          return got.has_value();
        },
        60'000, 20))
        << "device " << d[w.device]->user << "." << d[w.device]->id << ": " << w.text;
    if (!got) continue;
    EXPECT_EQ(got->group_id, group);
    EXPECT_EQ(got->outgoing, w.outgoing) << w.text;
  }
  // Each exactly once.
  for (auto& x : d) {
    std::multiset<std::string> texts;
    for (const StoredMessage& m : x->client->Messages(0, 100)) texts.insert(m.text);
    EXPECT_LE(texts.count("from alice's phone"), 1u);
    EXPECT_LE(texts.count("from bob's laptop"), 1u);
  }
  for (auto& x : d) x->client->Stop();
}

TEST_F(ClientApiTest, BlockedUserCannotWriteUntilUnblocked) {
  EventLog alice_log, bob_log;
  {
    auto c = Client::Open(Options(61, &alice_log));  // never started: nothing leaves
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Block(62).ok());
    ASSERT_TRUE((*c)->Block(63).ok());
    ASSERT_TRUE((*c)->Unblock(63).ok());  // the later change wins
    // The account is not known before the first connection: dropped then (the server would
    // refuse the whole SETTINGS).
    ASSERT_TRUE((*c)->Block(61).ok());
    EXPECT_EQ((*c)->Block(0).code(), StatusCode::kBadRequest);
    const Client::SettingsRecord rec = (*c)->LocalSettings();
    EXPECT_TRUE(rec.pending);
    EXPECT_FALSE(rec.set) << "read receipts and presence were not touched";
    EXPECT_EQ(rec.pending_block, (std::vector<uint64_t>{61, 62}));
    EXPECT_EQ(rec.pending_unblock, std::vector<uint64_t>{63});
  }
  auto alice = Client::Open(Options(61, &alice_log));
  auto bob = Client::Open(Options(62, &bob_log));
  ASSERT_TRUE(alice.ok() && bob.ok());
  EXPECT_EQ((*alice)->LocalSettings().pending_block, (std::vector<uint64_t>{61, 62}))
      << "the pending block did not survive closing the Client";
  (*alice)->Start();
  (*bob)->Start();
  ASSERT_TRUE(Live(alice_log));
  ASSERT_TRUE(Live(bob_log));
  ASSERT_TRUE(alice_log.WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) {
    return k.identity;
  })) << "bob cannot fetch alice's keys before she published them";
  ASSERT_TRUE(PollUntil([&] { return !(*alice)->LocalSettings().pending; }, 15'000, 10))
      << "the server never confirmed the pending block";
  EXPECT_TRUE((*alice)->LocalSettings().pending_block.empty());
  EXPECT_EQ((*alice)->Block(61).code(), StatusCode::kBadRequest) << "blocking oneself";

  const uint64_t ask = (*alice)->RequestSettings();
  auto info =
      alice_log.WaitFor<SettingsEvent>([&](const SettingsEvent& e) { return e.request == ask; });
  ASSERT_TRUE(info);
  EXPECT_EQ(info->blocked, std::vector<uint64_t>{62});
  EXPECT_TRUE(info->read_receipts);
  EXPECT_TRUE(info->share_presence);
  EXPECT_EQ(info->group_invites, GroupInvites::kEveryone);

  auto refused_id = (*bob)->Send(61, "you blocked me");
  ASSERT_TRUE(refused_id.ok());
  auto failed = bob_log.WaitFor<SendFailedEvent>(
      [&](const SendFailedEvent& f) { return f.local_id == *refused_id; });
  ASSERT_TRUE(failed);
  EXPECT_TRUE(failed->permanent);
  EXPECT_EQ(failed->status.code(), StatusCode::kForbidden) << failed->status.ToString();
  EXPECT_NE(failed->status.message().find("does not accept your messages"), std::string::npos)
      << failed->status.message();
  EXPECT_TRUE((*bob)->PendingSends().empty()) << "a refused send is not retried";
  EXPECT_FALSE(bob_log.WaitFor<SendAckedEvent>(
      [&](const SendAckedEvent& a) { return a.local_id == *refused_id; }, 0));

  ASSERT_TRUE((*alice)->Unblock(62).ok());
  ASSERT_TRUE(PollUntil([&] { return !(*alice)->LocalSettings().pending; }, 15'000, 10));
  const uint64_t ask2 = (*alice)->RequestSettings();
  info =
      alice_log.WaitFor<SettingsEvent>([&](const SettingsEvent& e) { return e.request == ask2; });
  ASSERT_TRUE(info);
  EXPECT_TRUE(info->blocked.empty());

  auto id = (*bob)->Send(61, "after the unblock");
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(
      bob_log.WaitFor<SendAckedEvent>([&](const SendAckedEvent& a) { return a.local_id == *id; }));
  auto msg = alice_log.WaitFor<MessageEvent>([](const MessageEvent& m) { return m.sender == 62; });
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->text, "after the unblock");
  // A user's messages reach a recipient in order: had the refused one been stored, it would
  // have come first.
  auto stored = (*alice)->Messages(0, 10);
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].text, "after the unblock");
}

// More block changes than one SETTINGS may carry (256 per list) go in several frames, each
// sent once the previous one's OK came; the server ends up with all of them.
TEST_F(ClientApiTest, ManyBlockChangesGoInSeveralFrames) {
  EventLog log;
  auto c = Client::Open(Options(91, &log));
  ASSERT_TRUE(c.ok());
  std::vector<uint64_t> blocked;
  for (uint64_t u = 1000; u < 1300; ++u) {
    ASSERT_TRUE((*c)->Block(u).ok());
    blocked.push_back(u);
  }
  ASSERT_TRUE((*c)->Unblock(1299).ok());
  blocked.pop_back();
  ASSERT_EQ((*c)->LocalSettings().pending_block.size(), 299u);
  (*c)->Start();
  ASSERT_TRUE(Live(log));
  ASSERT_TRUE(PollUntil([&] { return !(*c)->LocalSettings().pending; }, 15'000, 10))
      << "pending: " << (*c)->LocalSettings().pending_block.size() << " blocks";
  const uint64_t ask = (*c)->RequestSettings();
  auto info = log.WaitFor<SettingsEvent>([&](const SettingsEvent& e) { return e.request == ask; });
  ASSERT_TRUE(info);
  EXPECT_EQ(info->blocked, blocked);
  EXPECT_FALSE(log.WaitFor<RequestFailedEvent>([](const RequestFailedEvent&) { return true; }, 0));
}

// Consent to group invitations: a user who blocks the inviter cannot be added (GROUP_CREATE
// refused whole); one who accepts invitations from contacts only cannot be added
// (GROUP_UPDATE) until they have chosen to send the inviter a 1:1 message: the delivery
// receipt their client sends on its own to a stranger who wrote first does not count
// (Send.adds_contact, Client conventions 12). The flag goes on the first text to each
// recipient until the server acknowledged one (again after one that failed for good), and
// that memory survives reopening the Client. One SETTINGS carries both changes (unblock
// and group invites) and SETTINGS_INFO reads them back.
TEST_F(ClientApiTest, GroupInvitesNeedConsent) {
  EventLog alice_log, bob_log, carol_log;
  auto alice = Client::Open(Options(71, &alice_log));
  auto bob = Client::Open(Options(72, &bob_log));
  auto carol = Client::Open(Options(74, &carol_log));
  ASSERT_TRUE(alice.ok() && bob.ok() && carol.ok());
  (*alice)->Start();
  (*bob)->Start();
  (*carol)->Start();
  ASSERT_TRUE(Live(alice_log) && Live(bob_log) && Live(carol_log));
  for (EventLog* log : {&alice_log, &bob_log}) {
    ASSERT_TRUE(log->WaitFor<KeysUploadedEvent>([](const KeysUploadedEvent& k) {
      return k.identity;
    })) << "alice and bob write to each other: both must have published their keys";
  }
  // The outcome of a group request: its GroupInfoEvent or its RequestFailedEvent.
  auto outcome = [&](uint64_t request) {
    std::optional<RequestFailedEvent> failed;
    std::optional<GroupInfoEvent> done;
    EXPECT_TRUE(PollUntil(
        [&] {
          failed = bob_log.WaitFor<RequestFailedEvent>(
              [&](const RequestFailedEvent& f) { return f.request == request; }, 0);
          done = bob_log.WaitFor<GroupInfoEvent>(
              [&](const GroupInfoEvent& g) { return g.request == request; }, 0);
          return failed || done;
        },
        15'000, 5))
        << "no answer to group request " << request;
    return std::make_pair(failed, done);
  };
  auto acked = [](EventLog& log, const std::string& local_id) {
    return log.WaitFor<SendAckedEvent>(
        [&](const SendAckedEvent& a) { return a.local_id == local_id; });
  };

  ASSERT_TRUE((*alice)->Block(72).ok());
  ASSERT_TRUE(PollUntil([&] { return !(*alice)->LocalSettings().pending; }, 15'000, 10));
  const uint64_t create = (*bob)->CreateGroup({71, 74}, "with alice");
  auto [refused, created] = outcome(create);
  ASSERT_TRUE(refused) << "alice blocks bob: he cannot add her";
  EXPECT_FALSE(created);
  EXPECT_EQ(refused->what, "group_create");
  EXPECT_EQ(refused->status.code(), StatusCode::kForbidden) << refused->status.ToString();
  EXPECT_NE(refused->status.message().find("user 71 does not accept group invitations"),
            std::string::npos)
      << refused->status.message();
  // Bob's first text to alice carries the flag and is refused for good: his next one
  // carries it again.
  auto blocked_text = (*bob)->Send(71, "let me in");
  ASSERT_TRUE(blocked_text.ok());
  auto failed = bob_log.WaitFor<SendFailedEvent>(
      [&](const SendFailedEvent& f) { return f.local_id == *blocked_text; });
  ASSERT_TRUE(failed);
  EXPECT_TRUE(failed->permanent);
  EXPECT_EQ(failed->status.code(), StatusCode::kForbidden) << failed->status.ToString();

  ASSERT_TRUE((*alice)->Unblock(72).ok());
  ASSERT_TRUE((*alice)->SetGroupInvites(GroupInvites::kContacts).ok());
  EXPECT_EQ((*alice)->SetGroupInvites(GroupInvites::kUnspecified).code(), StatusCode::kBadRequest);
  EXPECT_EQ((*alice)->LocalSettings().group_invites, GroupInvites::kContacts);
  const uint64_t ask = (*alice)->RequestSettings();  // answered after the SETTINGS
  auto info =
      alice_log.WaitFor<SettingsEvent>([&](const SettingsEvent& e) { return e.request == ask; });
  ASSERT_TRUE(info);
  EXPECT_TRUE(info->blocked.empty());
  EXPECT_EQ(info->group_invites, GroupInvites::kContacts);
  EXPECT_FALSE((*alice)->LocalSettings().pending);

  const uint64_t create2 = (*bob)->CreateGroup({74}, "without alice");
  auto group = bob_log.WaitFor<GroupInfoEvent>(
      [&](const GroupInfoEvent& g) { return g.request == create2; });
  ASSERT_TRUE(group);

  // A stranger writes first; alice's client receives it and sends its encrypted DELIVERED
  // receipt back (a 1:1 SEND to bob, stored: bob's client reports it).
  auto stranger = (*bob)->Send(71, "hello from a stranger");
  ASSERT_TRUE(stranger.ok());
  auto stranger_ack = acked(bob_log, *stranger);
  ASSERT_TRUE(stranger_ack);
  EXPECT_TRUE(stranger_ack->adds_contact)
      << "bob's first text to alice after his flagged one failed for good carries the flag";
  auto got = alice_log.WaitFor<MessageEvent>([](const MessageEvent& m) { return m.sender == 72; });
  ASSERT_TRUE(got);
  EXPECT_EQ(got->text, "hello from a stranger");
  auto receipt = bob_log.WaitFor<ReceiptEvent>([&](const ReceiptEvent& r) {
    return r.from == 71 && r.kind == ReceiptKind::kDelivered &&
           std::find(r.message_ids.begin(), r.message_ids.end(), stranger_ack->message_id) !=
               r.message_ids.end();
  });
  ASSERT_TRUE(receipt) << "alice's client never sent its delivery receipt";
  auto receipt_ack = alice_log.WaitFor<SendAckedEvent>(
      [](const SendAckedEvent& a) { return a.recipient == 72 && a.receipt && a.message_id != 0; });
  ASSERT_TRUE(receipt_ack) << "the encrypted copy (a SEND) of alice's receipt";
  EXPECT_FALSE(receipt_ack->adds_contact);

  const uint64_t add = (*bob)->UpdateGroup(group->group_id, {71}, {});
  auto [add_refused, add_done] = outcome(add);
  ASSERT_TRUE(add_refused) << "alice accepts invitations from contacts only and never chose to "
                              "write to bob: her client's receipt must not make him a contact";
  EXPECT_FALSE(add_done);
  EXPECT_EQ(add_refused->what, "group_update");
  EXPECT_EQ(add_refused->status.code(), StatusCode::kForbidden) << add_refused->status.ToString();
  EXPECT_NE(add_refused->status.message().find("71"), std::string::npos);

  auto hello = (*alice)->Send(72, "you may add me now");
  ASSERT_TRUE(hello.ok());
  auto hello_ack = acked(alice_log, *hello);
  ASSERT_TRUE(hello_ack);
  EXPECT_TRUE(hello_ack->adds_contact) << "alice's first text to bob";
  const uint64_t add2 = (*bob)->UpdateGroup(group->group_id, {71}, {});
  auto [add2_refused, added] = outcome(add2);
  ASSERT_TRUE(added) << "alice wrote to bob: he may add her; "
                     << (add2_refused ? add2_refused->status.ToString() : "");
  EXPECT_EQ(added->members, (std::vector<uint64_t>{71, 72, 74}));
  EXPECT_TRUE(alice_log.WaitFor<GroupEvent>(
      [&](const GroupEvent& g) { return g.group_id == group->group_id && g.member; }));

  // Acknowledged once: later texts to bob go without the flag, also after a reopen.
  auto again = (*alice)->Send(72, "second");
  ASSERT_TRUE(again.ok());
  auto again_ack = acked(alice_log, *again);
  ASSERT_TRUE(again_ack);
  EXPECT_FALSE(again_ack->adds_contact);
  alice->reset();  // closes the Client (and its state directory)
  EventLog reopened_log;
  auto reopened = Client::Open(Options(71, &reopened_log));
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  (*reopened)->Start();
  ASSERT_TRUE(Live(reopened_log));
  auto third = (*reopened)->Send(72, "after a restart");
  ASSERT_TRUE(third.ok());
  auto third_ack = acked(reopened_log, *third);
  ASSERT_TRUE(third_ack);
  EXPECT_FALSE(third_ack->adds_contact) << "the acknowledged flag was forgotten at the reopen";
  EXPECT_TRUE(bob_log.WaitFor<MessageEvent>(
      [](const MessageEvent& m) { return m.sender == 71 && m.text == "after a restart"; }));
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
