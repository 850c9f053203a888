#include "common/assert.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace iris {
namespace {
std::atomic<uint64_t> g_bugs{0};
thread_local bool t_loop_thread = false;
}

void AssertFail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "assertion failed: %s at %s:%d\n", expr, file, line);
  std::abort();
}

void ReportBug(const char* msg, const char* file, int line) {
  g_bugs.fetch_add(1, std::memory_order_relaxed);
  std::fprintf(stderr, "BUG: %s at %s:%d\n", msg, file, line);
#ifndef NDEBUG
  std::abort();
#endif
}

bool OnLoopThread() { return t_loop_thread; }

void SetLoopThread(bool on) { t_loop_thread = on; }

uint64_t BugCount() { return g_bugs.load(std::memory_order_relaxed); }

}  // namespace iris
