#pragma once
// Framing of the internal edge <-> core link: 4-byte big-endian length + protobuf message,
// at most kMaxLinkMessageBytes. Blocking I/O on a connected stream socket.
//
// Thread-safety: WriteLinkMessage may be called from several threads if they share `mu`;
// ReadLinkMessage from one reader thread per socket.

#include <cstdint>
#include <mutex>
#include <string>

#include "common/status.h"

namespace google::protobuf {
class MessageLite;
}

namespace iris::core {

constexpr uint32_t kMaxLinkMessageBytes = 16u << 20;

// UNAVAILABLE when the peer is gone.
Status WriteLinkMessage(int fd, std::mutex& mu, const google::protobuf::MessageLite& m);
// UNAVAILABLE on EOF or error, BAD_REQUEST on an oversized or unparsable message.
Status ReadLinkMessage(int fd, google::protobuf::MessageLite* m, std::string* buffer);

}  // namespace iris::core
