#pragma once
// JSON string literals for the hand-written JSON lines of the tracer and the logger (they
// run on every span / log event, so they avoid building a DOM).
//
// Thread-safety: pure functions.

#include <string>
#include <string_view>

namespace iris::obs {

// Appends `s` to *out as a quoted JSON string (RFC 8259): '"', '\\' and control characters
// are escaped; bytes that are not valid UTF-8 become U+FFFD, so the line always parses.
void AppendJsonString(std::string* out, std::string_view s);

// Appends a double as a JSON number; NaN and infinities (not representable) as null.
void AppendJsonDouble(std::string* out, double v);

}  // namespace iris::obs
