#pragma once
// HTTP/1.1 messages for the admin listener (PROTOCOL.md section 9): the request and
// response types handlers see, a strict parser for a request head, and the response
// serialiser. Everything here is pure (no I/O) and safe to call from any thread.
//
// The parser accepts only what RFC 9112 allows and the admin API needs: origin-form targets,
// HTTP/1.0 and 1.1, CRLF line ends, token header names, no obsolete line folding, no
// Transfer-Encoding (bodies need Content-Length). Everything else is refused with the status
// to answer, never asserted: the input comes from the network.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iris::net::http {

struct HttpRequest {
  std::string method;  // "GET", "POST", ... (case-sensitive, as sent)
  std::string path;    // the target up to '?', not percent-decoded
  std::string query;   // after '?', raw; empty when absent
  // Header names lower-cased; repeated headers joined with ", " (RFC 9110 section 5.3).
  std::map<std::string, std::string, std::less<>> headers;
  std::string body;
  std::string peer;  // "address:port" of the client

  // The header's value, or nullptr. `name` must be lower-case.
  const std::string* Header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  // Extra headers (e.g. WWW-Authenticate, Allow, Retry-After). Content-Length, Content-Type
  // and Connection are written by the server; headers containing CR or LF are dropped.
  std::vector<std::pair<std::string, std::string>> headers;
};

// "OK", "Not Found", ...; "Unknown" for codes outside the table.
std::string_view ReasonPhrase(int status);

// The outcome of parsing a request head (request line and header fields).
struct ParsedHead {
  // 0 when the head is acceptable; otherwise the status to answer: 400 malformed,
  // 411 Transfer-Encoding (only Content-Length bodies), 413 Content-Length over the limit,
  // 417 an expectation other than 100-continue, 505 an HTTP version other than 1.x.
  int error_status = 0;
  std::string error;             // why, for the response body and logs
  HttpRequest request;           // method, path, query, headers; body empty
  size_t content_length = 0;     // 0 when absent
  bool expect_continue = false;  // "Expect: 100-continue" was sent
};

// Parses `head`: the bytes of a request from its first byte through the blank line that
// ends the header section ("...\r\n\r\n"). `max_body` bounds Content-Length.
ParsedHead ParseRequestHead(std::string_view head, size_t max_body);

// The bytes of `response` with `Connection: close`.
std::string SerializeResponse(const HttpResponse& response);

}  // namespace iris::net::http
