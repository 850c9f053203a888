#pragma once
// Tracing (RFC-001 NFR-30/31, PROTOCOL.md section 10, DESIGN.md section 8): every request
// carries a trace id end to end and every operation on its path emits a span with the
// trace id, its own span id, its parent's span id, a name, start time, duration,
// attributes and a status. A SEND produces
//
//   edge.send (SEND received -> SEND_ACK queued)
//     core.send (Core::Send -> its completion)
//       store.append (queued in the store -> WAL synced)
//   edge.deliver (the DELIVER push to the recipient; same trace id, its own root)
//
// Spans are written as JSON lines in the OpenTelemetry OTLP/JSON shape: each line is one
// ExportTraceServiceRequest {"resourceSpans":[{"resource":..,"scopeSpans":[{"scope":..,
// "spans":[span]}]}]} holding one span; traceId/spanId/parentSpanId are lower-case hex,
// times are decimal strings of Unix nanoseconds, kind and status code are the OTLP enum
// numbers. Any OTLP/JSON reader (the collector's otlpjsonfile receiver, jq) can read them.
//
// Sampling: the decision for a trace is a pure function of its trace id (TraceSampled:
// the trace id's low 63 bits against ratio * 2^63, as OpenTelemetry's TraceIdRatioBased),
// so every component keeps or drops the same traces without passing a flag and a kept
// trace is complete. Spans that end with an error are always kept. sample_ratio 1 keeps
// everything, 0 keeps only errors.
//
// Hot path: StartSpan allocates the span record and reads the monotonic clock; End pushes
// it onto a bounded queue under a mutex held for a push_back, never waiting for I/O. A
// background writer thread drains the queue, serialises and write(2)s the lines. When the
// queue is full the span is dropped and counted (dropped()), so a slow disk can never stall
// a request. With tracing off (no Tracer, or the global one unset) StartSpan returns a span
// that records nothing and costs one atomic load.
//
// Thread-safety: Tracer's methods may be called from any thread. A Span belongs to one
// thread at a time (it may be moved between threads; SharedSpan lets completion callbacks
// that must be copyable own one). A Tracer must outlive every Span it started.

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace iris::obs {

// W3C trace-context sizes: 16-byte trace id, 8-byte span id. All zero means "none".
using TraceId = std::array<uint8_t, 16>;

// Where a span sits: its trace and the span id that children name as their parent.
struct SpanContext {
  TraceId trace_id{};
  uint64_t span_id = 0;  // 0: none (a child of this context is a root span of the trace)

  // True when the trace id is not all zero.
  bool valid() const;
  // From the protocol's 16 raw trace-id bytes (SEND.trace_id, Envelope.trace_id); an
  // invalid context when `bytes` is not 16 bytes or is all zero.
  static SpanContext FromTraceIdBytes(std::string_view bytes, uint64_t span_id = 0);
  // The 16 raw bytes (empty when invalid).
  std::string TraceIdBytes() const;
};

// Lower-case hex: 32 digits for a trace id, 16 for a span id.
std::string TraceIdHex(const TraceId& id);
std::string SpanIdHex(uint64_t id);
// A random trace id (never all zero) / span id (never zero), from a per-thread generator.
TraceId NewTraceId();
uint64_t NewSpanId();
// Whether ratio sampling keeps the trace (see the file comment). ratio >= 1: always,
// ratio <= 0 (or NaN): never.
bool TraceSampled(const TraceId& id, double ratio);

// OTLP Span.SpanKind numbers.
enum class SpanKind : uint8_t { kInternal = 1, kServer = 2, kClient = 3, kProducer = 4, kConsumer = 5 };

struct SpanAttribute {
  std::string key;
  std::variant<std::string, int64_t, double, bool> value;
};

// A finished span as the writer sees it.
struct SpanData {
  TraceId trace_id{};
  uint64_t span_id = 0;
  uint64_t parent_span_id = 0;  // 0: a root span
  std::string name;
  SpanKind kind = SpanKind::kInternal;
  int64_t start_unix_nanos = 0;
  int64_t end_unix_nanos = 0;
  std::vector<SpanAttribute> attributes;
  bool error = false;          // OTLP status code 2 (ERROR); otherwise status is unset
  std::string status_message;  // with error
  bool sampled = false;        // the trace's ratio decision
};

// Appends one span as an OTLP/JSON ExportTraceServiceRequest (one line, no newline).
void AppendOtlpJson(std::string* out, const SpanData& span, std::string_view service_name);

class Tracer;

// An operation in progress. Ends (and is handed to the writer) on End() or destruction.
// A default-constructed Span records nothing and every call on it is a no-op.
class Span {
 public:
  Span() = default;
  Span(Span&& other) noexcept;
  Span& operator=(Span&& other) noexcept;
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  ~Span() { End(); }

  bool recording() const { return data_ != nullptr; }
  // This span's trace id and span id: the parent for its children. Invalid when not
  // recording.
  SpanContext context() const;

  // Attributes (keys follow OpenTelemetry's dotted style, e.g. "iris.message_id"). Never
  // put message bodies or tokens here.
  void SetString(std::string_view key, std::string_view value);
  void SetInt(std::string_view key, int64_t value);
  void SetDouble(std::string_view key, double value);
  void SetBool(std::string_view key, bool value);
  // Marks the span failed (status ERROR with `message`): it is written whatever the
  // sampling decision.
  void SetError(std::string_view message);
  // SetError(status.ToString()) when `status` is not OK.
  void SetStatus(const Status& status);
  // Records the end time and hands the span to the writer. Idempotent.
  void End();

 private:
  friend class Tracer;
  Span(Tracer* tracer, std::unique_ptr<SpanData> data, int64_t start_mono_nanos)
      : tracer_(tracer), data_(std::move(data)), start_mono_nanos_(start_mono_nanos) {}

  Tracer* tracer_ = nullptr;
  std::unique_ptr<SpanData> data_;
  int64_t start_mono_nanos_ = 0;
};

struct TracerOptions {
  // Where the JSON lines go: a file (created if missing, appended to), or "-" / "stderr"
  // for standard error.
  std::string path;
  // Fraction of traces kept (errors are always kept). 1 keeps everything.
  double sample_ratio = 0.01;
  // Spans waiting for the writer; beyond this they are dropped and counted.
  size_t queue_capacity = 8192;
  // The resource's service.name.
  std::string service_name = "irisd";
  // nullptr = SystemClock::Instance(); must outlive the Tracer.
  const Clock* clock = nullptr;
};

class Tracer {
 public:
  // Opens the output. Errors: BAD_REQUEST (empty path, ratio outside [0, 1], zero queue
  // capacity), INTERNAL when the file cannot be opened.
  static Result<std::unique_ptr<Tracer>> Open(TracerOptions options);
  ~Tracer();  // Stop()s
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // Starts the writer thread. Spans ended before Start wait in the queue (up to its
  // capacity).
  void Start();
  // Writes everything queued, then joins the writer. Spans ended afterwards are dropped
  // (and counted). Idempotent.
  void Stop();

  // A new span: a child of parent.span_id in parent's trace; with an invalid parent, the
  // root of a new trace.
  Span StartSpan(std::string_view name, const SpanContext& parent,
                 SpanKind kind = SpanKind::kInternal);

  // Waits until every span ended before the call has been written or dropped, or until
  // `timeout_ms` passes (needs Start()); returns whether it got there.
  bool Flush(int64_t timeout_ms);

  double sample_ratio() const { return options_.sample_ratio; }
  uint64_t written() const { return written_.load(std::memory_order_relaxed); }
  // Spans lost because the queue was full or the tracer stopped, or whose write failed.
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // Spans not written because their trace was not sampled (and they did not fail).
  uint64_t unsampled() const { return unsampled_.load(std::memory_order_relaxed); }

  // The process-wide tracer the edge, core and store use; nullptr (the default) turns
  // tracing off. The caller keeps ownership and must reset it to nullptr before the Tracer
  // is destroyed.
  static Tracer* Global();
  static void SetGlobal(Tracer* tracer);

 private:
  friend class Span;
  Tracer(TracerOptions options, int fd, bool owns_fd);
  void Finish(std::unique_ptr<SpanData> span, int64_t end_mono_nanos, int64_t start_mono_nanos);
  void WriterLoop();

  const TracerOptions options_;
  const Clock& clock_;
  const int fd_;
  const bool owns_fd_;
  // Unix time in nanoseconds minus the monotonic clock, fixed at Open: span times are
  // monotonic-clock readings placed on the wall-clock axis.
  const int64_t unix_minus_mono_nanos_;

  std::mutex mu_;
  std::condition_variable work_cv_;   // writer: queue not empty, or stopping
  std::condition_variable idle_cv_;   // Flush: queue drained and written
  std::vector<std::unique_ptr<SpanData>> queue_;  // guarded by mu_
  size_t in_flight_ = 0;                          // guarded by mu_: taken, not yet written
  bool running_ = false;                          // guarded by mu_
  bool stopped_ = false;                          // guarded by mu_
  std::thread writer_;

  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> unsampled_{0};
};

// StartSpan on the global tracer; a non-recording Span when tracing is off.
Span StartSpan(std::string_view name, const SpanContext& parent,
               SpanKind kind = SpanKind::kInternal);

// A span owned by the copies of an asynchronous operation's callbacks (std::function needs
// copyable captures). nullptr when tracing is off; the span ends when End() is called or
// the last copy goes away.
using SharedSpan = std::shared_ptr<Span>;
SharedSpan StartSharedSpan(std::string_view name, const SpanContext& parent,
                           SpanKind kind = SpanKind::kInternal);
inline SpanContext ContextOf(const SharedSpan& span) {
  return span ? span->context() : SpanContext{};
}

namespace internal {
inline Status StatusOf(const Status& s) { return s; }
template <typename T>
Status StatusOf(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

// Wraps a completion callback taking a Status or Result<T>: `span` gets the outcome's
// status and ends just before `done` runs (so a child ends before its parent's callback).
template <typename Done>
auto EndSpanBefore(SharedSpan span, Done done) {
  return [span = std::move(span), done = std::move(done)](auto outcome) mutable {
    if (span) {
      span->SetStatus(internal::StatusOf(outcome));
      span->End();
    }
    done(std::move(outcome));
  };
}

}  // namespace iris::obs
