#include "net/http/http_message.h"

#include <gtest/gtest.h>

#include <string>

#include "net/http/http_server.h"

namespace iris::net::http {
namespace {

constexpr size_t kMaxBody = 64 * 1024;

TEST(ParseRequestHeadTest, ParsesRequestLineAndHeaders) {
  const ParsedHead p = ParseRequestHead(
      "POST /v1/revoke?x=1&y=2 HTTP/1.1\r\n"
      "Host: localhost\r\n"
      "Content-Type:  application/json \t\r\n"
      "X-Multi: a\r\n"
      "x-multi: b\r\n"
      "Content-Length: 12\r\n"
      "\r\n",
      kMaxBody);
  ASSERT_EQ(p.error_status, 0) << p.error;
  EXPECT_EQ(p.request.method, "POST");
  EXPECT_EQ(p.request.path, "/v1/revoke");
  EXPECT_EQ(p.request.query, "x=1&y=2");
  EXPECT_EQ(p.content_length, 12u);
  EXPECT_FALSE(p.expect_continue);
  ASSERT_NE(p.request.Header("content-type"), nullptr);
  EXPECT_EQ(*p.request.Header("content-type"), "application/json");
  EXPECT_EQ(*p.request.Header("x-multi"), "a, b");
  EXPECT_EQ(*p.request.Header("host"), "localhost");
  EXPECT_EQ(p.request.Header("missing"), nullptr);
}

TEST(ParseRequestHeadTest, AcceptsHttp10AndExpectContinue) {
  const ParsedHead p = ParseRequestHead(
      "GET / HTTP/1.0\r\nExpect: 100-Continue\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
      kMaxBody);
  ASSERT_EQ(p.error_status, 0) << p.error;
  EXPECT_TRUE(p.expect_continue);
  EXPECT_EQ(p.content_length, 5u);
  EXPECT_EQ(*p.request.Header("content-length"), "5");
}

struct Rejection {
  const char* head;
  int status;
};

TEST(ParseRequestHeadTest, RejectsMalformedHeadsWithTheRightStatus) {
  const Rejection cases[] = {
      {"GET / HTTP/1.1\r\n", 400},                          // not terminated
      {"GET / HTTP/1.1\n\n", 400},                          // bare LF
      {"GET /\r\n\r\n", 400},                               // no version
      {"GET  / HTTP/1.1\r\n\r\n", 400},                     // double space
      {"GET / HTTP/1.1 x\r\n\r\n", 400},                    // extra field
      {"G(T / HTTP/1.1\r\n\r\n", 400},                      // method not a token
      {"GET http://h/ HTTP/1.1\r\n\r\n", 400},              // absolute-form
      {"GET * HTTP/1.1\r\n\r\n", 400},                      // asterisk-form
      {"GET /a\x01 HTTP/1.1\r\n\r\n", 400},                 // control in target
      {"GET /\xff HTTP/1.1\r\n\r\n", 400},                  // non-ASCII target
      {"GET / HTTX/1.1\r\n\r\n", 400},                      // not HTTP
      {"GET / HTTP/1.12\r\n\r\n", 400},                     // bad version shape
      {"GET / HTTP/2.0\r\n\r\n", 505},                      // unsupported version
      {"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400},           // header without ':'
      {"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},          // space before ':'
      {"GET / HTTP/1.1\r\n: x\r\n\r\n", 400},               // empty name
      {"GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n", 400},  // obs-fold
      {"GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n", 400},          // DEL in value
      {"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400},           // bare CR in value
      {"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411},
      {"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nExpect: something\r\n\r\n", 417},
  };
  for (const Rejection& c : cases) {
    const ParsedHead p = ParseRequestHead(c.head, kMaxBody);
    EXPECT_EQ(p.error_status, c.status) << "head: " << c.head;
    EXPECT_FALSE(p.error.empty()) << "head: " << c.head;
  }
}

TEST(ParseRequestHeadTest, BodyLimitIsInclusive) {
  EXPECT_EQ(
      ParseRequestHead("POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n", kMaxBody).error_status,
      0);
}

TEST(SerializeResponseTest, WritesLengthAndCloseAndDropsInjectedHeaders) {
  HttpResponse r;
  r.status = 401;
  r.content_type = "application/json";
  r.body = "{}";
  r.headers = {{"WWW-Authenticate", "Bearer"}, {"X-Evil", "a\r\nSet-Cookie: x"}, {"Bad Name", "v"}};
  EXPECT_EQ(SerializeResponse(r),
            "HTTP/1.1 401 Unauthorized\r\n"
            "Content-Type: application/json\r\n"
            "Content-Length: 2\r\n"
            "Connection: close\r\n"
            "WWW-Authenticate: Bearer\r\n"
            "\r\n"
            "{}");
}

HttpRequest WithAuthorization(std::string value) {
  HttpRequest r;
  r.headers["authorization"] = std::move(value);
  return r;
}

TEST(CheckBearerTest, AcceptsOnlyTheExactToken) {
  EXPECT_TRUE(CheckBearer(WithAuthorization("Bearer s3cret"), "s3cret"));
  EXPECT_TRUE(CheckBearer(WithAuthorization("bearer s3cret"), "s3cret"));
  EXPECT_TRUE(CheckBearer(WithAuthorization("BEARER   s3cret"), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer s3cres"), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer s3cret2"), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer s3cre"), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer "), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Basic czNjcmV0"), "s3cret"));
  EXPECT_FALSE(CheckBearer(WithAuthorization("s3cret"), "s3cret"));
  EXPECT_FALSE(CheckBearer(HttpRequest{}, "s3cret"));
  // An unset token never authorises, even an empty bearer.
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer "), ""));
  EXPECT_FALSE(CheckBearer(WithAuthorization("Bearer"), ""));
}

TEST(CheckBearerTest, ConstantTimeEqualsComparesContentsAndLengths) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abc"));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0", 2), "a"));
}

}  // namespace
}  // namespace iris::net::http
