#include "cluster/pki.h"

#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

namespace iris::cluster {
namespace {

constexpr long kValiditySeconds = 10L * 365 * 24 * 3600;

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(FILE* f) const { fclose(f); }
};
using Key = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;

std::string OpensslError(const std::string& what) {
  char buf[256] = "unknown";
  const unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  return what + ": " + buf;
}

Result<Key> NewKey() {
  Key k(EVP_EC_gen("P-256"));
  if (!k) return Internal(OpensslError("EC P-256 key generation failed"));
  return k;
}

// Opens `path` for writing with `mode` (replacing it).
std::unique_ptr<FILE, Free> OpenForWrite(const std::string& path, mode_t mode) {
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return nullptr;
  fchmod(fd, mode);
  return std::unique_ptr<FILE, Free>(fdopen(fd, "w"));
}

Status WriteKey(const std::string& path, EVP_PKEY* key) {
  auto f = OpenForWrite(path, 0600);
  if (!f) return BadRequest("cannot write " + path);
  if (PEM_write_PrivateKey(f.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Internal(OpensslError("writing " + path));
  }
  return Status::Ok();
}

Status WriteCert(const std::string& path, X509* cert) {
  auto f = OpenForWrite(path, 0644);
  if (!f) return BadRequest("cannot write " + path);
  if (PEM_write_X509(f.get(), cert) != 1) return Internal(OpensslError("writing " + path));
  return Status::Ok();
}

Status AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Free> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return Internal(OpensslError(std::string("certificate extension ") + value));
  }
  return Status::Ok();
}

// A certificate for `key` with subject CN `cn`, signed by (issuer, issuer_key); self-signed
// when issuer is null.
Result<Cert> MakeCert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key,
                      bool is_ca, const std::string& san) {
  Cert cert(X509_new());
  if (!cert) return Internal("X509_new failed");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof(serial));
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), kValiditySeconds);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  if (is_ca) {
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_subject_key_identifier, "hash"));
  } else {
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE"));
    IRIS_RETURN_IF_ERROR(
        AddExt(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyAgreement"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_subject_key_identifier, "hash"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_authority_key_identifier, "keyid"));
    IRIS_RETURN_IF_ERROR(AddExt(cert.get(), signer, NID_subject_alt_name, san.c_str()));
  }
  if (X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) == 0) {
    return Internal(OpensslError("signing " + cn));
  }
  return cert;
}

}  // namespace

Result<IssuedCerts> IssueNodeCertificate(const std::string& dir, uint32_t node_id) {
  if (node_id == 0) return BadRequest("--node-id must be non-zero");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    return BadRequest("cannot create the directory " + dir);
  }
  IssuedCerts out;
  out.ca_cert = dir + "/ca.crt";
  out.ca_key = dir + "/ca.key";
  const std::string n = std::to_string(node_id);
  out.node_cert = dir + "/node-" + n + ".crt";
  out.node_key = dir + "/node-" + n + ".key";

  const bool have_cert = std::filesystem::exists(out.ca_cert);
  const bool have_key = std::filesystem::exists(out.ca_key);
  if (have_cert != have_key) {
    return BadRequest("found only one of " + out.ca_cert + " and " + out.ca_key +
                      "; restore the other or remove both to make a new CA");
  }
  Key ca_key;
  Cert ca_cert;
  if (have_cert) {
    std::unique_ptr<FILE, Free> fk(fopen(out.ca_key.c_str(), "r"));
    std::unique_ptr<FILE, Free> fc(fopen(out.ca_cert.c_str(), "r"));
    if (!fk || !fc) return BadRequest("cannot read the CA in " + dir);
    ca_key.reset(PEM_read_PrivateKey(fk.get(), nullptr, nullptr, nullptr));
    ca_cert.reset(PEM_read_X509(fc.get(), nullptr, nullptr, nullptr));
    if (!ca_key || !ca_cert) return BadRequest(OpensslError("cannot parse the CA in " + dir));
    if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
      return BadRequest(out.ca_key + " does not match " + out.ca_cert);
    }
  } else {
    IRIS_ASSIGN_OR_RETURN(ca_key, NewKey());
    IRIS_ASSIGN_OR_RETURN(ca_cert, MakeCert(ca_key.get(), "iris-cluster-ca", nullptr, nullptr,
                                            /*is_ca=*/true, ""));
    IRIS_RETURN_IF_ERROR(WriteKey(out.ca_key, ca_key.get()));
    IRIS_RETURN_IF_ERROR(WriteCert(out.ca_cert, ca_cert.get()));
    out.ca_created = true;
  }
  IRIS_ASSIGN_OR_RETURN(Key node_key, NewKey());
  const std::string cn = "iris-node-" + n;
  IRIS_ASSIGN_OR_RETURN(Cert node_cert, MakeCert(node_key.get(), cn, ca_cert.get(), ca_key.get(),
                                                 /*is_ca=*/false, "DNS:" + cn));
  IRIS_RETURN_IF_ERROR(WriteKey(out.node_key, node_key.get()));
  IRIS_RETURN_IF_ERROR(WriteCert(out.node_cert, node_cert.get()));
  return out;
}

}  // namespace iris::cluster
