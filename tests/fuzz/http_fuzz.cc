// libFuzzer target for the admin HTTP request-head parser (net/http/http_message.h);
// CMake lines in tests/fuzz/CMakeLists.txt.
//
// The whole input is a request head. Oracles besides "no crash, no sanitizer report":
// the outcome is either accepted (error_status 0) or one of the statuses the parser
// documents, with a reason; an accepted head has a method that is a token, a path that
// starts with '/', lower-case header names, a Content-Length within the limit and no
// Transfer-Encoding; and parsing is deterministic.
// Seeds: tests/fuzz/corpus/http/.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "net/http/http_message.h"

namespace {

[[noreturn]] void Fail() { std::abort(); }

bool IsTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kMaxBody = 4096;
  const std::string_view head(reinterpret_cast<const char*>(data), size);
  const iris::net::http::ParsedHead p = iris::net::http::ParseRequestHead(head, kMaxBody);
  const iris::net::http::ParsedHead again = iris::net::http::ParseRequestHead(head, kMaxBody);
  if (p.error_status != again.error_status || p.request.path != again.request.path ||
      p.request.headers != again.request.headers) {
    Fail();
  }
  switch (p.error_status) {
    case 0:
      break;
    case 400:
    case 411:
    case 413:
    case 417:
    case 505:
      if (p.error.empty()) Fail();
      return 0;
    default:
      Fail();
  }
  if (p.request.method.empty()) Fail();
  for (char c : p.request.method) {
    if (!IsTokenChar(c)) Fail();
  }
  if (p.request.path.empty() || p.request.path[0] != '/') Fail();
  if (p.content_length > kMaxBody) Fail();
  for (const auto& [name, value] : p.request.headers) {
    if (name.empty()) Fail();
    for (char c : name) {
      if (c >= 'A' && c <= 'Z') Fail();
      if (!IsTokenChar(c)) Fail();
    }
    for (char c : value) {
      if (c == '\r' || c == '\n') Fail();
    }
  }
  if (p.request.Header("transfer-encoding") != nullptr) Fail();
  return 0;
}
