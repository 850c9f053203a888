#include "obs/trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

#include "obs/json_escape.h"

namespace iris::obs {
namespace {

std::atomic<Tracer*> g_tracer{nullptr};

// Per-thread generator for ids: seeded once from the OS, then splitmix64 (fast, and ids only
// need to be unique, not secret).
uint64_t NextRandom() {
  thread_local uint64_t state = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }();
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

void AppendHex(std::string* out, const uint8_t* bytes, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) {
    out->push_back(kHex[bytes[i] >> 4]);
    out->push_back(kHex[bytes[i] & 0xF]);
  }
}

void AppendSpanIdHex(std::string* out, uint64_t id) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(id >> (56 - 8 * i));
  AppendHex(out, b, 8);
}

bool WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

int64_t UnixMinusMonoNanos(const Clock& clock, bool system_clock) {
  int64_t unix_nanos;
  if (system_clock) {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unix_nanos = static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  } else {
    unix_nanos = clock.WallMillis() * 1'000'000;
  }
  return unix_nanos - clock.MonoNanos();
}

}  // namespace

bool SpanContext::valid() const {
  for (uint8_t b : trace_id) {
    if (b != 0) return true;
  }
  return false;
}

SpanContext SpanContext::FromTraceIdBytes(std::string_view bytes, uint64_t span_id) {
  SpanContext c;
  if (bytes.size() != c.trace_id.size()) return c;
  for (size_t i = 0; i < bytes.size(); ++i) c.trace_id[i] = static_cast<uint8_t>(bytes[i]);
  if (!c.valid()) return SpanContext{};
  c.span_id = span_id;
  return c;
}

std::string SpanContext::TraceIdBytes() const {
  if (!valid()) return {};
  return std::string(reinterpret_cast<const char*>(trace_id.data()), trace_id.size());
}

std::string TraceIdHex(const TraceId& id) {
  std::string s;
  AppendHex(&s, id.data(), id.size());
  return s;
}

std::string SpanIdHex(uint64_t id) {
  std::string s;
  AppendSpanIdHex(&s, id);
  return s;
}

TraceId NewTraceId() {
  TraceId id;
  const uint64_t a = NextRandom();
  const uint64_t b = NextRandom() | 1;  // never all zero
  for (int i = 0; i < 8; ++i) {
    id[i] = static_cast<uint8_t>(a >> (56 - 8 * i));
    id[8 + i] = static_cast<uint8_t>(b >> (56 - 8 * i));
  }
  return id;
}

uint64_t NewSpanId() {
  uint64_t id;
  do {
    id = NextRandom();
  } while (id == 0);
  return id;
}

bool TraceSampled(const TraceId& id, double ratio) {
  if (!(ratio > 0)) return false;  // also NaN
  if (ratio >= 1) return true;
  // The low 8 bytes, big-endian, without the top bit: uniform in [0, 2^63) for random ids.
  uint64_t low = 0;
  for (int i = 8; i < 16; ++i) low = (low << 8) | id[i];
  low &= ~(uint64_t{1} << 63);
  const auto bound = static_cast<uint64_t>(std::ldexp(ratio, 63));
  return low < bound;
}

void AppendOtlpJson(std::string* out, const SpanData& s, std::string_view service_name) {
  out->append(R"({"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":)");
  AppendJsonString(out, service_name);
  out->append(R"(}}]},"scopeSpans":[{"scope":{"name":"iris"},"spans":[{"traceId":")");
  AppendHex(out, s.trace_id.data(), s.trace_id.size());
  out->append(R"(","spanId":")");
  AppendSpanIdHex(out, s.span_id);
  out->push_back('"');
  if (s.parent_span_id != 0) {
    out->append(R"(,"parentSpanId":")");
    AppendSpanIdHex(out, s.parent_span_id);
    out->push_back('"');
  }
  out->append(R"(,"name":)");
  AppendJsonString(out, s.name);
  out->append(R"(,"kind":)");
  out->append(std::to_string(static_cast<int>(s.kind)));
  out->append(R"(,"startTimeUnixNano":")");
  out->append(std::to_string(s.start_unix_nanos));
  out->append(R"(","endTimeUnixNano":")");
  out->append(std::to_string(s.end_unix_nanos));
  out->append(R"(","attributes":[)");
  for (size_t i = 0; i < s.attributes.size(); ++i) {
    const SpanAttribute& a = s.attributes[i];
    if (i > 0) out->push_back(',');
    out->append(R"({"key":)");
    AppendJsonString(out, a.key);
    out->append(R"(,"value":{)");
    if (const auto* str = std::get_if<std::string>(&a.value)) {
      out->append(R"("stringValue":)");
      AppendJsonString(out, *str);
    } else if (const auto* i64 = std::get_if<int64_t>(&a.value)) {
      // Protobuf's JSON mapping writes 64-bit integers as strings.
      out->append(R"("intValue":")");
      out->append(std::to_string(*i64));
      out->push_back('"');
    } else if (const auto* d = std::get_if<double>(&a.value)) {
      out->append(R"("doubleValue":)");
      AppendJsonDouble(out, *d);
    } else {
      out->append(R"("boolValue":)");
      out->append(std::get<bool>(a.value) ? "true" : "false");
    }
    out->append("}}");
  }
  out->append(R"(],"status":{)");
  if (s.error) {
    out->append(R"("code":2,"message":)");
    AppendJsonString(out, s.status_message);
  }
  out->append("}}]}]}]}");
}

// ---------------------------------------------------------------------------------------
// Span

Span::Span(Span&& other) noexcept
    : tracer_(other.tracer_),
      data_(std::move(other.data_)),
      start_mono_nanos_(other.start_mono_nanos_) {
  other.tracer_ = nullptr;
}

Span& Span::operator=(Span&& other) noexcept {
  if (this != &other) {
    End();
    tracer_ = other.tracer_;
    data_ = std::move(other.data_);
    start_mono_nanos_ = other.start_mono_nanos_;
    other.tracer_ = nullptr;
  }
  return *this;
}

SpanContext Span::context() const {
  if (!data_) return SpanContext{};
  return SpanContext{data_->trace_id, data_->span_id};
}

void Span::SetString(std::string_view key, std::string_view value) {
  if (data_) data_->attributes.push_back({std::string(key), std::string(value)});
}

void Span::SetInt(std::string_view key, int64_t value) {
  if (data_) data_->attributes.push_back({std::string(key), value});
}

void Span::SetDouble(std::string_view key, double value) {
  if (data_) data_->attributes.push_back({std::string(key), value});
}

void Span::SetBool(std::string_view key, bool value) {
  if (data_) data_->attributes.push_back({std::string(key), value});
}

void Span::SetError(std::string_view message) {
  if (!data_) return;
  data_->error = true;
  data_->status_message = std::string(message);
}

void Span::SetStatus(const Status& status) {
  if (data_ && !status.ok()) SetError(status.ToString());
}

void Span::End() {
  if (!data_) return;
  Tracer* t = tracer_;
  tracer_ = nullptr;
  t->Finish(std::move(data_), t->clock_.MonoNanos(), start_mono_nanos_);
}

// ---------------------------------------------------------------------------------------
// Tracer

Result<std::unique_ptr<Tracer>> Tracer::Open(TracerOptions options) {
  if (options.path.empty()) return BadRequest("trace: no output path");
  if (!(options.sample_ratio >= 0 && options.sample_ratio <= 1)) {
    return BadRequest("trace: sample ratio must be within [0, 1]");
  }
  if (options.queue_capacity == 0) return BadRequest("trace: queue capacity must be positive");
  int fd = 2;
  bool owns = false;
  if (options.path != "-" && options.path != "stderr") {
    fd = open(options.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      return Internal("trace: cannot open " + options.path + ": " + std::strerror(errno));
    }
    owns = true;
  }
  return std::unique_ptr<Tracer>(new Tracer(std::move(options), fd, owns));
}

Tracer::Tracer(TracerOptions options, int fd, bool owns_fd)
    : options_(std::move(options)),
      clock_(options_.clock ? *options_.clock : SystemClock::Instance()),
      fd_(fd),
      owns_fd_(owns_fd),
      unix_minus_mono_nanos_(UnixMinusMonoNanos(clock_, options_.clock == nullptr)) {
  queue_.reserve(std::min<size_t>(options_.queue_capacity, 1024));
}

Tracer::~Tracer() {
  Stop();
  Tracer* self = this;
  g_tracer.compare_exchange_strong(self, nullptr);  // never leave a dangling global
  if (owns_fd_) close(fd_);
}

void Tracer::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_ || stopped_) return;
  running_ = true;
  writer_ = std::thread([this] { WriterLoop(); });
}

void Tracer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    if (!running_) {
      // Never started: nothing will write what is queued.
      dropped_.fetch_add(queue_.size(), std::memory_order_relaxed);
      queue_.clear();
      return;
    }
  }
  work_cv_.notify_one();
  writer_.join();
}

Span Tracer::StartSpan(std::string_view name, const SpanContext& parent, SpanKind kind) {
  auto data = std::make_unique<SpanData>();
  if (parent.valid()) {
    data->trace_id = parent.trace_id;
    data->parent_span_id = parent.span_id;
  } else {
    data->trace_id = NewTraceId();
  }
  data->span_id = NewSpanId();
  data->name = std::string(name);
  data->kind = kind;
  data->sampled = TraceSampled(data->trace_id, options_.sample_ratio);
  const int64_t now = clock_.MonoNanos();
  data->start_unix_nanos = unix_minus_mono_nanos_ + now;
  return Span(this, std::move(data), now);
}

void Tracer::Finish(std::unique_ptr<SpanData> span, int64_t end_mono_nanos,
                    int64_t start_mono_nanos) {
  if (!span->sampled && !span->error) {
    unsampled_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  span->end_unix_nanos =
      span->start_unix_nanos + std::max<int64_t>(0, end_mono_nanos - start_mono_nanos);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ || queue_.size() >= options_.queue_capacity) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    wake = queue_.empty();
    queue_.push_back(std::move(span));
  }
  if (wake) work_cv_.notify_one();
}

bool Tracer::Flush(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [&] { return queue_.empty() && in_flight_ == 0; });
}

void Tracer::WriterLoop() {
  std::vector<std::unique_ptr<SpanData>> batch;
  std::string text;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      in_flight_ = 0;
      idle_cv_.notify_all();
      work_cv_.wait(lock, [&] { return !queue_.empty() || stopped_; });
      if (queue_.empty()) return;  // stopped and drained
      batch.swap(queue_);
      in_flight_ = batch.size();
    }
    text.clear();
    for (const auto& s : batch) {
      AppendOtlpJson(&text, *s, options_.service_name);
      text.push_back('\n');
    }
    if (WriteAll(fd_, text)) {
      written_.fetch_add(batch.size(), std::memory_order_relaxed);
    } else {
      dropped_.fetch_add(batch.size(), std::memory_order_relaxed);
    }
    batch.clear();
    if (text.capacity() > (1u << 20)) std::string().swap(text);
  }
}

Tracer* Tracer::Global() { return g_tracer.load(std::memory_order_acquire); }

void Tracer::SetGlobal(Tracer* tracer) { g_tracer.store(tracer, std::memory_order_release); }

Span StartSpan(std::string_view name, const SpanContext& parent, SpanKind kind) {
  Tracer* t = Tracer::Global();
  if (t == nullptr) return Span();
  return t->StartSpan(name, parent, kind);
}

SharedSpan StartSharedSpan(std::string_view name, const SpanContext& parent, SpanKind kind) {
  Tracer* t = Tracer::Global();
  if (t == nullptr) return nullptr;
  return std::make_shared<Span>(t->StartSpan(name, parent, kind));
}

}  // namespace iris::obs
