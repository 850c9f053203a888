#pragma once
// A small blocking HTTP/1.1 client for etcd's JSON gateway (etcd_client.h says why the
// gateway): one connection to one endpoint, kept alive between requests, optional TLS
// (server verified against a CA file, optional client certificate), bodies framed by
// Content-Length or chunked transfer coding, every call bounded by a deadline.
//
// Blocking by design: it is used ONLY from the cluster module's own threads (the lease
// keeper, the watcher, the controller, the membership thread, irisctl), never from an event
// loop thread.
//
// Thread-safety: an HttpConnection is used by one thread at a time.

#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace iris::cluster {

struct TlsFiles {
  std::string ca_file;    // empty: plain HTTP
  std::string cert_file;  // optional client certificate (both or neither)
  std::string key_file;
  bool enabled() const { return !ca_file.empty(); }
};

// A TLS client context shared by connections; nullptr for plain HTTP.
// BAD_REQUEST when a file cannot be loaded.
Result<std::shared_ptr<SSL_CTX>> MakeClientTlsContext(const TlsFiles& files);

struct HttpResponse {
  int status = 0;
  std::string body;
};

// Decodes an HTTP/1.1 chunked body incrementally (RFC 9112 section 7.1): Decode() moves the
// data of the chunks complete in *in to *out, erasing from *in what it used, and sets
// *finished once the last chunk and its trailer section have been read. Whatever is not yet
// complete (a chunk-size line, a chunk's data or its CRLF, the trailer section) stays in
// *in for the next call, however the bytes were split. UNAVAILABLE for a malformed size.
class ChunkedDecoder {
 public:
  Status Decode(std::string* in, std::string* out, bool* finished);
  void Reset() { remaining_ = -1; }

 private:
  int64_t remaining_ = -1;  // data left in the current chunk; -1: a chunk-size line is next
};

class HttpConnection {
 public:
  // `endpoint` is host:port (an http:// or https:// prefix is accepted and ignored; TLS is
  // decided by `tls`). `tls` may be null (plain) and must outlive the connection.
  HttpConnection(std::string endpoint, std::shared_ptr<SSL_CTX> tls);
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  const std::string& endpoint() const { return endpoint_; }
  bool connected() const { return fd_ >= 0; }

  // POST `body` (application/json) to `path` and read the whole response, by the absolute
  // monotonic `deadline_ms` (SystemClock MonoMillis). Connects (again) when needed.
  // UNAVAILABLE on any connection, TLS or framing failure or at the deadline (the
  // connection is then closed).
  Result<HttpResponse> Post(const std::string& path, const std::string& body, int64_t deadline_ms);

  // Streaming: sends the request and reads the status line and headers. Then ReadSome
  // returns body bytes as they arrive (chunk framing removed).
  Status StartStream(const std::string& path, const std::string& body, int64_t deadline_ms,
                     int* status);
  // Appends body bytes to *out; waits at most until `deadline_ms`. Returns OK with nothing
  // appended at the deadline, UNAVAILABLE when the stream ended or failed (connection closed).
  Status ReadSome(std::string* out, int64_t deadline_ms);

  void Close();

 private:
  Status Connect(int64_t deadline_ms);
  Status WriteAll(const std::string& data, int64_t deadline_ms);
  // Reads more raw bytes into in_; UNAVAILABLE on EOF/error, kOverloaded-free: a timeout
  // returns OK with *timed_out set.
  Status Fill(int64_t deadline_ms, bool* timed_out);
  Status ReadHead(int64_t deadline_ms, int* status, int64_t* content_length, bool* chunked,
                  bool* close_after);
  Status ReadBody(int64_t deadline_ms, int64_t content_length, bool chunked, std::string* body);

  const std::string endpoint_;
  std::shared_ptr<SSL_CTX> tls_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  std::string in_;  // raw bytes read, not yet consumed
  // Streaming state.
  bool stream_chunked_ = false;
  ChunkedDecoder chunks_;
};

}  // namespace iris::cluster
