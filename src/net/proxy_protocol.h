#pragma once
// PROXY protocol version 2 (haproxy's proxy-protocol.txt, section 2.2): the binary header a
// load balancer sends before the client's bytes, carrying the client's address.
//
//   12 bytes  signature \r\n\r\n\0\r\nQUIT\n
//    1 byte   version (high nibble, 2) and command (low nibble: 0 LOCAL, 1 PROXY)
//    1 byte   address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport
//             (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
//    2 bytes  length of what follows (network order): the addresses, then TLVs (skipped)
//
// The parser takes the header in pieces as they arrive and never asks for a byte past its
// end (wanted()), so whatever follows (the TLS ClientHello) stays in the socket. A wrong
// byte is an error as soon as it is seen: a connection that starts with TLS instead fails
// at its first byte.
//
// Thread-safety: none (one parser per connection, used by its loop thread).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace iris::net {

struct ProxyHeader {
  // LOCAL command (the balancer's own connection, e.g. a health check), or PROXY for an
  // address family without IP addresses (UNSPEC, UNIX): the socket's own peer is the client.
  bool local = true;
  std::string source_ip;  // PROXY over INET/INET6: the client's address, as text
  uint16_t source_port = 0;
};

class ProxyHeaderParser {
 public:
  enum class State : uint8_t { kNeedMore, kDone, kError };
  // The fixed part (signature, version/command, family, length).
  static constexpr size_t kFixedBytes = 16;
  // Bound of the variable part (addresses and TLVs). Real balancers send well under this
  // (haproxy: addresses plus a few TLVs); a longer header is refused as malformed.
  static constexpr size_t kMaxVariableBytes = 1024;

  // Takes bytes of the header from the front of `bytes`; returns how many it took (never
  // more than wanted(); nothing once done or failed).
  size_t Feed(std::span<const uint8_t> bytes);
  // How many more bytes the header needs at least; 0 once done or failed. Reading at most
  // this many never takes a byte that follows the header.
  size_t wanted() const;
  State state() const { return state_; }
  // Valid in kDone.
  const ProxyHeader& header() const { return header_; }
  // What was wrong, in kError.
  const std::string& error() const { return error_; }

 private:
  void Fail(std::string why);
  void ParseFixed();
  void ParseVariable();

  State state_ = State::kNeedMore;
  uint8_t fixed_[kFixedBytes] = {};
  size_t fixed_len_ = 0;
  std::string variable_;
  size_t variable_total_ = 0;  // known once the fixed part is complete
  ProxyHeader header_;
  std::string error_;
};

}  // namespace iris::net
