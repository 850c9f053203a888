// The Signal Protocol engine between two in-process accounts (no server): X3DH from a
// bundle, Double Ratchet both ways, out-of-order delivery, tampering, identity changes,
// persistence across reopen.
#include "client/e2ee/message_cipher.h"

#include <fingerprint.h>
#include <gtest/gtest.h>
#include <signal_protocol.h>
#include <unistd.h>

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

}  // namespace
}  // namespace iris::client::e2ee
