// The SQLite-backed Signal stores under libsignal's own group (Sender Keys) protocol: a
// sender key created through one store context is found again after reopening the
// database, and a receiver's store decrypts with the distributed key.
#include "client/e2ee/signal_store.h"

#include <group_cipher.h>
#include <group_session_builder.h>
#include <gtest/gtest.h>
#include <protocol.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "client/e2ee/crypto_provider.h"

namespace iris::client::e2ee {
namespace {

// A Signal context plus a store context over one LocalStore.
class Stores {
 public:
  explicit Stores(const std::string& path) {
    auto s = LocalStore::Open(path);
    EXPECT_TRUE(s.ok());
    store_ = std::move(*s);
    EXPECT_EQ(signal_context_create(&ctx_, nullptr), 0);
    const signal_crypto_provider p = OpenSslCryptoProvider();
    EXPECT_EQ(signal_context_set_crypto_provider(ctx_, &p), 0);
    EXPECT_EQ(signal_protocol_store_context_create(&stores_, ctx_), 0);
    EXPECT_EQ(InstallSignalStores(stores_, store_.get()), 0);
  }
  ~Stores() {
    signal_protocol_store_context_destroy(stores_);
    signal_context_destroy(ctx_);
  }
  signal_context* ctx() { return ctx_; }
  signal_protocol_store_context* stores() { return stores_; }
  LocalStore& local() { return *store_; }

 private:
  std::unique_ptr<LocalStore> store_;
  signal_context* ctx_ = nullptr;
  signal_protocol_store_context* stores_ = nullptr;
};

std::string Str(signal_buffer* b) {
  return std::string(reinterpret_cast<const char*>(signal_buffer_data(b)), signal_buffer_len(b));
}

TEST(SignalStoreTest, SenderKeysPersistAndDecryptAcrossStores) {
  char tmpl[] = "/tmp/iris-signal-store-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const char* group = "group-7";
  const signal_protocol_sender_key_name name{group, strlen(group), {"1", 1, 1}};
  std::string distribution;
  {
    Stores alice(dir + "/alice.db");
    group_session_builder* b = nullptr;
    ASSERT_EQ(group_session_builder_create(&b, alice.stores(), alice.ctx()), 0);
    sender_key_distribution_message* dist = nullptr;
    ASSERT_EQ(group_session_builder_create_session(b, &dist, &name), 0);
    distribution =
        Str(ciphertext_message_get_serialized(reinterpret_cast<ciphertext_message*>(dist)));
    SIGNAL_UNREF(dist);
    group_session_builder_free(b);
    auto rec = alice.local().LoadSenderKey(group, "1", 1);
    ASSERT_TRUE(rec.ok());
    ASSERT_TRUE(rec->has_value()) << "the sender key is in SQLite";
  }
  Stores alice(dir + "/alice.db");  // reopened: the sender key comes from the database
  Stores bob(dir + "/bob.db");
  sender_key_distribution_message* dist = nullptr;
  ASSERT_EQ(sender_key_distribution_message_deserialize(
                &dist, reinterpret_cast<const uint8_t*>(distribution.data()), distribution.size(),
                bob.ctx()),
            0);
  group_session_builder* b = nullptr;
  ASSERT_EQ(group_session_builder_create(&b, bob.stores(), bob.ctx()), 0);
  ASSERT_EQ(group_session_builder_process_session(b, &name, dist), 0);
  group_session_builder_free(b);
  SIGNAL_UNREF(dist);

  group_cipher* enc = nullptr;
  ASSERT_EQ(group_cipher_create(&enc, alice.stores(), &name, alice.ctx()), 0);
  const std::string text = "to the group";
  ciphertext_message* ct = nullptr;
  ASSERT_EQ(
      group_cipher_encrypt(enc, reinterpret_cast<const uint8_t*>(text.data()), text.size(), &ct),
      0);
  const std::string wire = Str(ciphertext_message_get_serialized(ct));
  SIGNAL_UNREF(ct);
  group_cipher_free(enc);

  sender_key_message* skm = nullptr;
  ASSERT_EQ(sender_key_message_deserialize(&skm, reinterpret_cast<const uint8_t*>(wire.data()),
                                           wire.size(), bob.ctx()),
            0);
  group_cipher* dec = nullptr;
  ASSERT_EQ(group_cipher_create(&dec, bob.stores(), &name, bob.ctx()), 0);
  signal_buffer* plain = nullptr;
  ASSERT_EQ(group_cipher_decrypt(dec, skm, nullptr, &plain), 0);
  EXPECT_EQ(Str(plain), text);
  signal_buffer_free(plain);
  SIGNAL_UNREF(skm);
  group_cipher_free(dec);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace iris::client::e2ee
