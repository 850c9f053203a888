// Devices against a real irisd (docs/protocol.md appendix 20): tokens that name a device,
// one session per device, the signed device list set by the primary device, one copy per
// device in a SEND (atomic, checked against the recipient's devices: MISMATCHED_DEVICES),
// copies to one's own other devices, receipts and typing to every device, and removing a
// device (its session ends, its later sessions are refused, its keys go, nobody can write
// to it). At the protocol level: the client library's side is tested with the client.

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "harness/server_process.h"
#include "support/wait_for.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

constexpr uint8_t Op(wire::Opcode o) { return static_cast<uint8_t>(o); }
constexpr uint64_t kAlice = 71, kBob = 72;

std::string TokenFor(const ServerProcess& s, uint64_t user, uint32_t device) {
  static int serial = 0;
  auth::Claims c;
  c.user_id = user;
  c.device = device;
  c.iat = SystemClock::Instance().WallMillis() / 1000;
  c.exp = c.iat + 3600;
  c.jti =
      "dev-" + std::to_string(user) + "-" + std::to_string(device) + "-" + std::to_string(++serial);
  return s.Token(c);
}

// A device logged in and caught up (what it got during catch-up in *caught, when given).
std::unique_ptr<TestClient> Device(const ServerProcess& s, uint64_t user, uint32_t device,
                                   std::vector<v1::Envelope>* caught = nullptr) {
  auto c = TestClient::Connect(s);
  if (!c) {
    ADD_FAILURE() << "cannot connect";
    return nullptr;
  }
  const client::ReceivedFrame f = c->Hello(TokenFor(s, user, device));
  v1::Welcome w;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kWelcome));
  EXPECT_TRUE(w.ParseFromString(f.payload));
  EXPECT_EQ(w.user_id(), user);
  EXPECT_EQ(w.device_id(), device);
  std::vector<v1::Envelope> ignored;
  c->CatchUp(caught != nullptr ? caught : &ignored);
  return c;
}

std::string IdentityKey(uint64_t user, uint32_t device) {
  return "ik-" + std::to_string(user) + "-" + std::to_string(device);
}

void UploadKeys(TestClient& c, uint64_t user, uint32_t device) {
  v1::KeysUpload up;
  up.set_request_id(1);
  up.set_registration_id(device);
  up.set_identity_key(IdentityKey(user, device));
  up.mutable_signed_prekey()->set_id(1);
  up.mutable_signed_prekey()->set_public_key("spk-" + IdentityKey(user, device));
  up.mutable_signed_prekey()->set_signature("sig");
  for (uint32_t i = 1; i <= 3; ++i) {
    v1::PreKey* k = up.add_one_time_prekeys();
    k->set_id(i);
    k->set_public_key("opk-" + std::to_string(i) + "-" + IdentityKey(user, device));
  }
  const client::ReceivedFrame f = c.Ask(wire::Opcode::kKeysUpload, up, {wire::Opcode::kOk});
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kOk)) << ErrorOf(f).message();
}

// SETTINGS with a device list of `devices` (the signature is not the server's to check).
v1::Settings DeviceListSettings(uint64_t user, uint64_t version, std::vector<uint32_t> devices) {
  v1::DeviceList list;
  list.set_user(user);
  list.set_version(version);
  for (uint32_t d : devices) {
    v1::Device* dev = list.add_devices();
    dev->set_id(d);
    dev->set_identity_key(IdentityKey(user, d));
  }
  v1::Settings m;
  m.set_request_id(100 + version);
  m.mutable_device_list()->set_list(list.SerializeAsString());
  m.mutable_device_list()->set_signature("signed by device 1");
  return m;
}

client::ReceivedFrame SetDevices(TestClient& c, uint64_t user, uint64_t version,
                                 std::vector<uint32_t> devices) {
  return c.Ask(wire::Opcode::kSettings, DeviceListSettings(user, version, devices),
               {wire::Opcode::kOk});
}

// A SEND with one copy per device; `body` is prefixed to each copy's device id.
v1::Send Copies(uint64_t request_id, uint64_t to, const std::string& key, const std::string& body,
                std::vector<uint32_t> devices) {
  v1::Send m;
  m.set_request_id(request_id);
  m.set_recipient(to);
  m.set_idempotency_key(key);
  for (uint32_t d : devices) {
    v1::DeviceCopy* c = m.add_copies();
    c->set_device(d);
    c->set_body(body + "@" + std::to_string(d));
  }
  return m;
}

client::ReceivedFrame SendCopies(TestClient& c, const v1::Send& m) {
  return c.Ask(wire::Opcode::kSend, m, {wire::Opcode::kSendAck});
}

v1::SendAck AckOf(const client::ReceivedFrame& f) {
  v1::SendAck a;
  EXPECT_EQ(f.opcode, Op(wire::Opcode::kSendAck)) << ErrorOf(f).message();
  EXPECT_TRUE(a.ParseFromString(f.payload));
  return a;
}

v1::Envelope NextDeliver(TestClient& c) {
  auto f = c.Expect(Op(wire::Opcode::kDeliver), 10'000);
  v1::Deliver d;
  EXPECT_TRUE(d.ParseFromString(f.payload));
  return d.message();
}

std::vector<uint32_t> Ids(const google::protobuf::RepeatedField<uint32_t>& r) {
  return {r.begin(), r.end()};
}

struct Account {
  uint64_t user;
  std::map<uint32_t, std::unique_ptr<TestClient>> devices;
};

TEST(DevicesTest, EveryMessageReachesEachOtherDeviceOnceAndStaleDeviceSetsAreRefused) {
  ServerProcess server;
  server.Start();
  Account alice{kAlice, {}}, bob{kBob, {}};
  for (Account* a : {&alice, &bob}) {
    for (uint32_t d : {1u, 2u, 3u}) {
      a->devices[d] = Device(server, a->user, d);
      ASSERT_TRUE(a->devices[d]);
      UploadKeys(*a->devices[d], a->user, d);
    }
  }
  // Only the primary device sets the list; the list is checked.
  EXPECT_EQ(ErrorOf(SetDevices(*alice.devices[2], kAlice, 1, {1, 2, 3})).code(), 9u);  // FORBIDDEN
  EXPECT_EQ(ErrorOf(SetDevices(*alice.devices[1], kBob, 1, {1, 2, 3})).code(), 1u);    // another's
  EXPECT_EQ(ErrorOf(SetDevices(*alice.devices[1], kAlice, 1, {2, 3})).code(), 1u);  // no device 1
  EXPECT_EQ(ErrorOf(SetDevices(*alice.devices[1], kAlice, 1, {1, 2, 3, 4, 5, 6})).code(),
            5u);  // TOO_LARGE: the primary and at most 4 linked
  for (Account* a : {&alice, &bob}) {
    const client::ReceivedFrame f = SetDevices(*a->devices[1], a->user, 1, {1, 2, 3});
    ASSERT_EQ(f.opcode, Op(wire::Opcode::kOk)) << ErrorOf(f).message();
    // The same list again (a client's retry) is OK; an older or equal version is not.
    EXPECT_EQ(SetDevices(*a->devices[1], a->user, 1, {1, 2, 3}).opcode, Op(wire::Opcode::kOk));
    EXPECT_EQ(ErrorOf(SetDevices(*a->devices[1], a->user, 1, {1, 2})).code(), 1u);
  }

  // Keys: every listed device's bundle, each with its own one-time prekey, and the list.
  v1::KeysFetch fetch;
  fetch.set_request_id(7);
  fetch.set_user(kBob);
  const client::ReceivedFrame kf =
      alice.devices[2]->Ask(wire::Opcode::kKeysFetch, fetch, {wire::Opcode::kKeysBundle});
  v1::KeysBundle bundle;
  ASSERT_EQ(kf.opcode, Op(wire::Opcode::kKeysBundle)) << ErrorOf(kf).message();
  ASSERT_TRUE(bundle.ParseFromString(kf.payload));
  EXPECT_EQ(bundle.device_id(), 1u);
  EXPECT_EQ(bundle.identity_key(), IdentityKey(kBob, 1));
  ASSERT_EQ(bundle.devices_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const uint32_t d = static_cast<uint32_t>(i + 2);
    EXPECT_EQ(bundle.devices(i).device_id(), d);
    EXPECT_EQ(bundle.devices(i).identity_key(), IdentityKey(kBob, d));
    EXPECT_EQ(bundle.devices(i).one_time_prekey().public_key(), "opk-1-" + IdentityKey(kBob, d));
  }
  v1::DeviceList listed;
  ASSERT_TRUE(listed.ParseFromString(bundle.device_list().list()));
  EXPECT_EQ(listed.version(), 1u);
  EXPECT_EQ(listed.devices_size(), 3);

  // A stale device set is refused with the devices missing and extra; nothing is stored,
  // and the retry with the same key and the right copies is a first send.
  const std::string key = NewKey();
  v1::Error stale = ErrorOf(SendCopies(*alice.devices[2], Copies(20, kBob, key, "x", {1, 2})));
  EXPECT_EQ(stale.code(), 14u);  // MISMATCHED_DEVICES
  EXPECT_FALSE(stale.fatal());
  EXPECT_EQ(Ids(stale.missing_devices()), std::vector<uint32_t>{3});
  EXPECT_TRUE(stale.extra_devices().empty());
  stale = ErrorOf(SendCopies(*alice.devices[2], Copies(21, kBob, key, "x", {1, 2, 3, 4})));
  EXPECT_EQ(stale.code(), 14u);
  EXPECT_TRUE(stale.missing_devices().empty());
  EXPECT_EQ(Ids(stale.extra_devices()), std::vector<uint32_t>{4});
  // An older client's single body is device 1's alone: Bob has two more.
  v1::Send legacy;
  legacy.set_request_id(22);
  legacy.set_recipient(kBob);
  legacy.set_idempotency_key(NewKey());
  legacy.set_body("one body");
  stale = ErrorOf(SendCopies(*alice.devices[1], legacy));
  EXPECT_EQ(Ids(stale.missing_devices()), (std::vector<uint32_t>{2, 3}));
  // To oneself: every other device, not the sender's own.
  stale = ErrorOf(SendCopies(*alice.devices[2], Copies(23, kAlice, NewKey(), "n", {1, 2, 3})));
  EXPECT_EQ(Ids(stale.extra_devices()), std::vector<uint32_t>{2});
  const v1::SendAck first =
      AckOf(SendCopies(*alice.devices[2], Copies(24, kBob, key, "x", {1, 2, 3})));
  EXPECT_FALSE(first.duplicate());
  // SEND_ACK names every copy's id, in the order of the copies; the first is message_id.
  ASSERT_EQ(first.copy_ids_size(), 3);
  EXPECT_EQ(first.copy_ids(0), first.message_id());
  for (uint32_t d : {1u, 2u, 3u}) {
    const v1::Envelope e = NextDeliver(*bob.devices[d]);
    EXPECT_EQ(e.id(), first.copy_ids(static_cast<int>(d - 1)));
    EXPECT_EQ(e.body(), "x@" + std::to_string(d));
    EXPECT_EQ(e.sender(), kAlice);
    EXPECT_EQ(e.sender_device(), 2u);
    EXPECT_EQ(e.recipient_device(), d);
  }
  // Dedup is by (sender device, key): the same key from another device is another message.
  const v1::SendAck again =
      AckOf(SendCopies(*alice.devices[2], Copies(25, kBob, key, "x", {1, 2, 3})));
  EXPECT_TRUE(again.duplicate());
  EXPECT_EQ(std::vector<uint64_t>(again.copy_ids().begin(), again.copy_ids().end()),
            std::vector<uint64_t>(first.copy_ids().begin(), first.copy_ids().end()))
      << "a duplicate names the same copies";
  EXPECT_FALSE(
      AckOf(SendCopies(*alice.devices[3], Copies(26, kBob, key, "y", {1, 2, 3}))).duplicate());
  for (uint32_t d : {1u, 2u, 3u})
    EXPECT_EQ(NextDeliver(*bob.devices[d]).body(), "y@" + std::to_string(d));

  // Every device of both users sends kPerDevice messages to the other user and a copy of
  // each to its own other devices; every device then holds exactly the 5 * kPerDevice
  // messages of the five other devices, once each, in each sender's order.
  constexpr int kPerDevice = 4;
  uint64_t request = 1000;
  for (int i = 0; i < kPerDevice; ++i) {
    for (Account* a : {&alice, &bob}) {
      const uint64_t other = a->user == kAlice ? kBob : kAlice;
      for (uint32_t d : {1u, 2u, 3u}) {
        TestClient& c = *a->devices[d];
        const std::string body =
            "m" + std::to_string(a->user) + "." + std::to_string(d) + "." + std::to_string(i);
        AckOf(SendCopies(c, Copies(++request, other, NewKey(), body, {1, 2, 3})));
        std::vector<uint32_t> own;
        for (uint32_t o : {1u, 2u, 3u}) {
          if (o != d) own.push_back(o);
        }
        AckOf(SendCopies(c, Copies(++request, a->user, NewKey(), body, own)));
      }
    }
  }
  for (Account* a : {&alice, &bob}) {
    for (uint32_t d : {1u, 2u, 3u}) {
      SCOPED_TRACE("user " + std::to_string(a->user) + " device " + std::to_string(d));
      std::vector<v1::Envelope> got;
      auto fresh = Device(server, a->user, d, &got);      // replaces the session of device d
      std::map<std::string, std::vector<int>> by_sender;  // "user.device" -> message numbers
      std::set<std::string> bodies;
      for (const v1::Envelope& e : got) {
        if (e.kind() != v1::MESSAGE || e.body().rfind("m", 0) != 0) continue;
        EXPECT_TRUE(e.recipient_device() == d) << e.body();
        EXPECT_TRUE(bodies.insert(e.body()).second) << "twice: " << e.body();
        EXPECT_TRUE(e.body().ends_with("@" + std::to_string(d))) << e.body();
        const std::string from =
            std::to_string(e.sender()) + "." + std::to_string(e.sender_device());
        EXPECT_TRUE(e.body().starts_with("m" + from + ".")) << e.body();
        by_sender[from].push_back(std::stoi(e.body().substr(1 + from.size() + 1)));
      }
      EXPECT_EQ(bodies.size(), 5u * kPerDevice);
      EXPECT_EQ(by_sender.size(), 5u);
      for (const auto& [from, numbers] : by_sender) {
        EXPECT_EQ(numbers, (std::vector<int>{0, 1, 2, 3})) << from;
        EXPECT_NE(from, std::to_string(a->user) + "." + std::to_string(d));
      }
      a->devices[d] = std::move(fresh);
    }
  }

  // A receipt and a typing indicator reach every device of the user.
  v1::Receipt receipt;
  receipt.set_request_id(50);
  receipt.set_to_user(kAlice);
  receipt.set_type(v1::DELIVERED);
  receipt.add_message_ids(1);
  receipt.set_idempotency_key(NewKey());
  EXPECT_EQ(bob.devices[3]->Ask(wire::Opcode::kReceipt, receipt, {wire::Opcode::kOk}).opcode,
            Op(wire::Opcode::kOk));
  for (uint32_t d : {1u, 2u, 3u}) {
    const v1::Envelope e = NextDeliver(*alice.devices[d]);
    EXPECT_EQ(e.kind(), v1::RECEIPT);
    EXPECT_EQ(e.recipient_device(), 0u);
  }
  v1::Typing typing;
  typing.set_user(kAlice);
  typing.set_typing(true);
  ASSERT_TRUE(bob.devices[1]->conn().SendFrame(Op(wire::Opcode::kTyping), typing).ok());
  for (uint32_t d : {1u, 2u, 3u}) {
    v1::Typing t;
    ASSERT_TRUE(t.ParseFromString(alice.devices[d]->Expect(Op(wire::Opcode::kTyping)).payload));
    EXPECT_EQ(t.user(), kBob);
  }
}

TEST(DevicesTest, ARemovedDeviceLosesItsSessionItsKeysAndItsMessages) {
  ServerProcess server;
  server.Start();
  std::map<uint32_t, std::unique_ptr<TestClient>> alice;
  for (uint32_t d : {1u, 2u, 3u}) {
    alice[d] = Device(server, kAlice, d);
    ASSERT_TRUE(alice[d]);
    UploadKeys(*alice[d], kAlice, d);
  }
  auto bob = Device(server, kBob, 1);
  ASSERT_TRUE(bob);
  ASSERT_EQ(SetDevices(*alice[1], kAlice, 1, {1, 2, 3}).opcode, Op(wire::Opcode::kOk));
  EXPECT_FALSE(
      AckOf(SendCopies(*bob, Copies(1, kAlice, NewKey(), "before", {1, 2, 3}))).duplicate());
  for (uint32_t d : {1u, 2u, 3u})
    EXPECT_EQ(NextDeliver(*alice[d]).body(), "before@" + std::to_string(d));

  // Device 3 is removed: its live session ends at once.
  ASSERT_EQ(SetDevices(*alice[1], kAlice, 2, {1, 2}).opcode, Op(wire::Opcode::kOk));
  const v1::Error ended = ErrorOf(alice[3]->Expect(Op(wire::Opcode::kError)));
  EXPECT_EQ(ended.code(), 15u);  // DEVICE_REMOVED
  EXPECT_TRUE(ended.fatal());
  // Its inbox goes: the envelope for it is deleted (the archiver purges it).
  EXPECT_TRUE(PollUntil(
      [&] {
        return FreshMetric(server, "iris_removed_device_envelopes_purged_total").value_or(0) >= 1;
      },
      30'000, 20));
  EXPECT_EQ(FreshMetric(server, "iris_removed_device_envelopes_purged_total"), 1.0);
  // Its next session is ended too, right after WELCOME.
  {
    auto again = TestClient::Connect(server);
    ASSERT_TRUE(again);
    const client::ReceivedFrame w = again->Hello(TokenFor(server, kAlice, 3));
    EXPECT_EQ(w.opcode, Op(wire::Opcode::kWelcome));
    EXPECT_EQ(ErrorOf(again->Expect(Op(wire::Opcode::kError))).code(), 15u);
  }
  // Nobody can write to it: a copy for it is extra, and it is not in the keys.
  const v1::Error extra =
      ErrorOf(SendCopies(*bob, Copies(2, kAlice, NewKey(), "after", {1, 2, 3})));
  EXPECT_EQ(extra.code(), 14u);
  EXPECT_EQ(Ids(extra.extra_devices()), std::vector<uint32_t>{3});
  EXPECT_FALSE(AckOf(SendCopies(*bob, Copies(3, kAlice, NewKey(), "after", {1, 2}))).duplicate());
  for (uint32_t d : {1u, 2u})
    EXPECT_EQ(NextDeliver(*alice[d]).body(), "after@" + std::to_string(d));
  v1::KeysFetch fetch;
  fetch.set_request_id(4);
  fetch.set_user(kAlice);
  v1::KeysBundle bundle;
  ASSERT_TRUE(bundle.ParseFromString(
      bob->Ask(wire::Opcode::kKeysFetch, fetch, {wire::Opcode::kKeysBundle}).payload));
  ASSERT_EQ(bundle.devices_size(), 1);
  EXPECT_EQ(bundle.devices(0).device_id(), 2u);
  // A removed id is never listed again; a new device takes a new id.
  EXPECT_EQ(ErrorOf(SetDevices(*alice[1], kAlice, 3, {1, 2, 3})).code(), 1u);
  // A device that has not uploaded keys cannot be listed: nobody could write to it.
  EXPECT_EQ(ErrorOf(SetDevices(*alice[1], kAlice, 3, {1, 2, 5})).code(), 1u);
  alice[4] = Device(server, kAlice, 4);
  UploadKeys(*alice[4], kAlice, 4);
  ASSERT_EQ(SetDevices(*alice[1], kAlice, 3, {1, 2, 4}).opcode, Op(wire::Opcode::kOk));
  EXPECT_FALSE(AckOf(SendCopies(*bob, Copies(5, kAlice, NewKey(), "new", {1, 2, 4}))).duplicate());
  EXPECT_EQ(NextDeliver(*alice[4]).body(), "new@4");
  // The settings read back carry the list in force.
  v1::SettingsGet get;
  get.set_request_id(6);
  v1::SettingsInfo info;
  ASSERT_TRUE(info.ParseFromString(
      alice[2]->Ask(wire::Opcode::kSettingsGet, get, {wire::Opcode::kSettingsInfo}).payload));
  v1::DeviceList list;
  ASSERT_TRUE(list.ParseFromString(info.device_list().list()));
  EXPECT_EQ(list.version(), 3u);
}

}  // namespace
}  // namespace iris::testing
