#pragma once
// The cluster's certificate authority for peer links (CLUSTER.md §7), made with OpenSSL's C
// API (no `openssl` command needed):
//   DIR/ca.crt, DIR/ca.key        EC P-256, CN "iris-cluster-ca", 10 years, made once
//   DIR/node-N.crt, DIR/node-N.key   EC P-256, CN "iris-node-N", SAN DNS:iris-node-N,
//                                    signed by the CA, 10 years
// Keys are written with mode 0600. An existing CA is reused; an existing node certificate
// is replaced.

#include <cstdint>
#include <string>

#include "common/status.h"

namespace iris::cluster {

struct IssuedCerts {
  bool ca_created = false;
  std::string ca_cert, ca_key, node_cert, node_key;  // paths
};

// BAD_REQUEST for an unusable directory, a CA with only one of its two files, or a CA key
// that does not match its certificate; INTERNAL when OpenSSL fails.
Result<IssuedCerts> IssueNodeCertificate(const std::string& dir, uint32_t node_id);

}  // namespace iris::cluster
