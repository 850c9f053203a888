#include "client/e2ee/crypto_provider.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <cstring>

namespace iris::client::e2ee {
namespace {

int Random(uint8_t* data, size_t len, void*) {
  return RAND_bytes(data, static_cast<int>(len)) == 1 ? SG_SUCCESS : SG_ERR_UNKNOWN;
}

int HmacInit(void** context, const uint8_t* key, size_t key_len, void*) {
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (mac == nullptr) return SG_ERR_UNKNOWN;
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(mac);
  EVP_MAC_free(mac);  // the context holds its own reference
  if (ctx == nullptr) return SG_ERR_NOMEM;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  // An empty key is legal for HMAC; OpenSSL wants a non-null pointer.
  static const uint8_t kEmpty = 0;
  if (EVP_MAC_init(ctx, key_len == 0 ? &kEmpty : key, key_len, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return SG_ERR_UNKNOWN;
  }
  *context = ctx;
  return SG_SUCCESS;
}

int HmacUpdate(void* context, const uint8_t* data, size_t len, void*) {
  return EVP_MAC_update(static_cast<EVP_MAC_CTX*>(context), data, len) == 1 ? SG_SUCCESS
                                                                            : SG_ERR_UNKNOWN;
}

int HmacFinal(void* context, signal_buffer** output, void*) {
  uint8_t md[EVP_MAX_MD_SIZE];
  size_t len = 0;
  if (EVP_MAC_final(static_cast<EVP_MAC_CTX*>(context), md, &len, sizeof(md)) != 1) {
    return SG_ERR_UNKNOWN;
  }
  *output = signal_buffer_create(md, len);
  return *output != nullptr ? SG_SUCCESS : SG_ERR_NOMEM;
}

void HmacCleanup(void* context, void*) { EVP_MAC_CTX_free(static_cast<EVP_MAC_CTX*>(context)); }

int Sha512Init(void** context, void*) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr) return SG_ERR_NOMEM;
  if (EVP_DigestInit_ex(ctx, EVP_sha512(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    return SG_ERR_UNKNOWN;
  }
  *context = ctx;
  return SG_SUCCESS;
}

int Sha512Update(void* context, const uint8_t* data, size_t len, void*) {
  return EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(context), data, len) == 1 ? SG_SUCCESS
                                                                             : SG_ERR_UNKNOWN;
}

// Finalises and re-initialises the context for reuse, as the callback contract requires.
int Sha512Final(void* context, signal_buffer** output, void*) {
  auto* ctx = static_cast<EVP_MD_CTX*>(context);
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx, md, &len) != 1) return SG_ERR_UNKNOWN;
  if (EVP_DigestInit_ex(ctx, EVP_sha512(), nullptr) != 1) return SG_ERR_UNKNOWN;
  *output = signal_buffer_create(md, len);
  return *output != nullptr ? SG_SUCCESS : SG_ERR_NOMEM;
}

void Sha512Cleanup(void* context, void*) { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(context)); }

const EVP_CIPHER* AesCipher(int cipher, size_t key_len) {
  const bool cbc = cipher == SG_CIPHER_AES_CBC_PKCS5;
  if (!cbc && cipher != SG_CIPHER_AES_CTR_NOPADDING) return nullptr;
  switch (key_len) {
    case 16: return cbc ? EVP_aes_128_cbc() : EVP_aes_128_ctr();
    case 24: return cbc ? EVP_aes_192_cbc() : EVP_aes_192_ctr();
    case 32: return cbc ? EVP_aes_256_cbc() : EVP_aes_256_ctr();
    default: return nullptr;
  }
}

int AesCrypt(bool encrypt, signal_buffer** output, int cipher, const uint8_t* key, size_t key_len,
             const uint8_t* iv, size_t iv_len, const uint8_t* in, size_t in_len) {
  const EVP_CIPHER* evp = AesCipher(cipher, key_len);
  if (evp == nullptr || iv_len != 16) return SG_ERR_INVAL;
  if (in_len > static_cast<size_t>(INT32_MAX) - 32) return SG_ERR_INVAL;
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr) return SG_ERR_NOMEM;
  int result = SG_ERR_UNKNOWN;
  uint8_t* out = static_cast<uint8_t*>(malloc(in_len + 32));
  int n1 = 0, n2 = 0;
  if (out != nullptr && EVP_CipherInit_ex(ctx, evp, nullptr, key, iv, encrypt ? 1 : 0) == 1 &&
      EVP_CIPHER_CTX_set_padding(ctx, cipher == SG_CIPHER_AES_CBC_PKCS5 ? 1 : 0) == 1 &&
      EVP_CipherUpdate(ctx, out, &n1, in, static_cast<int>(in_len)) == 1 &&
      EVP_CipherFinal_ex(ctx, out + n1, &n2) == 1) {
    *output = signal_buffer_create(out, static_cast<size_t>(n1 + n2));
    result = *output != nullptr ? SG_SUCCESS : SG_ERR_NOMEM;
  }
  if (out != nullptr) {
    OPENSSL_cleanse(out, in_len + 32);
    free(out);
  }
  EVP_CIPHER_CTX_free(ctx);
  return result;
}

int Encrypt(signal_buffer** output, int cipher, const uint8_t* key, size_t key_len,
            const uint8_t* iv, size_t iv_len, const uint8_t* plaintext, size_t plaintext_len,
            void*) {
  return AesCrypt(true, output, cipher, key, key_len, iv, iv_len, plaintext, plaintext_len);
}

int Decrypt(signal_buffer** output, int cipher, const uint8_t* key, size_t key_len,
            const uint8_t* iv, size_t iv_len, const uint8_t* ciphertext, size_t ciphertext_len,
            void*) {
  return AesCrypt(false, output, cipher, key, key_len, iv, iv_len, ciphertext, ciphertext_len);
}

}  // namespace

signal_crypto_provider OpenSslCryptoProvider() {
  signal_crypto_provider p{};
  p.random_func = Random;
  p.hmac_sha256_init_func = HmacInit;
  p.hmac_sha256_update_func = HmacUpdate;
  p.hmac_sha256_final_func = HmacFinal;
  p.hmac_sha256_cleanup_func = HmacCleanup;
  p.sha512_digest_init_func = Sha512Init;
  p.sha512_digest_update_func = Sha512Update;
  p.sha512_digest_final_func = Sha512Final;
  p.sha512_digest_cleanup_func = Sha512Cleanup;
  p.encrypt_func = Encrypt;
  p.decrypt_func = Decrypt;
  p.user_data = nullptr;
  return p;
}

}  // namespace iris::client::e2ee
