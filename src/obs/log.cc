#include "obs/log.h"

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <limits>

#include "obs/json_escape.h"

namespace iris::obs {
namespace {

// RFC 3339, UTC, milliseconds: 2026-11-24T22:27:02.123Z
void AppendTimestamp(std::string* out, int64_t unix_ms) {
  const time_t secs = static_cast<time_t>(unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000);
  const int ms = static_cast<int>(unix_ms - static_cast<int64_t>(secs) * 1000);
  tm t{};
  gmtime_r(&secs, &t);
  char buf[40];
  const int n = std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                              t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min,
                              t.tm_sec, ms);
  out->append(buf, static_cast<size_t>(n));
}

}  // namespace

Result<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  return BadRequest("log level must be debug, info, warn or error, not \"" + std::string(name) +
                    "\"");
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

LogField LogField::Trace(const SpanContext& context) {
  return LogField("trace_id", context.valid() ? TraceIdHex(context.trace_id) : std::string());
}

Logger::Logger(int fd, LogLevel level, const Clock* clock)
    : fd_(fd), level_(level), clock_(clock ? *clock : SystemClock::Instance()) {}

void Logger::Log(LogLevel level, std::string_view msg,
                 std::initializer_list<LogField> fields) const {
  if (!Enabled(level)) return;
  std::string line;
  line.reserve(128);
  line.append(R"({"ts":")");
  AppendTimestamp(&line, clock_.WallMillis());
  line.append(R"(","level":")");
  line.append(LogLevelName(level));
  line.append(R"(","msg":)");
  AppendJsonString(&line, msg);
  for (const LogField& f : fields) {
    line.push_back(',');
    AppendJsonString(&line, f.key());
    line.push_back(':');
    const auto& v = f.value();
    if (const auto* s = std::get_if<std::string>(&v)) {
      AppendJsonString(&line, *s);
    } else if (const auto* i = std::get_if<int64_t>(&v)) {
      line.append(std::to_string(*i));
    } else if (const auto* u = std::get_if<uint64_t>(&v)) {
      line.append(std::to_string(*u));
    } else if (const auto* d = std::get_if<double>(&v)) {
      AppendJsonDouble(&line, *d);
    } else {
      line.append(std::get<bool>(v) ? "true" : "false");
    }
  }
  line.append("}\n");
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = write(fd_, line.data() + off, line.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log stream
    }
    off += static_cast<size_t>(n);
  }
}

Logger& Logger::Default() {
  static Logger* logger = new Logger();  // never destroyed: usable during exit
  return *logger;
}

LogRateLimiter::LogRateLimiter(int64_t interval_ms, const Clock* clock)
    : interval_ms_(interval_ms),
      clock_(clock ? *clock : SystemClock::Instance()),
      next_ms_(std::numeric_limits<int64_t>::min()) {}

bool LogRateLimiter::Allow(uint64_t* suppressed) {
  const int64_t now = clock_.MonoMillis();
  int64_t next = next_ms_.load(std::memory_order_relaxed);
  while (now >= next) {
    if (next_ms_.compare_exchange_weak(next, now + interval_ms_, std::memory_order_relaxed)) {
      *suppressed = held_.exchange(0, std::memory_order_relaxed);
      return true;
    }
  }
  held_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

}  // namespace iris::obs
