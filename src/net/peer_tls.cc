#include "net/peer_tls.h"

#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <charconv>

#include "net/tls.h"

namespace iris::net {
namespace {

constexpr std::string_view kPeerPrefix = "iris-node-";

// Both roles: TLS 1.3 only, our certificate and key, the cluster CA as the only trust
// anchor, the peer's certificate required and verified.
Result<SSL_CTX*> MakeContext(const PeerTlsConfig& c, bool server) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) return Internal("peer TLS: SSL_CTX_new: " + OpenSslError());
  auto fail = [ctx](std::string what) -> Status {
    SSL_CTX_free(ctx);
    return BadRequest("peer TLS: " + what + ": " + OpenSslError());
  };
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return fail("cannot restrict to TLS 1.3");
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, c.cert_file.c_str()) != 1) {
    return fail("cannot load --peer-cert " + c.cert_file);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, c.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return fail("cannot load --peer-key " + c.key_file);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return fail("--peer-key " + c.key_file + " does not match --peer-cert " + c.cert_file);
  }
  if (SSL_CTX_load_verify_locations(ctx, c.ca_file.c_str(), nullptr) != 1) {
    return fail("cannot load --peer-ca " + c.ca_file);
  }
  SSL_CTX_set_verify(
      ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nullptr);
  // Non-blocking I/O from a queue that may move between attempts.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (server) {
    SSL_CTX_set_num_tickets(ctx, 0);  // links are long-lived: no resumption
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  }
  return ctx;
}

}  // namespace

std::string PeerName(NodeId id) { return std::string(kPeerPrefix) + std::to_string(id); }

Result<NodeId> NodeIdFromCertificate(X509* cert) {
  if (cert == nullptr) return Forbidden("peer presented no certificate");
  char cn[256];
  const int n =
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  if (n <= 0) return Forbidden("peer certificate has no CN");
  const std::string_view name(cn, static_cast<size_t>(n));
  if (!name.starts_with(kPeerPrefix)) {
    return Forbidden("peer certificate CN \"" + std::string(name) + "\" is not iris-node-<id>");
  }
  const std::string_view digits = name.substr(kPeerPrefix.size());
  NodeId id = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), id);
  if (ec != std::errc() || end != digits.data() + digits.size() || id == 0 ||
      digits.front() == '0') {
    return Forbidden("peer certificate CN \"" + std::string(name) + "\" names no node id");
  }
  return id;
}

Result<std::unique_ptr<PeerTlsContext>> PeerTlsContext::Create(const PeerTlsConfig& config) {
  if (config.ca_file.empty() || config.cert_file.empty() || config.key_file.empty()) {
    return BadRequest("peer TLS needs --peer-ca, --peer-cert and --peer-key");
  }
  IRIS_ASSIGN_OR_RETURN(SSL_CTX * server, MakeContext(config, true));
  Result<SSL_CTX*> client = MakeContext(config, false);
  if (!client.ok()) {
    SSL_CTX_free(server);
    return client.status();
  }
  return std::unique_ptr<PeerTlsContext>(new PeerTlsContext(server, *client));
}

PeerTlsContext::~PeerTlsContext() {
  SSL_CTX_free(server_);
  SSL_CTX_free(client_);
}

SSL* PeerTlsContext::NewServer(int fd) const {
  SSL* ssl = SSL_new(server_);
  if (ssl == nullptr) return nullptr;
  if (SSL_set_fd(ssl, fd) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_accept_state(ssl);
  return ssl;
}

SSL* PeerTlsContext::NewClient(int fd, NodeId expected_node) const {
  SSL* ssl = SSL_new(client_);
  if (ssl == nullptr) return nullptr;
  const std::string name = PeerName(expected_node);
  if (SSL_set_fd(ssl, fd) != 1 || SSL_set1_host(ssl, name.c_str()) != 1 ||
      SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

}  // namespace iris::net
