#pragma once
// Mutually authenticated TLS 1.3 between the nodes of a cluster (CLUSTER.md section 7).
//
// Every node holds a certificate from the cluster CA whose Subject CN is "iris-node-<id>"
// (with a SAN DNS:iris-node-<id>). A link is accepted only when:
//  - both sides present a certificate that chains to --peer-ca (TLS 1.3 only; a client
//    without a certificate is refused in the handshake);
//  - the client finds the name of the node it dialled in the server's certificate
//    (PeerTlsContext::NewClient sets the expected host name);
//  - the server reads the client's node id from the client certificate's CN
//    (NodeIdFromCertificate) and the client's hello claims that same id (checked by the
//    link's owner, rpc::CoreServer).
//
// Thread-safety: a PeerTlsContext is immutable after creation and may be shared.

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "common/jump_hash.h"
#include "common/status.h"

namespace iris::net {

// PEM file paths (--peer-ca, --peer-cert, --peer-key).
struct PeerTlsConfig {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
};

// "iris-node-<id>": the CN and SAN DNS name of a node's certificate.
std::string PeerName(NodeId id);

// The node id named by a certificate's Subject CN "iris-node-<id>" (id in 1..2^32-1);
// FORBIDDEN when the certificate is missing or its CN has another form.
Result<NodeId> NodeIdFromCertificate(X509* cert);

class PeerTlsContext {
 public:
  // Loads the CA, the node's certificate chain and its key. BAD_REQUEST naming the file
  // (and OpenSSL's reason) when one cannot be loaded or the key does not match.
  static Result<std::unique_ptr<PeerTlsContext>> Create(const PeerTlsConfig& config);
  ~PeerTlsContext();
  PeerTlsContext(const PeerTlsContext&) = delete;
  PeerTlsContext& operator=(const PeerTlsContext&) = delete;

  // A new server-side SSL for an accepted connection on `fd` (requires a client
  // certificate). nullptr on failure (OpenSslError() says why).
  SSL* NewServer(int fd) const;
  // A new client-side SSL on `fd` that accepts only a server certificate naming
  // PeerName(expected_node). nullptr on failure.
  SSL* NewClient(int fd, NodeId expected_node) const;

 private:
  PeerTlsContext(SSL_CTX* server, SSL_CTX* client) : server_(server), client_(client) {}
  SSL_CTX* server_;
  SSL_CTX* client_;
};

}  // namespace iris::net
