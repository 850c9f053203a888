#include "common/status.h"

namespace iris {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kBadRequest: return "BAD_REQUEST";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    case StatusCode::kUnsupportedVersion: return "UNSUPPORTED_VERSION";
    case StatusCode::kRateLimited: return "RATE_LIMITED";
    case StatusCode::kTooLarge: return "TOO_LARGE";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kOverloaded: return "OVERLOADED";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kForbidden: return "FORBIDDEN";
    case StatusCode::kUnknownOpcode: return "UNKNOWN_OPCODE";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kStorageFull: return "STORAGE_FULL";
    case StatusCode::kSessionReplaced: return "SESSION_REPLACED";
    case StatusCode::kMismatchedDevices: return "MISMATCHED_DEVICES";
    case StatusCode::kDeviceRemoved: return "DEVICE_REMOVED";
    case StatusCode::kNotOwner: return "NOT_OWNER";
    case StatusCode::kDataLoss: return "DATA_LOSS";
  }
  return "UNKNOWN";
}

bool IsFatalByDefault(StatusCode code) {
  return code == StatusCode::kUnauthenticated || code == StatusCode::kUnsupportedVersion ||
         code == StatusCode::kSessionReplaced || code == StatusCode::kDeviceRemoved;
}

std::string Status::ToString() const {
  std::string out(StatusCodeName(code_));
  if (!message_.empty()) {
    out += ": ";
    out += message_;
  }
  return out;
}

}  // namespace iris
