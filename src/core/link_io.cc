#include "core/link_io.h"

#include <google/protobuf/message_lite.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace iris::core {
namespace {

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

Status WriteLinkMessage(int fd, std::mutex& mu, const google::protobuf::MessageLite& m) {
  std::string buf(4, '\0');
  if (!m.AppendToString(&buf)) return Internal("link: serialisation failed");
  const size_t n = buf.size() - 4;
  if (n > kMaxLinkMessageBytes) return Internal("link: message too large");
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<char>(n >> (8 * (3 - i)));
  std::lock_guard<std::mutex> lock(mu);
  if (!WriteAll(fd, buf.data(), buf.size())) return Unavailable("link: peer gone", 0);
  return Status::Ok();
}

Status ReadLinkMessage(int fd, google::protobuf::MessageLite* m, std::string* buffer) {
  char head[4];
  if (!ReadAll(fd, head, 4)) return Unavailable("link: closed", 0);
  uint32_t n = 0;
  for (char c : head) n = (n << 8) | static_cast<uint8_t>(c);
  if (n > kMaxLinkMessageBytes) return BadRequest("link: oversized message");
  buffer->resize(n);
  if (n > 0 && !ReadAll(fd, buffer->data(), n)) return Unavailable("link: closed", 0);
  if (!m->ParseFromString(*buffer)) return BadRequest("link: unparsable message");
  return Status::Ok();
}

}  // namespace iris::core
