// libFuzzer target for the TLS 1.3 record layer (net/tls_records.h) as a server connection
// uses it after the handshake; CMake lines in tests/fuzz/CMakeLists.txt.
//
// The input is a small program. Byte 0 picks the cipher suite; then each op byte (mod 8):
//   0 n data   the client seals n bytes of application data
//   1 / 2      the client sends a KeyUpdate, update_requested / not requested
//   3 t p n d  the client seals one record of inner type t (0 taken as 1) with n content
//              bytes and 4*p bytes of padding (any type, padding past the limit included)
//   4 n data   n raw bytes are appended to the wire (forged or garbage records)
//   5 hi lo    one bit of the wire so far is flipped at position (hi << 8 | lo) mod size
//   6 n        the server seals n bytes, which the client must open as sent
//   7 n        the server reads what is on the wire now, in chunks of n + 1 bytes
// The server processes the wire as net::Connection does: whole records through
// CompleteRecordLength, Open and HandleControl, until the first error.
// Oracles: no crash or sanitizer report; what the server delivers is always a prefix of
// the application data the client sealed (no forged or reordered byte is ever delivered);
// everything the server seals opens at the client, carrying at most one KeyUpdate in front
// of each piece of data however many the client requested; an error always names an alert
// or is the peer's own alert.
// Seeds: tests/fuzz/corpus/tls_records/.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <string>
#include <vector>

#include "net/tls_records.h"

namespace {

using iris::Result;
using iris::net::Tls13Records;

std::vector<uint8_t> Secret(size_t len, uint8_t seed) {
  std::vector<uint8_t> s(len);
  for (size_t i = 0; i < len; ++i) s[i] = static_cast<uint8_t>(seed + 13 * i);
  return s;
}

// Aborts (a finding), naming the oracle that failed.
[[noreturn]] void FailAt(int line) {
  std::fprintf(stderr, "tls_records_fuzz: oracle at line %d failed\n", line);
  std::abort();
}
#define Fail() FailAt(__LINE__)

struct Server {
  Tls13Records records;
  std::string wire;         // bytes received, not yet processed
  std::string delivered;    // application data opened
  bool failed = false;

  // Processes the complete records at the head of `wire`, as Connection::ProcessRecords.
  void Read() {
    size_t at = 0;
    while (!failed) {
      std::span<uint8_t> rest(reinterpret_cast<uint8_t*>(wire.data()) + at, wire.size() - at);
      uint8_t alert = Tls13Records::kNoAlert;
      Result<size_t> len = Tls13Records::CompleteRecordLength(rest, &alert);
      if (!len.ok()) {
        if (alert == Tls13Records::kNoAlert) Fail();  // header errors always name an alert
        failed = true;
        break;
      }
      if (*len == 0) break;
      Result<Tls13Records::Opened> opened = records.Open(rest.first(*len));
      if (!opened.ok()) {
        if (records.alert() == Tls13Records::kNoAlert) Fail();
        failed = true;
        break;
      }
      at += *len;
      if (opened->type == Tls13Records::kApplicationData) {
        delivered.append(reinterpret_cast<const char*>(opened->content.data()),
                         opened->content.size());
        continue;
      }
      Result<Tls13Records::Event> ev = records.HandleControl(*opened);
      if (!ev.ok() || *ev == Tls13Records::Event::kCloseNotify) failed = true;
    }
    wire.erase(0, at);
  }
};

// The client opens what the server sealed; every record must open.
size_t ClientOpens(Tls13Records& client, std::string& from_server, std::string* data) {
  size_t records = 0;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(from_server.data()), from_server.size());
  while (!buf.empty()) {
    Result<size_t> len = Tls13Records::CompleteRecordLength(buf);
    if (!len.ok() || *len == 0) Fail();
    Result<Tls13Records::Opened> o = client.Open(buf.first(*len));
    if (!o.ok()) Fail();
    ++records;
    if (o->type == Tls13Records::kApplicationData) {
      data->append(reinterpret_cast<const char*>(o->content.data()), o->content.size());
    } else if (!client.HandleControl(*o).ok()) {
      Fail();
    }
    buf = buf.subspan(*len);
  }
  return records;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const uint16_t kSuites[3] = {0x1301, 0x1302, 0x1303};
  const uint16_t suite = kSuites[data[0] % 3];
  const size_t hash_len = suite == 0x1302 ? 48 : 32;
  const std::vector<uint8_t> cs = Secret(hash_len, 1), ss = Secret(hash_len, 77);
  Result<Tls13Records> client = Tls13Records::ForClient(suite, cs, ss);
  Result<Tls13Records> server_records = Tls13Records::ForServer(suite, cs, ss);
  if (!client.ok() || !server_records.ok()) Fail();
  Server server{std::move(*server_records)};
  std::string sealed_data;  // all application data the client sealed, in order
  size_t i = 1;
  const auto next = [&]() -> uint8_t { return i < size ? data[i++] : 0; };
  const auto take = [&](size_t n) {
    n = std::min(n, size - std::min(i, size));
    std::string s(reinterpret_cast<const char*>(data + i), n);
    i += n;
    return s;
  };
  while (i < size) {
    const uint8_t op = next() % 8;
    if (op == 0) {
      const std::string d = take(next());
      if (!client->SealApplicationData(d, &server.wire).ok()) Fail();
      sealed_data += d;
    } else if (op == 1 || op == 2) {
      if (!client->UpdateSendingKey(op == 1, &server.wire).ok()) Fail();
    } else if (op == 3) {
      // Type 0 is no content type: the receiver would take the content's last non-zero
      // byte for the type (RFC 8446 section 5.4), which no sender can mean.
      const uint8_t type = std::max<uint8_t>(next(), 1);
      const size_t padding = size_t{next()} * 4;
      const std::string d = take(next());
      if (client->SealPaddedForTesting(type, d, padding, &server.wire).ok() &&
          type == Tls13Records::kApplicationData) {
        sealed_data += d;
      }
    } else if (op == 4) {
      server.wire += take(next());
    } else if (op == 5) {
      const size_t pos = (size_t{next()} << 8) | next();
      if (!server.wire.empty()) server.wire[pos % server.wire.size()] ^= 1;
    } else if (op == 6) {
      if (server.failed) continue;
      const std::string d(next(), 's');
      std::string out, opened;
      if (!server.records.SealApplicationData(d, &out).ok()) Fail();
      const size_t records = ClientOpens(*client, out, &opened);
      if (opened != d) Fail();
      // At most one KeyUpdate in front of the data (none for empty data: nothing is sent).
      if (records > (d.empty() ? 0 : 2)) Fail();
    } else {
      // Deliver in chunks, as reads of the socket would.
      const size_t chunk = size_t{next()} + 1;
      std::string pending = std::move(server.wire);
      server.wire.clear();
      for (size_t at = 0; at < pending.size() && !server.failed; at += chunk) {
        server.wire.append(pending, at, chunk);
        server.Read();
      }
    }
  }
  server.Read();
  // Nothing but what the client sealed, in its order, ever reaches the application.
  if (sealed_data.compare(0, server.delivered.size(), server.delivered) != 0) Fail();
  return 0;
}
