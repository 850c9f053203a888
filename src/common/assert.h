#pragma once
// Three assertion levels (STYLE.md, after Envoy):
//   IRIS_ASSERT(cond)          debug-only invariant; compiled out of release builds.
//   IRIS_RELEASE_ASSERT(cond)  unrecoverable: logs and aborts in every build.
//   IRIS_BUG(msg)              a should-never-happen that the process survives: in release it
//                              logs and counts (BugCount()); in debug it aborts.
// Nothing caused by network input may be asserted: handle it and answer an error.

#include <cstdint>

namespace iris {
[[noreturn]] void AssertFail(const char* expr, const char* file, int line);
void ReportBug(const char* msg, const char* file, int line);
// Number of IRIS_BUG reports since start (exported as a metric).
uint64_t BugCount();

// Whether the calling thread is an event-loop thread (net::EventLoop::Run marks its thread).
// An event-loop thread must never wait for the disk or for a round trip to another process
// (docs/architecture.md, "No loop thread waits"): the store's blocking entry points assert
// IRIS_ASSERT_NOT_ON_LOOP_THREAD().
bool OnLoopThread();
// Marks (or unmarks) the calling thread as an event-loop thread.
void SetLoopThread(bool on);
}  // namespace iris

#define IRIS_RELEASE_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::iris::AssertFail(#cond, __FILE__, __LINE__))

#ifdef NDEBUG
#define IRIS_ASSERT(cond) static_cast<void>(0)
#else
#define IRIS_ASSERT(cond) IRIS_RELEASE_ASSERT(cond)
#endif

// A blocking call (disk wait, synchronous round trip) reached from an event-loop thread.
#define IRIS_ASSERT_NOT_ON_LOOP_THREAD() IRIS_ASSERT(!::iris::OnLoopThread())

#define IRIS_BUG(msg) ::iris::ReportBug((msg), __FILE__, __LINE__)
