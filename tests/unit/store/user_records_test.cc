// Settings, last seen, prekey bundles and groups.
#include <gtest/gtest.h>

#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::MakeEnvelope;
using testing::One;
using testing::TempDir;
using testing::TestOptions;

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

v1::KeysUpload Upload(uint32_t first_prekey, int n, std::string identity = "identity") {
  v1::KeysUpload u;
  u.set_registration_id(77);
  u.set_identity_key(std::move(identity));
  u.mutable_signed_prekey()->set_id(1);
  u.mutable_signed_prekey()->set_public_key("spk");
  u.mutable_signed_prekey()->set_signature("sig");
  for (int i = 0; i < n; ++i) {
    v1::PreKey* k = u.add_one_time_prekeys();
    k->set_id(first_prekey + static_cast<uint32_t>(i));
    k->set_public_key("pk" + std::to_string(first_prekey + i));
  }
  return u;
}

TEST(UserRecordsTest, SettingsDefaultThenRoundTripAndPersist) {
  TempDir dir;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    Result<UserSettings> d = store->GetSettings(5);
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->read_receipts);
    EXPECT_TRUE(d->share_presence);
    ASSERT_TRUE(store->PutSettings(5, UserSettings{false, true}).ok());
    ASSERT_TRUE(store->PutSettings(6, UserSettings{true, false}).ok());
  }
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<UserSettings> s5 = store->GetSettings(5);
  ASSERT_TRUE(s5.ok());
  EXPECT_FALSE(s5->read_receipts);
  EXPECT_TRUE(s5->share_presence);
  Result<UserSettings> s6 = store->GetSettings(6);
  ASSERT_TRUE(s6.ok());
  EXPECT_TRUE(s6->read_receipts);
  EXPECT_FALSE(s6->share_presence);
}

// Consent (docs/protocol.md appendix 19): a block refuses the blocked user's 1:1 messages
// and receipts in the append itself, in the order the block was made, and survives a
// restart; group envelopes are not affected; unblocking lets messages in again.
TEST(UserRecordsTest, ABlockRefusesOneToOneAppendsFromTheBlockedUserOnly) {
  TempDir dir;
  constexpr uint64_t kAlice = 10, kMallory = 11, kBob = 12;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Append(kMallory, "", One(kMallory, kAlice, "before")).ok());
    Result<UserSettings> set = store->UpdateSettings(kAlice, [&](UserSettings& s) {
      s.blocked = {kMallory, kMallory};  // stored once
      return Status::Ok();
    });
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    EXPECT_EQ(set->blocked, std::vector<uint64_t>{kMallory});
    EXPECT_TRUE(set->read_receipts);  // untouched
  }
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<UserSettings> got = store->GetSettings(kAlice);
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->Blocks(kMallory));

  Result<AppendOutcome> refused = store->Append(kMallory, "", One(kMallory, kAlice, "after"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kForbidden);
  std::vector<v1::Envelope> receipt = One(kMallory, kAlice, "receipt");
  receipt[0].set_kind(v1::RECEIPT);
  EXPECT_EQ(store->Append(kMallory, "", std::move(receipt)).status().code(),
            StatusCode::kForbidden);
  // A message to a group both are in, and anybody else's message, still arrive.
  EXPECT_TRUE(store->Append(kMallory, "", {MakeEnvelope(kMallory, kAlice, "group", 77)}).ok());
  EXPECT_TRUE(store->Append(kBob, "", One(kBob, kAlice, "bob")).ok());
  // Mallory's message to somebody else is not Alice's business.
  EXPECT_TRUE(store->Append(kMallory, "", One(kMallory, kBob, "to bob")).ok());

  ASSERT_TRUE(store
                  ->UpdateSettings(kAlice,
                                   [&](UserSettings& s) {
                                     std::erase(s.blocked, kMallory);
                                     return Status::Ok();
                                   })
                  .ok());
  EXPECT_TRUE(store->Append(kMallory, "", One(kMallory, kAlice, "unblocked")).ok());
  Result<std::vector<v1::Envelope>> inbox = testing::ScanAll(*store, kAlice);
  ASSERT_TRUE(inbox.ok());
  std::vector<std::string> bodies;
  for (const v1::Envelope& e : *inbox) bodies.push_back(e.body());
  EXPECT_EQ(bodies, (std::vector<std::string>{"before", "group", "bob", "unblocked"}));
}

// One copy per device (docs/protocol.md appendix 20): the envelopes of one 1:1 message to
// `to`, one per device, from `from`'s device `from_device`.
std::vector<v1::Envelope> PerDevice(uint64_t from, uint32_t from_device, uint64_t to,
                                    std::vector<uint32_t> devices) {
  std::vector<v1::Envelope> out;
  for (uint32_t d : devices) {
    out.push_back(MakeEnvelope(from, to, "copy@" + std::to_string(d)));
    out.back().set_sender_device(from_device);
    out.back().set_recipient_device(d);
  }
  return out;
}

TEST(UserRecordsTest, AOneToOneMessageNeedsOneCopyPerDeviceOfItsRecipient) {
  TempDir dir;
  constexpr uint64_t kAlice = 20, kBob = 21;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    // Before a device list: device 1 alone (an older client's single body counts as it).
    EXPECT_TRUE(store->Append(kBob, "", One(kBob, kAlice, "legacy")).ok());
    EXPECT_TRUE(store->Append(kBob, "", PerDevice(kBob, 1, kAlice, {1})).ok());
    Result<AppendOutcome> r = store->Append(kBob, "", PerDevice(kBob, 1, kAlice, {1, 2}));
    ASSERT_FALSE(r.ok());
    std::vector<uint32_t> missing, extra;
    ASSERT_TRUE(ParseMismatchedDevices(r.status(), &missing, &extra)) << r.status().ToString();
    EXPECT_TRUE(missing.empty());
    EXPECT_EQ(extra, std::vector<uint32_t>{2});
    ASSERT_TRUE(store
                    ->UpdateSettings(kAlice,
                                     [](UserSettings& s) {
                                       s.devices = DeviceBit(1) | DeviceBit(2) | DeviceBit(5);
                                       s.removed_devices = DeviceBit(3);
                                       s.device_list_version = 4;
                                       s.device_list = "signed list";
                                       return Status::Ok();
                                     })
                    .ok());
  }
  auto store = OpenOrDie(TestOptions(dir.path()));  // the list survives a restart
  ASSERT_NE(store, nullptr);
  Result<UserSettings> got = store->GetSettings(kAlice);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->Devices(), DeviceBit(1) | DeviceBit(2) | DeviceBit(5));
  EXPECT_EQ(got->removed_devices, DeviceBit(3));
  EXPECT_EQ(got->device_list_version, 4u);
  EXPECT_EQ(got->device_list, "signed list");

  Result<AppendOutcome> stale = store->Append(kBob, "", PerDevice(kBob, 1, kAlice, {1, 2, 3}));
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.status().code(), StatusCode::kMismatchedDevices);
  std::vector<uint32_t> missing, extra;
  ASSERT_TRUE(ParseMismatchedDevices(stale.status(), &missing, &extra));
  EXPECT_EQ(missing, std::vector<uint32_t>{5});
  EXPECT_EQ(extra, std::vector<uint32_t>{3});
  EXPECT_EQ(store->Append(kBob, "", One(kBob, kAlice, "legacy")).status().code(),
            StatusCode::kMismatchedDevices);
  // To oneself: every device but the sending one; an older client's note to self passes.
  EXPECT_EQ(store->Append(kAlice, "", PerDevice(kAlice, 2, kAlice, {1, 2, 5})).status().code(),
            StatusCode::kMismatchedDevices);
  EXPECT_TRUE(store->Append(kAlice, "", PerDevice(kAlice, 2, kAlice, {1, 5})).ok());
  EXPECT_TRUE(store->Append(kAlice, "", One(kAlice, kAlice, "note")).ok());
  // Receipts and group messages are for every device: not checked.
  std::vector<v1::Envelope> receipt = One(kBob, kAlice, "receipt");
  receipt[0].set_kind(v1::RECEIPT);
  EXPECT_TRUE(store->Append(kBob, "", std::move(receipt)).ok());
  EXPECT_TRUE(store->Append(kBob, "", {MakeEnvelope(kBob, kAlice, "group", 77)}).ok());
  // The right copies go in together, one envelope each.
  Result<AppendOutcome> ok = store->Append(kBob, "", PerDevice(kBob, 3, kAlice, {1, 2, 5}));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  Result<std::vector<v1::Envelope>> inbox = testing::ScanAll(*store, kAlice);
  ASSERT_TRUE(inbox.ok());
  std::vector<std::string> bodies;
  for (const v1::Envelope& e : *inbox) {
    if (e.sender() == kBob && e.sender_device() == 3) bodies.push_back(e.body());
  }
  EXPECT_EQ(bodies, (std::vector<std::string>{"copy@1", "copy@2", "copy@5"}));
}

TEST(UserRecordsTest, EachDeviceHasItsOwnKeysAndAFetchTakesOnePrekeyOfEachListedDevice) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  constexpr uint64_t kAlice = 30;
  for (uint32_t d : {1u, 2u, 7u}) {
    v1::KeysUpload u = Upload(d * 100, 2, "identity-" + std::to_string(d));
    u.set_device_id(d);
    ASSERT_TRUE(store->UploadKeys(kAlice, u).ok());
  }
  // Without a device list only device 1 is fetched.
  Result<v1::KeysBundle> b = store->FetchKeys(kAlice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->identity_key(), "identity-1");
  EXPECT_EQ(b->one_time_prekey().id(), 100u);
  EXPECT_EQ(b->devices_size(), 0);
  ASSERT_TRUE(store
                  ->UpdateSettings(kAlice,
                                   [](UserSettings& s) {
                                     s.devices = DeviceBit(1) | DeviceBit(7);
                                     s.device_list_version = 1;
                                     s.device_list = "list";
                                     return Status::Ok();
                                   })
                  .ok());
  b = store->FetchKeys(kAlice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->device_id(), 1u);
  EXPECT_EQ(b->one_time_prekey().id(), 101u);
  ASSERT_EQ(b->devices_size(), 1);  // device 2 uploaded keys but is not listed
  EXPECT_EQ(b->devices(0).device_id(), 7u);
  EXPECT_EQ(b->devices(0).identity_key(), "identity-7");
  EXPECT_EQ(b->devices(0).one_time_prekey().id(), 700u);
  EXPECT_EQ(b->devices(0).one_time_prekeys_left(), 1u);
  // A removed device's keys go; the others' stay.
  ASSERT_TRUE(store->DropDeviceKeys(kAlice, 7).ok());
  b = store->FetchKeys(kAlice);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->devices_size(), 0);
  EXPECT_FALSE(b->has_one_time_prekey());  // device 1's two are used up
}

TEST(UserRecordsTest, TheBlockListIsCappedAndARefusedChangeWritesNothing) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<UserSettings> full = store->UpdateSettings(5, [](UserSettings& s) {
    for (uint64_t u = 1; u <= UserSettings::kMaxBlocked + 1; ++u) s.blocked.push_back(u + 100);
    s.read_receipts = false;
    return Status::Ok();
  });
  EXPECT_EQ(full.status().code(), StatusCode::kTooLarge);
  Result<UserSettings> refused = store->UpdateSettings(5, [](UserSettings& s) {
    s.share_presence = false;
    return Status(StatusCode::kBadRequest, "no");
  });
  EXPECT_EQ(refused.status().code(), StatusCode::kBadRequest);
  Result<UserSettings> now = store->GetSettings(5);
  ASSERT_TRUE(now.ok());
  EXPECT_TRUE(now->read_receipts);
  EXPECT_TRUE(now->share_presence);
  EXPECT_TRUE(now->blocked.empty());
  // And the cached copy the appends check was not changed either.
  EXPECT_TRUE(store->Append(101, "", One(101, 5, "hello")).ok());
}

Result<AppendOutcome> AppendAddingContact(InboxStore& store, uint64_t sender,
                                          std::vector<v1::Envelope> envelopes) {
  auto promise = std::make_shared<std::promise<Result<AppendOutcome>>>();
  std::future<Result<AppendOutcome>> result = promise->get_future();
  store.AppendAsync(
      sender, "", std::move(envelopes),
      [promise](Result<AppendOutcome> r) { promise->set_value(std::move(r)); }, true);
  return result.get();
}

// The contacts a user has "written to" are recorded with the 1:1 messages whose sender chose
// to write (adds_contact; not group messages or receipts, even when asked), and deleted with
// the recipient's account.
TEST(UserRecordsTest, OneToOneMessagesAddingAContactRecordWhoWroteToWhom) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(AppendAddingContact(*store, 2, One(2, 1, "hi")).ok());
  ASSERT_TRUE(AppendAddingContact(*store, 3, {MakeEnvelope(3, 1, "group", 9)}).ok());
  std::vector<v1::Envelope> receipt = One(4, 1, "receipt");
  receipt[0].set_kind(v1::RECEIPT);
  ASSERT_TRUE(AppendAddingContact(*store, 4, std::move(receipt)).ok());
  ASSERT_TRUE(store->Append(6, "", One(6, 1, "automatic")).ok());  // without adds_contact
  Result<std::vector<uint64_t>> wrote = store->WhoWrote(1, {4, 3, 2, 5, 6});
  ASSERT_TRUE(wrote.ok());
  EXPECT_EQ(*wrote, std::vector<uint64_t>{2});
  Result<std::vector<uint64_t>> other = store->WhoWrote(2, {1});
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->empty());  // 1 never wrote to 2

  ASSERT_TRUE(store->DeleteUser(1).ok());
  wrote = store->WhoWrote(1, {2});
  ASSERT_TRUE(wrote.ok());
  EXPECT_TRUE(wrote->empty());
}

TEST(UserRecordsTest, LastSeenIsZeroUntilSetAndPersists) {
  TempDir dir;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    Result<uint64_t> unknown = store->GetLastSeen(9);
    ASSERT_TRUE(unknown.ok());
    EXPECT_EQ(*unknown, 0u);
    ASSERT_TRUE(store->PutLastSeen(9, 1'700'000'000'123).ok());
  }
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<uint64_t> seen = store->GetLastSeen(9);
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(*seen, 1'700'000'000'123u);
}

TEST(UserRecordsTest, RevocationsPersistAndExpiredJtisAreDropped) {
  TempDir dir;
  constexpr int64_t kNow = 1'800'000'000'000;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->PutRevokedJti("live-jti", kNow + 60'000).ok());
    ASSERT_TRUE(store->PutRevokedJti("old-jti", kNow - 1).ok());
    ASSERT_TRUE(store->PutRevokedUser(7, kNow - 5'000).ok());
    ASSERT_TRUE(store->PutRevokedUser(7, kNow - 9'000).ok());  // earlier: must not win
    ASSERT_TRUE(store->PutRevokedUser(8, kNow).ok());
    EXPECT_EQ(store->PutRevokedJti("", kNow).code(), StatusCode::kBadRequest);
  }
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<StoredRevocations> r = store->LoadRevocations(kNow);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->jtis.size(), 1u);
  EXPECT_EQ(r->jtis[0].first, "live-jti");
  EXPECT_EQ(r->jtis[0].second, kNow + 60'000);
  ASSERT_EQ(r->users.size(), 2u);
  EXPECT_EQ(r->users[0], std::make_pair(uint64_t{7}, kNow - 5'000));
  EXPECT_EQ(r->users[1], std::make_pair(uint64_t{8}, kNow));
  // The expired jti was deleted, not only skipped: a load with an earlier clock misses it.
  Result<StoredRevocations> again = store->LoadRevocations(kNow - 10);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->jtis.size(), 1u);
}

TEST(UserRecordsTest, FetchKeysIsNotFoundBeforeAnyUpload) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<v1::KeysBundle> b = store->FetchKeys(3);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kNotFound);
}

TEST(UserRecordsTest, FetchKeysConsumesOneTimePrekeysInOrderUntilTheyRunOut) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UploadKeys(3, Upload(100, 3)).ok());
  for (uint32_t i = 0; i < 3; ++i) {
    Result<v1::KeysBundle> b = store->FetchKeys(3);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->user(), 3u);
    EXPECT_EQ(b->registration_id(), 77u);
    EXPECT_EQ(b->identity_key(), "identity");
    EXPECT_EQ(b->signed_prekey().signature(), "sig");
    ASSERT_TRUE(b->has_one_time_prekey());
    EXPECT_EQ(b->one_time_prekey().id(), 100 + i);
    EXPECT_EQ(b->one_time_prekeys_left(), 2 - i);
  }
  Result<v1::KeysBundle> empty = store->FetchKeys(3);
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->has_one_time_prekey());
  EXPECT_EQ(empty->one_time_prekeys_left(), 0u);
  EXPECT_EQ(empty->identity_key(), "identity");
}

// Security issue 14: a user's one-time prekey pool is capped (default 1,000); an upload that
// would pass the cap is refused whole with TOO_LARGE and stores nothing, also not its
// identity or signed prekey; once fetches drain the pool below the cap, uploads fit again.
TEST(UserRecordsTest, OneTimePrekeyPoolIsCappedAtAThousand) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  EXPECT_EQ(o.max_one_time_prekeys, 1000u);
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(store->UploadKeys(3, Upload(static_cast<uint32_t>(1 + 100 * i), 100)).ok());
  }
  Status full = store->UploadKeys(3, Upload(5000, 1));
  EXPECT_EQ(full.code(), StatusCode::kTooLarge) << full.ToString();
  EXPECT_NE(full.message().find("1000"), std::string::npos) << full.message();
  // Nothing of the refused upload was stored.
  Result<v1::KeysBundle> b = store->FetchKeys(3);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->identity_key(), "identity");
  EXPECT_EQ(b->one_time_prekey().id(), 1u);
  EXPECT_EQ(b->one_time_prekeys_left(), 999u);
  // One taken: exactly one fits again, two do not.
  EXPECT_EQ(store->UploadKeys(3, Upload(6000, 2)).code(), StatusCode::kTooLarge);
  EXPECT_TRUE(store->UploadKeys(3, Upload(6000, 1)).ok());
  // Another user's pool is separate.
  EXPECT_TRUE(store->UploadKeys(4, Upload(1, 100)).ok());
}

TEST(UserRecordsTest, PrekeyCapIsConfigurableAndSurvivesReopen) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.max_one_time_prekeys = 5;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->UploadKeys(3, Upload(1, 5)).ok());
  }
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->UploadKeys(3, Upload(10, 1)).code(), StatusCode::kTooLarge);
  // Identity-only uploads (no one-time prekeys) are never refused by the cap.
  v1::KeysUpload identity_only = Upload(0, 0, "rotated");
  EXPECT_TRUE(store->UploadKeys(3, identity_only).ok());
}

TEST(UserRecordsTest, UploadWithTheSameIdentityAppendsToThePool) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UploadKeys(3, Upload(1, 2, "new")).ok());
  ASSERT_TRUE(store->UploadKeys(3, Upload(10, 2, "new")).ok());
  // An upload of prekeys only keeps the identity.
  v1::KeysUpload more;
  more.add_one_time_prekeys()->set_id(20);
  ASSERT_TRUE(store->UploadKeys(3, more).ok());
  std::vector<uint32_t> got;
  for (int i = 0; i < 5; ++i) {
    Result<v1::KeysBundle> b = store->FetchKeys(3);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->identity_key(), "new");
    EXPECT_EQ(b->registration_id(), 77u);
    ASSERT_TRUE(b->has_one_time_prekey());
    got.push_back(b->one_time_prekey().id());
  }
  EXPECT_EQ(got, (std::vector<uint32_t>{1, 2, 10, 11, 20}));
}

// A reinstall uploads a new identity: the prekeys (one-time and signed) of the old
// installation are gone at once, so no fetcher is handed a key whose private half is lost.
TEST(UserRecordsTest, NewIdentityClearsTheOldPoolAndSignedPrekey) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UploadKeys(3, Upload(1, 50, "old")).ok());
  ASSERT_TRUE(store->UploadKeys(4, Upload(1, 2, "other")).ok());
  v1::KeysUpload fresh = Upload(1, 0, "new");  // identity only: no signed prekey either
  fresh.clear_signed_prekey();
  ASSERT_TRUE(store->UploadKeys(3, fresh).ok());
  Result<v1::KeysBundle> b = store->FetchKeys(3);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->identity_key(), "new");
  EXPECT_FALSE(b->has_one_time_prekey());
  EXPECT_EQ(b->one_time_prekeys_left(), 0u);
  EXPECT_FALSE(b->has_signed_prekey());
  // The new installation's keys (ids reused from 1) are the only ones handed out.
  v1::KeysUpload keys = Upload(1, 2, "new");
  keys.mutable_signed_prekey()->set_public_key("spk-new");
  ASSERT_TRUE(store->UploadKeys(3, keys).ok());
  b = store->FetchKeys(3);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->one_time_prekey().public_key(), "pk1");
  EXPECT_EQ(b->signed_prekey().public_key(), "spk-new");
  EXPECT_EQ(b->one_time_prekeys_left(), 1u);
  // The whole pool fits again (the old 50 no longer count against the cap)...
  for (int i = 0; i < 9; ++i) {
    ASSERT_TRUE(
        store->UploadKeys(3, Upload(static_cast<uint32_t>(100 + 100 * i), 100, "new")).ok());
  }
  EXPECT_TRUE(store->UploadKeys(3, Upload(5000, 99, "new")).ok());
  // ...and another user's pool is untouched.
  b = store->FetchKeys(4);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->identity_key(), "other");
  EXPECT_EQ(b->one_time_prekeys_left(), 1u);
}

TEST(UserRecordsTest, ConcurrentFetchersNeverGetTheSamePrekey) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UploadKeys(3, Upload(1, 100)).ok());
  std::mutex mu;
  std::vector<uint32_t> handed_out;
  int without = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        Result<v1::KeysBundle> b = store->FetchKeys(3);
        ASSERT_TRUE(b.ok());
        std::lock_guard<std::mutex> lock(mu);
        if (b->has_one_time_prekey()) {
          handed_out.push_back(b->one_time_prekey().id());
        } else {
          ++without;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(handed_out.size(), 100u);
  EXPECT_EQ(without, 60);
  EXPECT_EQ(std::set<uint32_t>(handed_out.begin(), handed_out.end()).size(), 100u);
}

TEST(UserRecordsTest, ConsumedPrekeysStayConsumedAfterRestart) {
  TempDir dir;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->UploadKeys(3, Upload(1, 3)).ok());
    ASSERT_TRUE(store->FetchKeys(3).ok());
  }
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<v1::KeysBundle> b = store->FetchKeys(3);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->one_time_prekey().id(), 2u);
  EXPECT_EQ(b->one_time_prekeys_left(), 1u);
}

TEST(UserRecordsTest, GroupsRoundTripWithoutRequestId) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  Result<v1::GroupInfo> missing = store->GetGroup(11);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  v1::GroupInfo g;
  g.set_request_id(99);
  g.set_group_id(11);
  g.set_kind(v1::E2EE);
  g.set_owner(1);
  g.add_members(1);
  g.add_members(2);
  g.set_version(3);
  ASSERT_TRUE(store->PutGroup(g).ok());
  Result<v1::GroupInfo> got = store->GetGroup(11);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->request_id(), 0u);
  EXPECT_EQ(got->owner(), 1u);
  EXPECT_EQ(got->members_size(), 2);
  EXPECT_EQ(got->version(), 3u);
  g.set_group_id(0);
  EXPECT_EQ(store->PutGroup(g).code(), StatusCode::kBadRequest);
}

TEST(UserRecordsTest, WritesAfterStopAreUnavailable) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->UploadKeys(3, Upload(1, 3)).ok());
  store->Stop();
  EXPECT_EQ(store->PutSettings(1, UserSettings{}).code(), StatusCode::kUnavailable);
  EXPECT_EQ(store->PutLastSeen(1, 1).code(), StatusCode::kUnavailable);
  EXPECT_EQ(store->UploadKeys(1, Upload(1, 1)).code(), StatusCode::kUnavailable);
  v1::GroupInfo g;
  g.set_group_id(5);
  EXPECT_EQ(store->PutGroup(g).code(), StatusCode::kUnavailable);
  Result<v1::KeysBundle> fetch = store->FetchKeys(3);
  ASSERT_FALSE(fetch.ok());
  EXPECT_EQ(fetch.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace iris::store
