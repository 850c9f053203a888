#pragma once
// Status and Result<T>: expected failures as values (STYLE.md "Errors"). Public: the client
// library's installed headers (include/iris/client/) use them; the server includes it as
// "common/status.h". Self-contained (standard library only).
//
// StatusCode maps one-to-one onto the wire error codes of PROTOCOL.md section 7, so a
// Status produced anywhere in the server can be answered to a client unchanged.
// Retry guidance (as Abseil documents its codes):
//   kRateLimited, kOverloaded, kUnavailable, kStorageFull: retry after retry_after_ms.
//   kInternal: the operation did not happen; retrying is safe with the same idempotency key.
//   Everything else: do not retry the same request unchanged.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace iris {

enum class StatusCode : uint32_t {
  kOk = 0,
  kBadRequest = 1,
  kUnauthenticated = 2,
  kUnsupportedVersion = 3,
  kRateLimited = 4,
  kTooLarge = 5,
  kNotFound = 6,
  kOverloaded = 7,
  kUnavailable = 8,
  kForbidden = 9,
  kUnknownOpcode = 10,
  kInternal = 11,
  kStorageFull = 12,
  kSessionReplaced = 13,
  kMismatchedDevices = 14,  // Iris extension (docs/protocol.md appendix 20)
  kDeviceRemoved = 15,      // Iris extension (appendix 20): this device left the device list
  // Internal, never sent to a client: a cluster node was asked for a user or group it does
  // not own (the shard moved); the caller re-resolves the owner and retries (cluster::Router).
  kNotOwner = 64,
  // Internal, never sent to a client: a store (or a replication log) found, when it opened,
  // that writes it had made durable are missing or that its files are damaged
  // (store/store_db.h). A single node refuses to start; a node of a replicated cluster sets
  // its data aside and is rebuilt from the other replicas (irisd --rebuild-lost-data).
  kDataLoss = 65,
};

// The protocol name of a code ("BAD_REQUEST", ...); "UNKNOWN" for values outside the table.
std::string_view StatusCodeName(StatusCode code);

// Whether the protocol closes the connection after an error with this code
// (PROTOCOL.md section 7; RATE_LIMITED is fatal only during HELLO, decided by the caller).
bool IsFatalByDefault(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message, uint32_t retry_after_ms = 0)
      : code_(code), retry_after_ms_(retry_after_ms), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  uint32_t retry_after_ms() const { return retry_after_ms_; }

  // "BAD_REQUEST: body is empty" (or "OK").
  std::string ToString() const;

  // Explicitly discards a status whose failure is handled elsewhere (Abseil's IgnoreError).
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  uint32_t retry_after_ms_ = 0;
  std::string message_;
};

inline Status BadRequest(std::string msg) { return {StatusCode::kBadRequest, std::move(msg)}; }
inline Status Unauthenticated(std::string msg) {
  return {StatusCode::kUnauthenticated, std::move(msg)};
}
inline Status TooLarge(std::string msg) { return {StatusCode::kTooLarge, std::move(msg)}; }
inline Status NotFound(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
inline Status Forbidden(std::string msg) { return {StatusCode::kForbidden, std::move(msg)}; }
inline Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
inline Status Unavailable(std::string msg, uint32_t retry_after_ms = 1000) {
  return {StatusCode::kUnavailable, std::move(msg), retry_after_ms};
}
inline Status NotOwner(std::string msg) { return {StatusCode::kNotOwner, std::move(msg)}; }
inline Status Overloaded(std::string msg, uint32_t retry_after_ms = 500) {
  return {StatusCode::kOverloaded, std::move(msg), retry_after_ms};
}
inline Status RateLimited(std::string msg, uint32_t retry_after_ms) {
  return {StatusCode::kRateLimited, std::move(msg), retry_after_ms};
}
inline Status StorageFull(std::string msg, uint32_t retry_after_ms = 5000) {
  return {StatusCode::kStorageFull, std::move(msg), retry_after_ms};
}

// Result<T>: either a value or a non-OK Status (Abseil's StatusOr).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) {
      v_ = Status(StatusCode::kInternal, "Result constructed from OK status without value");
    }
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // The status: OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // Precondition: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace iris

// Propagates a non-OK Status from the enclosing function.
#define IRIS_RETURN_IF_ERROR(expr)            \
  do {                                        \
    ::iris::Status iris_status_ = (expr);     \
    if (!iris_status_.ok()) return iris_status_; \
  } while (0)

#define IRIS_CONCAT_INNER_(a, b) a##b
#define IRIS_CONCAT_(a, b) IRIS_CONCAT_INNER_(a, b)
// IRIS_ASSIGN_OR_RETURN(auto x, F()); assigns the value or returns the status.
#define IRIS_ASSIGN_OR_RETURN(lhs, expr)                               \
  auto IRIS_CONCAT_(iris_result_, __LINE__) = (expr);                  \
  if (!IRIS_CONCAT_(iris_result_, __LINE__).ok())                      \
    return IRIS_CONCAT_(iris_result_, __LINE__).status();              \
  lhs = std::move(IRIS_CONCAT_(iris_result_, __LINE__)).value()
