#pragma once
// Not installed: the project's own tests write bytes that are not a well-formed frame
// (malformed input, partial frames, bursts in one write) through a client::Connection.

#include <string_view>

#include "iris/client/connection.h"

namespace iris::client {

struct ConnectionTestAccess {
  // Writes `bytes` exactly as given (as SendFrame writes a frame): UNAVAILABLE when the
  // connection is closed, OVERLOADED when the write does not finish within 30 s.
  static Status SendRaw(Connection& connection, std::string_view bytes);
};

}  // namespace iris::client
