// Tracer: OTLP/JSON lines parsed back, parent links, sampling decisions, the bounded queue.

#include "obs/trace.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace iris::obs {
namespace {

using nlohmann::json;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/iris-trace-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::vector<json> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    out.push_back(std::move(j));
  }
  return out;
}

// The one span of an ExportTraceServiceRequest line, after checking the envelope's shape.
json SpanOf(const json& line) {
  EXPECT_TRUE(line.contains("resourceSpans"));
  const json& rs = line["resourceSpans"];
  EXPECT_EQ(rs.size(), 1u);
  const json& attrs = rs[0]["resource"]["attributes"];
  EXPECT_EQ(attrs[0]["key"], "service.name");
  EXPECT_EQ(attrs[0]["value"]["stringValue"], "iris-test");
  const json& ss = rs[0]["scopeSpans"];
  EXPECT_EQ(ss.size(), 1u);
  EXPECT_EQ(ss[0]["scope"]["name"], "iris");
  EXPECT_EQ(ss[0]["spans"].size(), 1u);
  return ss[0]["spans"][0];
}

std::vector<json> ReadSpans(const std::string& path) {
  std::vector<json> spans;
  for (const json& line : ReadLines(path)) spans.push_back(SpanOf(line));
  return spans;
}

bool IsLowerHex(const std::string& s, size_t digits) {
  if (s.size() != digits) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::unique_ptr<Tracer> OpenTracer(const std::string& path, double ratio,
                                   const Clock* clock = nullptr, size_t capacity = 8192) {
  TracerOptions o;
  o.path = path;
  o.sample_ratio = ratio;
  o.service_name = "iris-test";
  o.clock = clock;
  o.queue_capacity = capacity;
  auto t = Tracer::Open(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

const std::string kTraceBytes("\x01\x23\x45\x67\x89\xab\xcd\xef\x10\x32\x54\x76\x98\xba\xdc\xfe",
                              16);
constexpr char kTraceHex[] = "0123456789abcdef1032547698badcfe";

TEST(SpanContextTest, FromTraceIdBytesRoundTripsAndRejectsBadIds) {
  SpanContext c = SpanContext::FromTraceIdBytes(kTraceBytes, 42);
  EXPECT_TRUE(c.valid());
  EXPECT_EQ(c.span_id, 42u);
  EXPECT_EQ(c.TraceIdBytes(), kTraceBytes);
  EXPECT_EQ(TraceIdHex(c.trace_id), kTraceHex);
  EXPECT_EQ(SpanIdHex(0x00ab00cd00ef0012ULL), "00ab00cd00ef0012");

  EXPECT_FALSE(SpanContext::FromTraceIdBytes("").valid());
  EXPECT_FALSE(SpanContext::FromTraceIdBytes(kTraceBytes.substr(0, 15)).valid());
  EXPECT_FALSE(SpanContext::FromTraceIdBytes(std::string(16, '\0'), 7).valid());
  EXPECT_EQ(SpanContext::FromTraceIdBytes(std::string(16, '\0'), 7).span_id, 0u);
  EXPECT_EQ(SpanContext{}.TraceIdBytes(), "");
}

TEST(TraceTest, WritesOneOtlpJsonSpanPerLine) {
  TempDir dir;
  ManualClock clock(1'700'000'000'123, 5'000'000'000);
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0, &clock);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  {
    Span s = tracer->StartSpan("edge.send", SpanContext::FromTraceIdBytes(kTraceBytes),
                               SpanKind::kServer);
    ASSERT_TRUE(s.recording());
    s.SetString("iris.note", "quote\" backslash\\ newline\n bad-utf8 \xff end");
    s.SetInt("iris.message_id", -9'000'000'000'000'000'000LL);
    s.SetDouble("iris.ratio", 0.25);
    s.SetBool("iris.duplicate", true);
    clock.AdvanceMillis(7);
  }  // ends on destruction
  ASSERT_TRUE(tracer->Flush(10'000));
  EXPECT_EQ(tracer->written(), 1u);
  tracer->Stop();

  auto spans = ReadSpans(dir.File("t.jsonl"));
  ASSERT_EQ(spans.size(), 1u);
  const json& s = spans[0];
  EXPECT_EQ(s["traceId"], kTraceHex);
  EXPECT_TRUE(IsLowerHex(s["spanId"].get<std::string>(), 16)) << s["spanId"];
  EXPECT_FALSE(s.contains("parentSpanId")) << "a root span has no parent";
  EXPECT_EQ(s["name"], "edge.send");
  EXPECT_EQ(s["kind"], 2);
  // Times are decimal strings of Unix nanoseconds; the duration is the clock's advance.
  ASSERT_TRUE(s["startTimeUnixNano"].is_string());
  ASSERT_TRUE(s["endTimeUnixNano"].is_string());
  const int64_t start = std::stoll(s["startTimeUnixNano"].get<std::string>());
  const int64_t end = std::stoll(s["endTimeUnixNano"].get<std::string>());
  EXPECT_EQ(start, 1'700'000'000'123LL * 1'000'000);
  EXPECT_EQ(end - start, 7'000'000);
  std::map<std::string, json> attrs;
  for (const json& a : s["attributes"]) attrs[a["key"]] = a["value"];
  ASSERT_EQ(attrs.size(), 4u);
  EXPECT_EQ(attrs["iris.note"]["stringValue"],
            "quote\" backslash\\ newline\n bad-utf8 \xef\xbf\xbd end");
  EXPECT_EQ(attrs["iris.message_id"]["intValue"], "-9000000000000000000");
  EXPECT_EQ(attrs["iris.ratio"]["doubleValue"], 0.25);
  EXPECT_EQ(attrs["iris.duplicate"]["boolValue"], true);
  EXPECT_TRUE(s["status"].is_object());
  EXPECT_FALSE(s["status"].contains("code")) << "status is unset for a span without error";
}

TEST(TraceTest, ChildrenNameTheirParentAndShareTheTrace) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  Span root = tracer->StartSpan("edge.send", SpanContext::FromTraceIdBytes(kTraceBytes));
  Span mid = tracer->StartSpan("core.send", root.context());
  Span leaf = tracer->StartSpan("store.append", mid.context());
  const uint64_t root_id = root.context().span_id, mid_id = mid.context().span_id,
                 leaf_id = leaf.context().span_id;
  EXPECT_NE(root_id, mid_id);
  EXPECT_NE(mid_id, leaf_id);
  leaf.End();
  mid.End();
  root.End();
  root.End();  // idempotent
  Span other = tracer->StartSpan("orphan", SpanContext{});  // a new trace
  other.End();
  tracer->Stop();

  auto spans = ReadSpans(dir.File("t.jsonl"));
  ASSERT_EQ(spans.size(), 4u);
  std::map<std::string, json> by_name;
  for (const json& s : spans) by_name[s["name"]] = s;
  EXPECT_EQ(by_name["store.append"]["traceId"], kTraceHex);
  EXPECT_EQ(by_name["core.send"]["traceId"], kTraceHex);
  EXPECT_EQ(by_name["store.append"]["spanId"], SpanIdHex(leaf_id));
  EXPECT_EQ(by_name["store.append"]["parentSpanId"], SpanIdHex(mid_id));
  EXPECT_EQ(by_name["core.send"]["parentSpanId"], SpanIdHex(root_id));
  EXPECT_FALSE(by_name["edge.send"].contains("parentSpanId"));
  EXPECT_NE(by_name["orphan"]["traceId"], kTraceHex);
  EXPECT_TRUE(IsLowerHex(by_name["orphan"]["traceId"].get<std::string>(), 32));
  EXPECT_FALSE(by_name["orphan"].contains("parentSpanId"));
}

TEST(TraceTest, RatioZeroKeepsOnlyErrorSpans) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 0.0);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  for (int i = 0; i < 10; ++i) tracer->StartSpan("ok", SpanContext{}).End();
  for (int i = 0; i < 3; ++i) {
    Span s = tracer->StartSpan("failed", SpanContext{});
    s.SetStatus(StorageFull("disk full"));
  }
  {
    Span s = tracer->StartSpan("ok-status", SpanContext{});
    s.SetStatus(Status::Ok());
  }
  tracer->Stop();
  EXPECT_EQ(tracer->unsampled(), 11u);
  EXPECT_EQ(tracer->written(), 3u);
  auto spans = ReadSpans(dir.File("t.jsonl"));
  ASSERT_EQ(spans.size(), 3u);
  for (const json& s : spans) {
    EXPECT_EQ(s["name"], "failed");
    EXPECT_EQ(s["status"]["code"], 2);
    EXPECT_NE(s["status"]["message"].get<std::string>().find("disk full"), std::string::npos);
  }
}

TEST(TraceTest, RatioOneKeepsEverything) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  for (int i = 0; i < 500; ++i) tracer->StartSpan("s", SpanContext{}).End();
  tracer->Stop();
  EXPECT_EQ(tracer->written(), 500u);
  EXPECT_EQ(tracer->unsampled(), 0u);
  EXPECT_EQ(tracer->dropped(), 0u);
  EXPECT_EQ(ReadLines(dir.File("t.jsonl")).size(), 500u);
}

TEST(TraceTest, SampledFractionFollowsTheRatio) {
  const uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (double ratio : {0.01, 0.25, 0.5, 0.9}) {
    constexpr int kIds = 40'000;
    int kept = 0;
    for (int i = 0; i < kIds; ++i) {
      TraceId id;
      for (auto& b : id) b = static_cast<uint8_t>(rng());
      const bool sampled = TraceSampled(id, ratio);
      EXPECT_EQ(sampled, TraceSampled(id, ratio)) << "the decision must be deterministic";
      if (sampled) {
        ++kept;
        // Monotonic in the ratio: kept at a ratio means kept at any higher one.
        EXPECT_TRUE(TraceSampled(id, std::min(1.0, ratio + 0.05)));
      }
    }
    const double fraction = static_cast<double>(kept) / kIds;
    // Binomial standard deviation is at most 0.0025 here; allow 5 sigma.
    EXPECT_NEAR(fraction, ratio, 0.0125) << "ratio " << ratio << " seed " << seed;
  }
  TraceId any = NewTraceId();
  EXPECT_TRUE(TraceSampled(any, 1.0));
  EXPECT_FALSE(TraceSampled(any, 0.0));
  EXPECT_FALSE(TraceSampled(any, std::nan("")));
}

TEST(TraceTest, AllSpansOfATraceShareOneSamplingDecision) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 0.5);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  std::map<std::string, bool> expected;  // trace hex -> sampled
  for (int i = 0; i < 200; ++i) {
    Span root = tracer->StartSpan("edge.send", SpanContext{});
    const SpanContext rc = root.context();
    expected[TraceIdHex(rc.trace_id)] = TraceSampled(rc.trace_id, 0.5);
    Span child = tracer->StartSpan("core.send", rc);
    Span leaf = tracer->StartSpan("store.append", child.context());
  }
  tracer->Stop();
  std::map<std::string, int> per_trace;
  for (const json& s : ReadSpans(dir.File("t.jsonl"))) ++per_trace[s["traceId"]];
  int sampled = 0;
  for (const auto& [trace, keep] : expected) {
    const int n = per_trace.count(trace) ? per_trace[trace] : 0;
    EXPECT_EQ(n, keep ? 3 : 0) << trace;
    sampled += keep;
  }
  EXPECT_GT(sampled, 0);
  EXPECT_LT(sampled, 200);
  EXPECT_EQ(tracer->written(), static_cast<uint64_t>(3 * sampled));
  EXPECT_EQ(tracer->unsampled(), static_cast<uint64_t>(3 * (200 - sampled)));
}

TEST(TraceTest, FullQueueDropsAndCountsInsteadOfBlocking) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0, nullptr, /*capacity=*/4);
  ASSERT_NE(tracer, nullptr);
  // The writer is not running yet: nothing drains the queue, and End must still return.
  for (int i = 0; i < 10; ++i) {
    Span s = tracer->StartSpan("s" + std::to_string(i), SpanContext{});
  }
  EXPECT_EQ(tracer->dropped(), 6u);
  tracer->Start();
  ASSERT_TRUE(tracer->Flush(10'000));
  EXPECT_EQ(tracer->written(), 4u);
  auto spans = ReadSpans(dir.File("t.jsonl"));
  ASSERT_EQ(spans.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(spans[i]["name"], "s" + std::to_string(i));
  // Room again once drained.
  tracer->StartSpan("after", SpanContext{}).End();
  ASSERT_TRUE(tracer->Flush(10'000));
  EXPECT_EQ(tracer->written(), 5u);
  EXPECT_EQ(tracer->dropped(), 6u);
}

// Many threads ending spans while the writer drains a small queue: every span is either
// written (as one intact line) or counted as dropped.
TEST(TraceTest, ConcurrentSpansAreWrittenOrCountedNeverLost) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0, nullptr, /*capacity=*/64);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  constexpr int kThreads = 4;
  constexpr int kSpansPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&tracer, t] {
      for (int i = 0; i < kSpansPerThread; ++i) {
        Span root = tracer->StartSpan("root", SpanContext{});
        Span child = tracer->StartSpan("child", root.context());
        child.SetInt("iris.thread", t);
      }
    });
  }
  for (auto& th : threads) th.join();
  tracer->Stop();
  const uint64_t total = 2ull * kThreads * kSpansPerThread;
  EXPECT_EQ(tracer->written() + tracer->dropped(), total);
  EXPECT_GT(tracer->written(), 0u);
  EXPECT_EQ(ReadLines(dir.File("t.jsonl")).size(), tracer->written());
}

TEST(TraceTest, SpansEndedAfterStopAreDroppedAndCounted) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0);
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  Span late = tracer->StartSpan("late", SpanContext{});
  tracer->Stop();
  late.End();
  EXPECT_EQ(tracer->dropped(), 1u);
  EXPECT_EQ(tracer->written(), 0u);
  EXPECT_TRUE(ReadLines(dir.File("t.jsonl")).empty());
}

TEST(TraceTest, OpenRejectsBadOptions) {
  TempDir dir;
  TracerOptions o;
  o.path = "";
  EXPECT_EQ(Tracer::Open(o).status().code(), StatusCode::kBadRequest);
  o.path = dir.File("t.jsonl");
  o.sample_ratio = 1.5;
  EXPECT_EQ(Tracer::Open(o).status().code(), StatusCode::kBadRequest);
  o.sample_ratio = -0.1;
  EXPECT_EQ(Tracer::Open(o).status().code(), StatusCode::kBadRequest);
  o.sample_ratio = 0.5;
  o.queue_capacity = 0;
  EXPECT_EQ(Tracer::Open(o).status().code(), StatusCode::kBadRequest);
  o.queue_capacity = 16;
  o.path = dir.File("no/such/dir/t.jsonl");
  EXPECT_EQ(Tracer::Open(o).status().code(), StatusCode::kInternal);
  o.path = "-";
  EXPECT_TRUE(Tracer::Open(o).ok());
}

TEST(TraceTest, WithoutAGlobalTracerSpansRecordNothing) {
  ASSERT_EQ(Tracer::Global(), nullptr);
  Span s = StartSpan("x", SpanContext::FromTraceIdBytes(kTraceBytes));
  EXPECT_FALSE(s.recording());
  EXPECT_FALSE(s.context().valid());
  s.SetString("k", "v");
  s.SetError("ignored");
  s.End();
  SharedSpan shared = StartSharedSpan("x", SpanContext{});
  EXPECT_EQ(shared, nullptr);
  EXPECT_FALSE(ContextOf(shared).valid());
  int calls = 0;
  auto done = EndSpanBefore(shared, [&](Result<int> r) {
    ++calls;
    EXPECT_EQ(*r, 5);
  });
  done(Result<int>(5));
  EXPECT_EQ(calls, 1);
}

TEST(TraceTest, EndSpanBeforeEndsTheSpanWithTheOutcomeBeforeTheCallback) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 0.0);  // errors only
  ASSERT_NE(tracer, nullptr);
  tracer->Start();
  Tracer::SetGlobal(tracer.get());
  SharedSpan ok_span = StartSharedSpan("ok", SpanContext{});
  ASSERT_NE(ok_span, nullptr);
  const uint64_t ok_id = ok_span->context().span_id;
  SharedSpan bad_span = StartSharedSpan("bad", ok_span->context());
  ASSERT_NE(bad_span, nullptr);
  std::function<void(Result<int>)> ok_done = EndSpanBefore(ok_span, [&](Result<int> r) {
    EXPECT_TRUE(r.ok());
    EXPECT_FALSE(ok_span->recording()) << "ended before the callback";
  });
  std::function<void(Status)> bad_done = EndSpanBefore(bad_span, [&](Status s) {
    EXPECT_EQ(s.code(), StatusCode::kUnavailable);
    EXPECT_FALSE(bad_span->recording());
  });
  bad_done(Unavailable("store: stopping"));
  ok_done(Result<int>(1));
  Tracer::SetGlobal(nullptr);
  tracer->Stop();
  auto spans = ReadSpans(dir.File("t.jsonl"));
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0]["name"], "bad");
  EXPECT_EQ(spans[0]["status"]["code"], 2);
  EXPECT_EQ(spans[0]["parentSpanId"], SpanIdHex(ok_id));
}

TEST(TraceTest, DestroyingTheGlobalTracerUnsetsIt) {
  TempDir dir;
  auto tracer = OpenTracer(dir.File("t.jsonl"), 1.0);
  ASSERT_NE(tracer, nullptr);
  Tracer::SetGlobal(tracer.get());
  EXPECT_EQ(Tracer::Global(), tracer.get());
  tracer.reset();
  EXPECT_EQ(Tracer::Global(), nullptr);
}

}  // namespace
}  // namespace iris::obs
