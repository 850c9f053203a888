// The "this is an event-loop thread" flag behind IRIS_ASSERT_NOT_ON_LOOP_THREAD
// (docs/architecture.md, "No loop thread waits").
#include <gtest/gtest.h>

#include <thread>

#include "common/assert.h"

namespace iris {
namespace {

TEST(LoopThreadTest, FlagIsPerThreadAndOffByDefault) {
  EXPECT_FALSE(OnLoopThread());
  SetLoopThread(true);
  EXPECT_TRUE(OnLoopThread());
  bool other = true;
  std::thread t([&] { other = OnLoopThread(); });
  t.join();
  EXPECT_FALSE(other) << "a new thread is not a loop thread";
  SetLoopThread(false);
  EXPECT_FALSE(OnLoopThread());
}

#ifndef NDEBUG
TEST(LoopThreadDeathTest, BlockingEntryPointAbortsOnALoopThreadInDebugBuilds) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // not a loop thread: passes
  EXPECT_DEATH(
      {
        SetLoopThread(true);
        IRIS_ASSERT_NOT_ON_LOOP_THREAD();
      },
      "OnLoopThread");
}
#endif

}  // namespace
}  // namespace iris
