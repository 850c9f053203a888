#include "net/http/http_message.h"

#include <charconv>

namespace iris::net::http {
namespace {

// tchar (RFC 9110 section 5.6.2).
bool IsTokenChar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return c != 0 &&
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTokenChar(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// field-vchar / SP / HTAB / obs-text: anything but controls other than HTAB, and DEL.
bool IsFieldValueChar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string LowerCase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

ParsedHead Fail(int status, std::string why) {
  ParsedHead p;
  p.error_status = status;
  p.error = std::move(why);
  return p;
}

constexpr size_t kMaxMethodLength = 32;

}  // namespace

const std::string* HttpRequest::Header(std::string_view name) const {
  auto it = headers.find(name);
  return it == headers.end() ? nullptr : &it->second;
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

ParsedHead ParseRequestHead(std::string_view head, size_t max_body) {
  if (!head.ends_with("\r\n\r\n")) return Fail(400, "request head not terminated by CRLF CRLF");
  head.remove_suffix(2);  // keep each line's own CRLF

  // Request line: method SP request-target SP HTTP-version CRLF.
  const size_t eol = head.find("\r\n");
  const std::string_view line = head.substr(0, eol);
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return Fail(400, "malformed request line");
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method) || method.size() > kMaxMethodLength) return Fail(400, "malformed method");
  if (target.empty() || target.front() != '/') return Fail(400, "request target not origin-form");
  for (char c : target) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return Fail(400, "invalid character in request target");
  }
  if (version.size() != 8 || !version.starts_with("HTTP/") || version[6] != '.' ||
      version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9') {
    return Fail(400, "malformed HTTP version");
  }
  if (version[5] != '1') return Fail(505, "only HTTP/1.x is supported");

  ParsedHead p;
  p.request.method = std::string(method);
  const size_t q = target.find('?');
  p.request.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) p.request.query = std::string(target.substr(q + 1));

  // Header fields: field-name ":" OWS field-value OWS CRLF.
  bool have_length = false;
  std::string_view rest = head.substr(eol + 2);
  while (!rest.empty()) {
    const size_t end = rest.find("\r\n");
    if (end == std::string_view::npos) return Fail(400, "header line without CRLF");
    const std::string_view field = rest.substr(0, end);
    rest.remove_prefix(end + 2);
    if (field.empty()) return Fail(400, "empty header line");
    if (field.front() == ' ' || field.front() == '\t') return Fail(400, "obsolete line folding");
    const size_t colon = field.find(':');
    if (colon == std::string_view::npos) return Fail(400, "header line without ':'");
    const std::string_view name = field.substr(0, colon);
    if (!IsToken(name)) return Fail(400, "malformed header name");
    const std::string_view value = TrimOws(field.substr(colon + 1));
    for (char c : value) {
      if (!IsFieldValueChar(static_cast<unsigned char>(c))) {
        return Fail(400, "control character in header value");
      }
    }
    std::string lname = LowerCase(name);
    if (lname == "content-length") {
      uint64_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size()) {
        return Fail(400, "malformed Content-Length");
      }
      if (have_length && n != p.content_length) return Fail(400, "conflicting Content-Length");
      if (n > max_body) return Fail(413, "body over " + std::to_string(max_body) + " bytes");
      have_length = true;
      p.content_length = static_cast<size_t>(n);
      if (p.request.headers.count(lname)) continue;  // an identical repeat
    } else if (lname == "transfer-encoding") {
      return Fail(411, "Transfer-Encoding is not supported; send Content-Length");
    } else if (lname == "expect") {
      if (!EqualsIgnoreCase(value, "100-continue")) return Fail(417, "unsupported expectation");
      p.expect_continue = true;
    }
    auto [it, inserted] = p.request.headers.emplace(std::move(lname), std::string(value));
    if (!inserted) {
      it->second += ", ";
      it->second += value;
    }
  }
  return p;
}

std::string SerializeResponse(const HttpResponse& response) {
  std::string out;
  out.reserve(response.body.size() + 160);
  out += "HTTP/1.1 ";
  out += std::to_string(response.status);
  out += ' ';
  out += ReasonPhrase(response.status);
  out += "\r\n";
  if (!response.content_type.empty() &&
      response.content_type.find_first_of("\r\n") == std::string::npos) {
    out += "Content-Type: ";
    out += response.content_type;
    out += "\r\n";
  }
  out += "Content-Length: ";
  out += std::to_string(response.body.size());
  out += "\r\nConnection: close\r\n";
  for (const auto& [name, value] : response.headers) {
    if (!IsToken(name) || value.find_first_of("\r\n") != std::string::npos) continue;
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  out += "\r\n";
  out += response.body;
  return out;
}

}  // namespace iris::net::http
