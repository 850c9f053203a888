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
}  // namespace iris

#define IRIS_RELEASE_ASSERT(cond) \
  ((cond) ? static_cast<void>(0) : ::iris::AssertFail(#cond, __FILE__, __LINE__))

#ifdef NDEBUG
#define IRIS_ASSERT(cond) static_cast<void>(0)
#else
#define IRIS_ASSERT(cond) IRIS_RELEASE_ASSERT(cond)
#endif

#define IRIS_BUG(msg) ::iris::ReportBug((msg), __FILE__, __LINE__)
