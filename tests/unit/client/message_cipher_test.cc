// The Signal Protocol engine between two in-process accounts (no server): X3DH from a
// bundle, Double Ratchet both ways, out-of-order delivery, tampering, identity changes,
// persistence across reopen.
#include "client/e2ee/message_cipher.h"

#include <fingerprint.h>
#include <gtest/gtest.h>
#include <signal_protocol.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "client/e2ee/body_format.h"
#include "client/e2ee/crypto_provider.h"
#include "client/e2ee/safety_number.h"

namespace iris::client::e2ee {
namespace {

class Account {
 public:
  explicit Account(const std::string& path) : path_(path) { Reopen(); }
  void Reopen() {
    cipher_.reset();
    store_.reset();
    auto s = LocalStore::Open(path_);
    EXPECT_TRUE(s.ok());
    store_ = std::move(*s);
    auto c = MessageCipher::Open(*store_);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    cipher_ = std::move(*c);
  }
  // What the server would hand out: identity, signed prekey, the first one-time prekey.
  v1::KeysBundle Bundle(uint64_t user, uint32_t prekeys) {
    auto up = cipher_->PrepareUpload(prekeys);
    EXPECT_TRUE(up.ok());
    v1::KeysBundle b;
    b.set_user(user);
    b.set_registration_id(up->registration_id());
    b.set_identity_key(up->identity_key());
    *b.mutable_signed_prekey() = up->signed_prekey();
    if (up->one_time_prekeys_size() > 0) *b.mutable_one_time_prekey() = up->one_time_prekeys(0);
    return b;
  }
  MessageCipher& c() { return *cipher_; }
  LocalStore& store() { return *store_; }

 private:
  std::string path_;
  std::unique_ptr<LocalStore> store_;
  std::unique_ptr<MessageCipher> cipher_;
};

class MessageCipherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iris-cipher-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    alice_ = std::make_unique<Account>(dir_ + "/alice.db");
    bob_ = std::make_unique<Account>(dir_ + "/bob.db");
  }
  void TearDown() override {
    alice_.reset();
    bob_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
  std::unique_ptr<Account> alice_, bob_;
  static constexpr uint64_t kAlice = 1, kBob = 2;
};

TEST_F(MessageCipherTest, X3dhThenRatchetBothWays) {
  ASSERT_FALSE(alice_->c().HasSession(kBob));
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 3)).ok());
  ASSERT_TRUE(alice_->c().HasSession(kBob));
  auto body = alice_->c().Encrypt(kBob, "hello bob");
  ASSERT_TRUE(body.ok());
  EXPECT_EQ(body->find("hello bob"), std::string::npos) << "ciphertext only";
  EXPECT_EQ((*body)[1], static_cast<char>(kBodyPreKeyMessage));
  const uint32_t before = bob_->store().CountPreKeys();
  auto got = bob_->c().Decrypt(kAlice, *body);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, "hello bob");
  EXPECT_TRUE(got->prekey_message);
  EXPECT_TRUE(got->consumed_prekey);
  EXPECT_EQ(bob_->store().CountPreKeys(), before - 1) << "a one-time prekey is used once";

  auto reply = bob_->c().Encrypt(kAlice, "hi alice");
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ((*reply)[1], static_cast<char>(kBodySignalMessage));
  auto back = alice_->c().Decrypt(kBob, *reply);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->text, "hi alice");
  EXPECT_FALSE(back->prekey_message);
}

TEST_F(MessageCipherTest, OutOfOrderMessagesDecryptAndReplaysAreRejected) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  std::vector<std::string> bodies;
  for (int i = 0; i < 4; ++i) bodies.push_back(*alice_->c().Encrypt(kBob, "m" + std::to_string(i)));
  for (int i : {2, 0, 3, 1}) {
    auto got = bob_->c().Decrypt(kAlice, bodies[static_cast<size_t>(i)]);
    ASSERT_TRUE(got.ok()) << i << ": " << got.status().ToString();
    EXPECT_EQ(got->text, "m" + std::to_string(i));
  }
  auto again = bob_->c().Decrypt(kAlice, bodies[0]);
  EXPECT_EQ(again.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(again.status().message().find("duplicate"), std::string::npos);
}

TEST_F(MessageCipherTest, SimultaneousFirstMessagesFromBothSidesDecrypt) {
  // Both fetch the other's bundle and write before reading anything.
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 2)).ok());
  ASSERT_TRUE(bob_->c().ProcessBundle(alice_->Bundle(kAlice, 2)).ok());
  const std::string a1 = *alice_->c().Encrypt(kBob, "a1");
  const std::string b1 = *bob_->c().Encrypt(kAlice, "b1");
  auto got_b = bob_->c().Decrypt(kAlice, a1);
  auto got_a = alice_->c().Decrypt(kBob, b1);
  ASSERT_TRUE(got_b.ok()) << got_b.status().ToString();
  ASSERT_TRUE(got_a.ok()) << got_a.status().ToString();
  // The conversation goes on both ways.
  for (int i = 0; i < 3; ++i) {
    auto x = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "a" + std::to_string(i + 2)));
    ASSERT_TRUE(x.ok()) << i << ": " << x.status().ToString();
    auto y = alice_->c().Decrypt(kBob, *bob_->c().Encrypt(kAlice, "b" + std::to_string(i + 2)));
    ASSERT_TRUE(y.ok()) << i << ": " << y.status().ToString();
    EXPECT_EQ(y->text, "b" + std::to_string(i + 2));
  }
}

TEST_F(MessageCipherTest, WorksWithoutOneTimePreKey) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 0)).ok());
  auto got = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "no otk"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, "no otk");
  EXPECT_FALSE(got->consumed_prekey);
}

TEST_F(MessageCipherTest, TamperedCiphertextFailsAndLeavesSessionUsable) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  ASSERT_TRUE(bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "first")).ok());
  ASSERT_TRUE(alice_->c().Decrypt(kBob, *bob_->c().Encrypt(kAlice, "ack")).ok());
  std::string body = *alice_->c().Encrypt(kBob, "second");
  std::string bad = body;
  bad[bad.size() / 2] ^= 0x40;
  EXPECT_EQ(bob_->c().Decrypt(kAlice, bad).status().code(), StatusCode::kBadRequest);
  auto good = bob_->c().Decrypt(kAlice, body);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_EQ(good->text, "second");
  EXPECT_EQ(bob_->c().Decrypt(kAlice, "not a body").status().code(), StatusCode::kBadRequest);
}

// An unverified contact's new key (a re-install) replaces the old one: Signal's model;
// the client reports the change (IdentityChangedEvent).
TEST_F(MessageCipherTest, ChangedIdentityOfUnverifiedContactReplacesTheOldKey) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  Account bob2(dir_ + "/bob2.db");  // Bob re-installed: a new identity key
  const v1::KeysBundle b2 = bob2.Bundle(kBob, 1);
  ASSERT_TRUE(alice_->c().ProcessBundle(b2).ok());
  EXPECT_EQ(alice_->c().SavedIdentity(kBob), b2.identity_key());
  auto got = bob2.c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "to the new bob"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
}

// Once verified, a contact's key is pinned: a bundle with another key (what a malicious
// server would hand out) is refused, a wrong fingerprint approves nothing, and only the
// exact new fingerprint (key fingerprint or safety number) lets the new key in - which then
// is pinned in turn.
TEST_F(MessageCipherTest, VerifiedIdentityRefusesOtherKeysUntilExactFingerprintTrusted) {
  EXPECT_EQ(alice_->c().MarkVerified(kBob).code(), StatusCode::kNotFound) << "no key yet";
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  ASSERT_TRUE(alice_->c().MarkVerified(kBob).ok());
  auto c = alice_->c().Contact(kBob);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->verified);

  Account forged(dir_ + "/forged.db");
  const v1::KeysBundle fb = forged.Bundle(kBob, 1);
  EXPECT_EQ(alice_->c().ProcessBundle(fb).code(), StatusCode::kForbidden);
  ASSERT_TRUE(alice_->c().NoteRefusedIdentity(kBob, fb.identity_key()).ok());
  // Still talking to the real Bob's key.
  EXPECT_EQ(alice_->c().SavedIdentity(kBob), bob_->Bundle(kBob, 0).identity_key());

  EXPECT_EQ(alice_->c().TrustIdentity(kAlice, kBob, "").status().code(), StatusCode::kBadRequest);
  const std::string wrong(64, 'a');
  auto bad = alice_->c().TrustIdentity(kAlice, kBob, wrong);
  EXPECT_EQ(bad.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(bad.status().message().find(KeyFingerprint(fb.identity_key())), std::string::npos)
      << bad.status().message();
  EXPECT_EQ(alice_->c().ProcessBundle(fb).code(), StatusCode::kForbidden);

  // The safety number computed with the new key, typed with spaces, approves it.
  auto sn = alice_->c().SafetyNumberFor(kAlice, kBob, fb.identity_key());
  ASSERT_TRUE(sn.ok());
  auto ok = alice_->c().TrustIdentity(kAlice, kBob, sn->Grouped());
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(*ok);
  EXPECT_FALSE(alice_->c().HasSession(kBob)) << "sessions with the old key are dropped";
  ASSERT_TRUE(alice_->c().ProcessBundle(fb).ok());
  // The approved key is pinned: yet another key is refused.
  Account third(dir_ + "/third.db");
  EXPECT_EQ(alice_->c().ProcessBundle(third.Bundle(kBob, 1)).code(), StatusCode::kForbidden);
}

// Our safety number is Signal's NumericFingerprint: it equals what libsignal-protocol-c's
// own fingerprint generator (5200 iterations, version 0) displays, on both sides.
TEST_F(MessageCipherTest, SafetyNumberMatchesLibsignalFingerprintGenerator) {
  const std::string a = alice_->c().LocalIdentityKey();
  const std::string b = bob_->c().LocalIdentityKey();
  const SafetyNumber ours = ComputeSafetyNumber(kAlice, a, kBob, b);
  ASSERT_EQ(ours.digits.size(), 60u);
  EXPECT_EQ(ours.Grouped().size(), 71u);
  const SafetyNumber theirs = ComputeSafetyNumber(kBob, b, kAlice, a);
  EXPECT_EQ(ours.digits, theirs.digits) << "both users see the same number";
  EXPECT_EQ(ours.scannable, theirs.scannable);
  EXPECT_EQ(ours.scannable.rfind("iris-sn:v0:", 0), 0u);
  EXPECT_EQ(ours.scannable.size(), 11u + 128u);

  signal_context* ctx = nullptr;
  ASSERT_EQ(signal_context_create(&ctx, nullptr), 0);
  const signal_crypto_provider provider = OpenSslCryptoProvider();
  ASSERT_EQ(signal_context_set_crypto_provider(ctx, &provider), 0);
  ec_public_key *ka = nullptr, *kb = nullptr;
  ASSERT_EQ(curve_decode_point(&ka, reinterpret_cast<const uint8_t*>(a.data()), a.size(), ctx), 0);
  ASSERT_EQ(curve_decode_point(&kb, reinterpret_cast<const uint8_t*>(b.data()), b.size(), ctx), 0);
  fingerprint_generator* gen = nullptr;
  ASSERT_EQ(fingerprint_generator_create(&gen, kSafetyNumberIterations, 1, ctx), 0);
  fingerprint* fp = nullptr;
  ASSERT_EQ(fingerprint_generator_create_for(gen, "1", ka, "2", kb, &fp), 0);
  EXPECT_EQ(ours.digits,
            std::string(displayable_fingerprint_text(fingerprint_get_displayable(fp))));
  SIGNAL_UNREF(fp);
  fingerprint_generator_free(gen);
  SIGNAL_UNREF(ka);
  SIGNAL_UNREF(kb);
  signal_context_destroy(ctx);

  // Another key gives another number.
  Account other(dir_ + "/other.db");
  EXPECT_NE(ComputeSafetyNumber(kAlice, a, kBob, other.c().LocalIdentityKey()).digits, ours.digits);
}

// Devices (docs/protocol.md appendix 20): the primary device signs the list; a client
// accepts it only with that device's key, so a device the server slipped in is refused.
TEST_F(MessageCipherTest, DeviceListVerifiesOnlyAsSignedByThePrimaryDevice) {
  Account linked(dir_ + "/alice-2.db");
  const std::string primary_key = alice_->c().LocalIdentityKey();
  v1::DeviceList list;
  list.set_user(kAlice);
  list.set_version(3);
  v1::Device* d1 = list.add_devices();
  d1->set_id(1);
  d1->set_identity_key(primary_key);
  v1::Device* d2 = list.add_devices();
  d2->set_id(2);
  d2->set_identity_key(linked.c().LocalIdentityKey());
  auto signed_list = alice_->c().SignDeviceList(list);
  ASSERT_TRUE(signed_list.ok()) << signed_list.status().ToString();
  EXPECT_EQ(signed_list->signature().size(), 64u);

  auto got = bob_->c().VerifyDeviceList(*signed_list, kAlice, primary_key);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_EQ(got->devices_size(), 2);
  EXPECT_EQ(got->devices(1).identity_key(), linked.c().LocalIdentityKey());

  // A forged entry: the server adds its own device to the signed bytes.
  v1::DeviceList forged = list;
  v1::Device* evil = forged.add_devices();
  evil->set_id(9);
  evil->set_identity_key(bob_->c().LocalIdentityKey());
  v1::SignedDeviceList tampered = *signed_list;
  tampered.set_list(forged.SerializeAsString());
  EXPECT_EQ(bob_->c().VerifyDeviceList(tampered, kAlice, primary_key).status().code(),
            StatusCode::kForbidden);
  // ... or signs it with a key of its own (here: the linked device's), or claims it is
  // another user's list, or hands out a list whose device 1 is not the trusted key.
  auto self_signed = linked.c().SignDeviceList(forged);
  ASSERT_TRUE(self_signed.ok());
  EXPECT_EQ(bob_->c().VerifyDeviceList(*self_signed, kAlice, primary_key).status().code(),
            StatusCode::kForbidden);
  EXPECT_EQ(bob_->c().VerifyDeviceList(*signed_list, kBob, primary_key).status().code(),
            StatusCode::kForbidden);
  v1::DeviceList swapped = list;
  swapped.mutable_devices(0)->set_identity_key(linked.c().LocalIdentityKey());
  auto swapped_signed = alice_->c().SignDeviceList(swapped);
  ASSERT_TRUE(swapped_signed.ok());
  EXPECT_EQ(bob_->c().VerifyDeviceList(*swapped_signed, kAlice, primary_key).status().code(),
            StatusCode::kForbidden);
  // A signature over other bytes, and no key at all.
  v1::SignedDeviceList bad_sig = *signed_list;
  bad_sig.mutable_signature()->at(5) ^= 1;
  EXPECT_EQ(bob_->c().VerifyDeviceList(bad_sig, kAlice, primary_key).status().code(),
            StatusCode::kForbidden);
  EXPECT_EQ(bob_->c().VerifyDeviceList(*signed_list, kAlice, "").status().code(),
            StatusCode::kBadRequest);

  // The kept list: the devices written to, no rollback to an older version, no second list
  // under the same version; a newer list without a device drops its saved identity.
  EXPECT_EQ(bob_->c().DevicesOf(kAlice), (std::vector<uint32_t>{1}));
  ASSERT_TRUE(bob_->c().SaveDeviceList(*got).ok());
  EXPECT_EQ(bob_->c().DevicesOf(kAlice), (std::vector<uint32_t>{1, 2}));
  v1::DeviceList older = list;
  older.set_version(2);
  older.mutable_devices()->RemoveLast();
  auto kept = bob_->c().SaveDeviceList(older);
  ASSERT_TRUE(kept.ok());
  EXPECT_FALSE(*kept) << "an older list is ignored";
  v1::DeviceList same_version = older;
  same_version.set_version(3);
  EXPECT_EQ(bob_->c().SaveDeviceList(same_version).status().code(), StatusCode::kForbidden);
  EXPECT_EQ(bob_->c().DevicesOf(kAlice), (std::vector<uint32_t>{1, 2}));
  v1::DeviceList newer = older;
  newer.set_version(4);
  auto replaced = bob_->c().SaveDeviceList(newer);
  ASSERT_TRUE(replaced.ok());
  EXPECT_TRUE(*replaced);
  EXPECT_EQ(bob_->c().DevicesOf(kAlice), (std::vector<uint32_t>{1}));
}

TEST_F(MessageCipherTest, StateSurvivesReopen) {
  const std::string fp = alice_->c().IdentityFingerprint();
  EXPECT_EQ(fp.size(), 64u);
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 2)).ok());
  ASSERT_TRUE(bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "one")).ok());
  alice_->Reopen();
  bob_->Reopen();
  EXPECT_EQ(alice_->c().IdentityFingerprint(), fp);
  auto got = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "two"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, "two");
}

TEST_F(MessageCipherTest, UploadsFreshPreKeyIdsEachTime) {
  auto a = alice_->c().PrepareUpload(10);
  auto b = alice_->c().PrepareUpload(10);
  ASSERT_TRUE(a.ok() && b.ok());
  std::set<uint32_t> ids;
  for (const auto& k : a->one_time_prekeys()) ids.insert(k.id());
  for (const auto& k : b->one_time_prekeys()) ids.insert(k.id());
  EXPECT_EQ(ids.size(), 20u);
  EXPECT_EQ(alice_->store().CountPreKeys(), 20u);
  EXPECT_EQ(a->identity_key(), b->identity_key());
  EXPECT_EQ(alice_->c().PrepareUpload(101).status().code(), StatusCode::kBadRequest);
}

// Issue 18: a reinstall must not reuse the prekey ids of the installation before it, so ids
// start at a random point of libsignal's range.
TEST_F(MessageCipherTest, FreshInstallsStartPreKeyIdsAtRandomPoints) {
  auto a = alice_->c().PrepareUpload(3);
  auto b = bob_->c().PrepareUpload(3);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->one_time_prekeys(0).id(), b->one_time_prekeys(0).id());
  EXPECT_NE(a->signed_prekey().id(), b->signed_prekey().id());
  for (const auto* up : {&*a, &*b}) {
    EXPECT_GE(up->signed_prekey().id(), 1u);
    EXPECT_LE(up->signed_prekey().id(), 0xFFFFFEu);
    for (const auto& k : up->one_time_prekeys()) {
      EXPECT_GE(k.id(), 1u);
      EXPECT_LE(k.id(), 0xFFFFFEu);
    }
  }
  // Not both the old fixed start (1) either.
  EXPECT_FALSE(a->one_time_prekeys(0).id() == 1 && b->one_time_prekeys(0).id() == 1);
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Issue 18: the signed prekey rotates when due; the previous private key stays for a grace
// period so a first message built from the old bundle still decrypts, then it is deleted.
TEST_F(MessageCipherTest, SignedPreKeyRotatesAndKeepsThePreviousForTheGracePeriod) {
  constexpr int64_t kWeek = 7 * 24 * 3600 * 1000LL, kGrace = 30 * 24 * 3600 * 1000LL;
  const int64_t t0 = NowMs();
  const uint32_t old_id = bob_->c().SignedPreKeyId();
  auto not_due = bob_->c().RotateSignedPreKeyIfDue(t0 + 1000, kWeek, kGrace);
  ASSERT_TRUE(not_due.ok());
  EXPECT_FALSE(*not_due);
  const v1::KeysBundle old_bundle = bob_->Bundle(kBob, 1);
  auto rotated = bob_->c().RotateSignedPreKeyIfDue(t0 + kWeek + 1000, kWeek, kGrace);
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  EXPECT_TRUE(*rotated);
  const uint32_t new_id = bob_->c().SignedPreKeyId();
  EXPECT_EQ(new_id, old_id == 0xFFFFFEu ? 1u : old_id + 1);
  EXPECT_EQ(bob_->Bundle(kBob, 0).signed_prekey().id(), new_id);
  // A session set up from the old bundle (in flight during the rotation) still works.
  ASSERT_TRUE(alice_->c().ProcessBundle(old_bundle).ok());
  auto got = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "from the old bundle"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->text, "from the old bundle");
  auto kept = bob_->store().LoadSignedPreKey(old_id);
  ASSERT_TRUE(kept.ok() && kept->has_value());
  // After the grace period the old private key is gone; the current one stays.
  auto later =
      bob_->c().RotateSignedPreKeyIfDue(t0 + kWeek + kGrace + 2000, kWeek + kGrace, kGrace);
  ASSERT_TRUE(later.ok());
  EXPECT_FALSE(*later);
  auto gone = bob_->store().LoadSignedPreKey(old_id);
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  auto current = bob_->store().LoadSignedPreKey(new_id);
  ASSERT_TRUE(current.ok() && current->has_value());
}

// Issue 18: the sender's clock and a per-conversation counter travel inside the ciphertext;
// the recipient reports a gap (a message dropped by the server) and a late arrival.
TEST_F(MessageCipherTest, ConversationCounterReportsGapsAndReordering) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  std::vector<std::string> sent;
  for (int i = 1; i <= 4; ++i) sent.push_back(*alice_->c().Encrypt(kBob, "m" + std::to_string(i)));
  const int64_t before = NowMs();
  auto m1 = bob_->c().Decrypt(kAlice, sent[0]);
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  EXPECT_EQ(m1->counter, 1u);
  EXPECT_EQ(m1->missing, 0u);
  EXPECT_FALSE(m1->reordered);
  EXPECT_LE(static_cast<int64_t>(m1->sender_ms), before);
  EXPECT_GT(m1->sender_ms, 0u);
  auto m3 = bob_->c().Decrypt(kAlice, sent[2]);
  ASSERT_TRUE(m3.ok());
  EXPECT_EQ(m3->text, "m3");
  EXPECT_EQ(m3->missing, 1u);
  auto m2 = bob_->c().Decrypt(kAlice, sent[1]);
  ASSERT_TRUE(m2.ok());
  EXPECT_TRUE(m2->reordered);
  EXPECT_EQ(m2->missing, 0u);
  auto m4 = bob_->c().Decrypt(kAlice, sent[3]);
  ASSERT_TRUE(m4.ok());
  EXPECT_EQ(m4->missing, 0u);
  EXPECT_FALSE(m4->reordered);
  // A receipt is content of its own type, and counts in the same conversation.
  v1::ReceiptBody r;
  r.set_type(v1::READ);
  r.add_message_ids(42);
  auto sealed =
      bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, r.SerializeAsString(), kContentReceipt));
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->content_type, kContentReceipt);
  EXPECT_EQ(sealed->counter, 5u);
  v1::ReceiptBody back;
  ASSERT_TRUE(back.ParseFromString(sealed->text));
  EXPECT_EQ(back.message_ids(0), 42u);
}

// A control message (session reset) is content type 0x03 of format 2: it decrypts as
// control (no text), carries counter 0 and neither advances nor checks the conversation
// counter, so the user's messages around it show no gap and no reordering.
TEST_F(MessageCipherTest, ControlContentDoesNotTouchTheConversationCounter) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  auto m1 = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "m1"));
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  EXPECT_EQ(m1->counter, 1u);
  ControlContent ctl;
  ctl.message_ids = {11, 12};
  auto body = alice_->c().EncryptControl(kBob, ctl);
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  auto got = bob_->c().Decrypt(kAlice, *body);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->content_type, kContentControl);
  ASSERT_TRUE(got->control.has_value());
  EXPECT_EQ(got->control->message_ids, ctl.message_ids);
  EXPECT_TRUE(got->text.empty());
  EXPECT_EQ(got->counter, 0u);
  EXPECT_EQ(got->missing, 0u);
  EXPECT_FALSE(got->reordered);
  // The next text is counter 2 (the control took none) and counts as neither late nor gapped;
  // a control message lost on the way would not show as a gap either.
  (void)alice_->c().EncryptControl(kBob, ctl);
  auto m2 = bob_->c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "m2"));
  ASSERT_TRUE(m2.ok()) << m2.status().ToString();
  EXPECT_EQ(m2->content_type, kContentText);
  EXPECT_FALSE(m2->control.has_value());
  EXPECT_EQ(m2->text, "m2");
  EXPECT_EQ(m2->counter, 2u);
  EXPECT_EQ(m2->missing, 0u);
  EXPECT_FALSE(m2->reordered);
}

// Sender Keys (docs/protocol.md, "Client-side group encryption"): the distribution travels
// inside a pairwise message (content type 0x04, no conversation counter); a group message
// is one body of type 0x04 that every holder of the sender key decrypts; after a rotation
// the old holder cannot decrypt, a holder of the new distribution can.
TEST_F(MessageCipherTest, SenderKeysDistributeEncryptOnceAndRotate) {
  constexpr uint64_t kGroup = 0xfeedbeef12345ULL;
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  auto skdm = alice_->c().SenderKeyDistributionFor(kGroup, kAlice);
  ASSERT_TRUE(skdm.ok()) << skdm.status().ToString();
  EXPECT_TRUE(alice_->c().HasSenderKey(kGroup, kAlice));
  auto sealed =
      alice_->c().Encrypt(kBob, EncodeSenderKeyDistribution({kGroup, *skdm}), kContentSenderKey);
  ASSERT_TRUE(sealed.ok());
  auto opened = bob_->c().Decrypt(kAlice, *sealed);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->content_type, kContentSenderKey);
  EXPECT_EQ(opened->counter, 0u) << "a distribution does not advance the conversation counter";
  auto dist = DecodeSenderKeyDistribution(opened->text);
  ASSERT_TRUE(dist.ok());
  EXPECT_EQ(dist->group_id, kGroup);
  ASSERT_TRUE(bob_->c().ProcessSenderKeyDistribution(kAlice, *dist).ok());

  auto m1 = alice_->c().EncryptGroup(kGroup, kAlice, "to the group");
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  EXPECT_EQ((*m1)[1], static_cast<char>(kBodySenderKeyMessage));
  EXPECT_EQ(m1->find("to the group"), std::string::npos) << "ciphertext only";
  auto g1 = bob_->c().DecryptGroup(kGroup, kAlice, *m1);
  ASSERT_TRUE(g1.ok()) << g1.status().ToString();
  EXPECT_EQ(g1->text, "to the group");
  EXPECT_FALSE(bob_->c().DecryptGroup(kGroup, kAlice, *m1).ok()) << "a replay";
  EXPECT_FALSE(bob_->c().DecryptGroup(kGroup + 1, kAlice, *m1).ok()) << "another group's key";

  // Rotation: Bob (who "left") keeps the old key and cannot read the new one's messages.
  ASSERT_TRUE(alice_->c().RotateSenderKey(kGroup, kAlice).ok());
  EXPECT_FALSE(alice_->c().HasSenderKey(kGroup, kAlice));
  auto fresh = alice_->c().SenderKeyDistributionFor(kGroup, kAlice);
  ASSERT_TRUE(fresh.ok());
  EXPECT_NE(*fresh, *skdm);
  auto m2 = alice_->c().EncryptGroup(kGroup, kAlice, "after rotation");
  ASSERT_TRUE(m2.ok());
  auto g2 = bob_->c().DecryptGroup(kGroup, kAlice, *m2);
  ASSERT_FALSE(g2.ok());
  EXPECT_NE(g2.status().message().find("no sender key"), std::string::npos)
      << g2.status().ToString();
  EXPECT_EQ(bob_->c().last_decrypt_error(), SG_ERR_NO_SESSION);
  // Given the new distribution, it decrypts (it starts at the key's current iteration).
  ASSERT_TRUE(bob_->c().ProcessSenderKeyDistribution(kAlice, {kGroup, *fresh}).ok());
  auto m3 = alice_->c().EncryptGroup(kGroup, kAlice, "welcome back");
  ASSERT_TRUE(m3.ok());
  auto g3 = bob_->c().DecryptGroup(kGroup, kAlice, *m3);
  ASSERT_TRUE(g3.ok()) << g3.status().ToString();
  EXPECT_EQ(g3->text, "welcome back");
  // A 1:1 body is not a group message, and a malformed distribution is refused.
  auto direct = alice_->c().Encrypt(kBob, "direct");
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(bob_->c().DecryptGroup(kGroup, kAlice, *direct).status().code(),
            StatusCode::kBadRequest);
  EXPECT_FALSE(DecodeSenderKeyDistribution(std::string(8, '\0') + "x").ok());
  EXPECT_FALSE(bob_->c().ProcessSenderKeyDistribution(kAlice, {kGroup, "garbage"}).ok());
}

}  // namespace
}  // namespace iris::client::e2ee
