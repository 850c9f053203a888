// The OpenSSL crypto provider against published test vectors (RFC 4231, FIPS 180-2,
// NIST SP 800-38A).
#include "client/e2ee/crypto_provider.h"

#include <gtest/gtest.h>

#include <string>

namespace iris::client::e2ee {
namespace {

std::string Hex(const uint8_t* d, size_t n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s.push_back(k[d[i] >> 4]);
    s.push_back(k[d[i] & 15]);
  }
  return s;
}
std::string Hex(signal_buffer* b) {
  std::string s = Hex(signal_buffer_data(b), signal_buffer_len(b));
  signal_buffer_free(b);
  return s;
}
std::string Unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}
const uint8_t* U(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

TEST(CryptoProviderTest, HmacSha256MatchesRfc4231Case2) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  void* ctx = nullptr;
  const std::string key = "Jefe", data = "what do ya want for nothing?";
  ASSERT_EQ(p.hmac_sha256_init_func(&ctx, U(key), key.size(), nullptr), 0);
  ASSERT_EQ(p.hmac_sha256_update_func(ctx, U(data), 10, nullptr), 0);  // in two parts
  ASSERT_EQ(p.hmac_sha256_update_func(ctx, U(data) + 10, data.size() - 10, nullptr), 0);
  signal_buffer* out = nullptr;
  ASSERT_EQ(p.hmac_sha256_final_func(ctx, &out, nullptr), 0);
  p.hmac_sha256_cleanup_func(ctx, nullptr);
  EXPECT_EQ(Hex(out), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(CryptoProviderTest, Sha512MatchesFips180AbcAndContextIsReusable) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  void* ctx = nullptr;
  ASSERT_EQ(p.sha512_digest_init_func(&ctx, nullptr), 0);
  const std::string abc = "abc";
  const std::string want =
      "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
      "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(p.sha512_digest_update_func(ctx, U(abc), abc.size(), nullptr), 0);
    signal_buffer* out = nullptr;
    ASSERT_EQ(p.sha512_digest_final_func(ctx, &out, nullptr), 0);
    EXPECT_EQ(Hex(out), want) << "round " << round;
  }
  p.sha512_digest_cleanup_func(ctx, nullptr);
}

TEST(CryptoProviderTest, AesCbcMatchesSp80038aAndRoundTripsWithPadding) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  const std::string key = Unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
  const std::string iv = Unhex("000102030405060708090a0b0c0d0e0f");
  const std::string block = Unhex("6bc1bee22e409f96e93d7e117393172a");
  signal_buffer* out = nullptr;
  ASSERT_EQ(p.encrypt_func(&out, SG_CIPHER_AES_CBC_PKCS5, U(key), key.size(), U(iv), iv.size(),
                           U(block), block.size(), nullptr),
            0);
  // First block is the SP 800-38A F.2.5 vector; PKCS#5 adds one full padding block.
  ASSERT_EQ(signal_buffer_len(out), 32u);
  EXPECT_EQ(Hex(signal_buffer_data(out), 16), "f58c4c04d6e5f1ba779eabfb5f7bfbd6");
  signal_buffer* back = nullptr;
  ASSERT_EQ(p.decrypt_func(&back, SG_CIPHER_AES_CBC_PKCS5, U(key), key.size(), U(iv), iv.size(),
                           signal_buffer_data(out), signal_buffer_len(out), nullptr),
            0);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(signal_buffer_data(back)), signal_buffer_len(back)),
            block);
  // Tampered padding is an error, not garbage.
  signal_buffer_data(out)[31] ^= 1;
  signal_buffer* bad = nullptr;
  EXPECT_LT(p.decrypt_func(&bad, SG_CIPHER_AES_CBC_PKCS5, U(key), key.size(), U(iv), iv.size(),
                           signal_buffer_data(out), signal_buffer_len(out), nullptr),
            0);
  signal_buffer_free(out);
  signal_buffer_free(back);
}

TEST(CryptoProviderTest, AesCtrMatchesSp80038a) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  const std::string key = Unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
  const std::string iv = Unhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  const std::string block = Unhex("6bc1bee22e409f96e93d7e117393172a");
  signal_buffer* out = nullptr;
  ASSERT_EQ(p.encrypt_func(&out, SG_CIPHER_AES_CTR_NOPADDING, U(key), key.size(), U(iv), iv.size(),
                           U(block), block.size(), nullptr),
            0);
  EXPECT_EQ(Hex(out), "601ec313775789a5b7a7f504bbf3d228");
}

TEST(CryptoProviderTest, RejectsUnknownCipherAndBadKeyLength) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  const std::string key(15, 'k'), iv(16, 'i'), data(16, 'd');
  signal_buffer* out = nullptr;
  EXPECT_EQ(p.encrypt_func(&out, SG_CIPHER_AES_CBC_PKCS5, U(key), key.size(), U(iv), iv.size(),
                           U(data), data.size(), nullptr),
            SG_ERR_INVAL);
  EXPECT_EQ(p.encrypt_func(&out, 99, U(iv), 16, U(iv), iv.size(), U(data), data.size(), nullptr),
            SG_ERR_INVAL);
}

TEST(CryptoProviderTest, RandomFillsBuffer) {
  const signal_crypto_provider p = OpenSslCryptoProvider();
  uint8_t a[32] = {}, b[32] = {};
  ASSERT_EQ(p.random_func(a, sizeof(a), nullptr), 0);
  ASSERT_EQ(p.random_func(b, sizeof(b), nullptr), 0);
  EXPECT_NE(Hex(a, 32), Hex(b, 32));
}

}  // namespace
}  // namespace iris::client::e2ee
