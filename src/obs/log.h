#pragma once
// Structured logs: one JSON object per line, e.g.
//
//   {"ts":"2026-11-24T22:27:02.123Z","level":"warn","msg":"degradation level changed",
//    "from":0,"to":1,"pressure":1.25}
//
// `ts` (UTC, milliseconds), `level` and `msg` come first, then the event's fields in the
// order given. Events about a traced request carry a "trace_id" field (32 hex digits, the
// same id as the spans: LogField::Trace). Events below the logger's level are skipped
// before anything is formatted. The level is set from `--log-level` at start-up.
//
// Thread-safety: every method may be called from any thread. Each event is written with
// one write(2), so lines from different threads never interleave.

#include <concepts>
#include <cstdint>
#include <atomic>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

#include "common/clock.h"
#include "common/status.h"
#include "obs/trace.h"

namespace iris::obs {

enum class LogLevel : uint8_t { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn" (or "warning"), "error"; BAD_REQUEST otherwise.
Result<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

// One key/value of an event. Integers of any width, doubles, bools and strings.
class LogField {
 public:
  LogField(std::string_view key, std::string_view value) : key_(key), value_(std::string(value)) {}
  LogField(std::string_view key, const char* value) : key_(key), value_(std::string(value)) {}
  LogField(std::string_view key, const std::string& value) : key_(key), value_(value) {}
  template <std::integral T>
  LogField(std::string_view key, T value) : key_(key) {
    if constexpr (std::is_same_v<T, bool>) {
      value_ = value;
    } else if constexpr (std::is_signed_v<T>) {
      value_ = static_cast<int64_t>(value);
    } else {
      value_ = static_cast<uint64_t>(value);
    }
  }
  LogField(std::string_view key, double value) : key_(key), value_(value) {}

  // {"trace_id": "<32 hex digits>"}; an empty string for an invalid context.
  static LogField Trace(const SpanContext& context);

  std::string_view key() const { return key_; }
  const std::variant<std::string, int64_t, uint64_t, double, bool>& value() const {
    return value_;
  }

 private:
  std::string_view key_;  // keys are string literals in practice; must outlive the call
  std::variant<std::string, int64_t, uint64_t, double, bool> value_;
};

class Logger {
 public:
  // Writes to `fd` (not owned; 2 = standard error). `clock`: nullptr = SystemClock; must
  // outlive the Logger.
  explicit Logger(int fd = 2, LogLevel level = LogLevel::kInfo, const Clock* clock = nullptr);

  void set_level(LogLevel level) { level_.store(level, std::memory_order_relaxed); }
  LogLevel level() const { return level_.load(std::memory_order_relaxed); }
  bool Enabled(LogLevel level) const { return level >= this->level(); }

  void Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {}) const;

  // The process-wide logger on standard error, level info until set_level.
  static Logger& Default();

 private:
  const int fd_;
  std::atomic<LogLevel> level_;
  const Clock& clock_;
};

// Rate limit for an event that may repeat many times a second (e.g. admin requests with a
// bad token): lets the first one through, then at most one per `interval_ms`, and counts the
// ones held back so the next line can say how many ("suppressed": N).
//
// Thread-safety: Allow() may be called from any thread.
class LogRateLimiter {
 public:
  // `clock`: nullptr = SystemClock; must outlive the limiter.
  explicit LogRateLimiter(int64_t interval_ms, const Clock* clock = nullptr);

  // True when the event may be logged now; then *suppressed is the number of events held
  // back since the previous one let through (and the count restarts from 0).
  bool Allow(uint64_t* suppressed);

 private:
  const int64_t interval_ms_;
  const Clock& clock_;
  std::atomic<int64_t> next_ms_;  // mono ms from which the next event may pass
  std::atomic<uint64_t> held_{0};
};

// Logger::Default().Log(...).
inline void LogDebug(std::string_view msg, std::initializer_list<LogField> fields = {}) {
  Logger::Default().Log(LogLevel::kDebug, msg, fields);
}
inline void LogInfo(std::string_view msg, std::initializer_list<LogField> fields = {}) {
  Logger::Default().Log(LogLevel::kInfo, msg, fields);
}
inline void LogWarn(std::string_view msg, std::initializer_list<LogField> fields = {}) {
  Logger::Default().Log(LogLevel::kWarn, msg, fields);
}
inline void LogError(std::string_view msg, std::initializer_list<LogField> fields = {}) {
  Logger::Default().Log(LogLevel::kError, msg, fields);
}

}  // namespace iris::obs
