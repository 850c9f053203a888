// The Signal Protocol engine between two in-process accounts (no server): X3DH from a
// bundle, Double Ratchet both ways, out-of-order delivery, tampering, identity changes,
// persistence across reopen.
#include "client/e2ee/message_cipher.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "client/e2ee/body_format.h"

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

TEST_F(MessageCipherTest, ChangedIdentityIsRefusedUntilForgotten) {
  ASSERT_TRUE(alice_->c().ProcessBundle(bob_->Bundle(kBob, 1)).ok());
  Account bob2(dir_ + "/bob2.db");  // Bob re-installed: a new identity key
  auto st = alice_->c().ProcessBundle(bob2.Bundle(kBob, 1));
  EXPECT_EQ(st.code(), StatusCode::kForbidden) << st.ToString();
  ASSERT_TRUE(alice_->c().ForgetIdentity(kBob).ok());
  ASSERT_TRUE(alice_->c().ProcessBundle(bob2.Bundle(kBob, 1)).ok());
  auto got = bob2.c().Decrypt(kAlice, *alice_->c().Encrypt(kBob, "to the new bob"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
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
