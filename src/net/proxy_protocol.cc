#include "net/proxy_protocol.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace iris::net {
namespace {

constexpr uint8_t kSignature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kInetBytes = 12;   // 2 x 4-byte address, 2 x 2-byte port
constexpr size_t kInet6Bytes = 36;  // 2 x 16-byte address, 2 x 2-byte port
constexpr size_t kUnixBytes = 216;  // 2 x 108-byte path

}  // namespace

void ProxyHeaderParser::Fail(std::string why) {
  state_ = State::kError;
  error_ = std::move(why);
}

size_t ProxyHeaderParser::wanted() const {
  if (state_ != State::kNeedMore) return 0;
  if (fixed_len_ < kFixedBytes) return kFixedBytes - fixed_len_;
  return variable_total_ - variable_.size();
}

size_t ProxyHeaderParser::Feed(std::span<const uint8_t> bytes) {
  size_t taken = 0;
  while (state_ == State::kNeedMore && taken < bytes.size()) {
    if (fixed_len_ < kFixedBytes) {
      const uint8_t b = bytes[taken++];
      if (fixed_len_ < sizeof(kSignature) && b != kSignature[fixed_len_]) {
        Fail("no PROXY protocol v2 signature (byte " + std::to_string(fixed_len_) + ")");
        break;
      }
      fixed_[fixed_len_++] = b;
      if (fixed_len_ == kFixedBytes) ParseFixed();
      continue;
    }
    const size_t n = std::min(bytes.size() - taken, variable_total_ - variable_.size());
    variable_.append(reinterpret_cast<const char*>(bytes.data() + taken), n);
    taken += n;
    if (variable_.size() == variable_total_) ParseVariable();
  }
  return taken;
}

void ProxyHeaderParser::ParseFixed() {
  const uint8_t version = fixed_[12] >> 4, command = fixed_[12] & 0x0F;
  if (version != 2) {
    Fail("PROXY protocol version " + std::to_string(version) + " (only 2 is accepted)");
    return;
  }
  if (command > 1) {
    Fail("unknown PROXY protocol command " + std::to_string(command));
    return;
  }
  const uint8_t family = fixed_[13] >> 4, transport = fixed_[13] & 0x0F;
  if (family > 3 || transport > 2) {
    Fail("unknown PROXY protocol address family/transport byte " + std::to_string(fixed_[13]));
    return;
  }
  variable_total_ = static_cast<size_t>(fixed_[14]) << 8 | fixed_[15];
  if (variable_total_ > kMaxVariableBytes) {
    Fail("PROXY protocol header too long (" + std::to_string(variable_total_) +
         " bytes of "
         "addresses and TLVs, at most " +
         std::to_string(kMaxVariableBytes) + ")");
    return;
  }
  if (variable_total_ == 0) ParseVariable();
}

void ProxyHeaderParser::ParseVariable() {
  const uint8_t command = fixed_[12] & 0x0F, family = fixed_[13] >> 4;
  const size_t need = family == 1   ? kInetBytes
                      : family == 2 ? kInet6Bytes
                      : family == 3 ? kUnixBytes
                                    : 0;
  // Even a LOCAL header's length must cover the addresses of the family it names.
  if (variable_.size() < need) {
    Fail("PROXY protocol header length " + std::to_string(variable_.size()) +
         " is shorter than its addresses (" + std::to_string(need) + " bytes)");
    return;
  }
  header_ = ProxyHeader{};
  if (command == 1 && (family == 1 || family == 2)) {
    const auto* p = reinterpret_cast<const uint8_t*>(variable_.data());
    char text[INET6_ADDRSTRLEN] = {0};
    const size_t addr_len = family == 1 ? 4 : 16;
    inet_ntop(family == 1 ? AF_INET : AF_INET6, p, text, sizeof(text));
    header_.local = false;
    header_.source_ip = text;
    header_.source_port = static_cast<uint16_t>(p[2 * addr_len] << 8 | p[2 * addr_len + 1]);
  }
  variable_.clear();
  variable_.shrink_to_fit();
  state_ = State::kDone;
}

}  // namespace iris::net
