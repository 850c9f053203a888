// Status / Result<T> and the error-propagation macros (common/status.h).

#include "common/status.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "common/devices.h"

namespace iris {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.retry_after_ms(), 0u);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_TRUE(Status::Ok().ok());
}

// PROTOCOL.md section 7: the numeric codes are part of the wire contract.
TEST(StatusTest, CodesMatchWireErrorCodes) {
  struct Row {
    StatusCode code;
    uint32_t wire;
    const char* name;
    bool fatal;
  };
  const Row rows[] = {
      {StatusCode::kBadRequest, 1, "BAD_REQUEST", false},
      {StatusCode::kUnauthenticated, 2, "UNAUTHENTICATED", true},
      {StatusCode::kUnsupportedVersion, 3, "UNSUPPORTED_VERSION", true},
      {StatusCode::kRateLimited, 4, "RATE_LIMITED", false},  // fatal only during HELLO
      {StatusCode::kTooLarge, 5, "TOO_LARGE", false},
      {StatusCode::kNotFound, 6, "NOT_FOUND", false},
      {StatusCode::kOverloaded, 7, "OVERLOADED", false},
      {StatusCode::kUnavailable, 8, "UNAVAILABLE", false},
      {StatusCode::kForbidden, 9, "FORBIDDEN", false},
      {StatusCode::kUnknownOpcode, 10, "UNKNOWN_OPCODE", false},
      {StatusCode::kInternal, 11, "INTERNAL", false},
      {StatusCode::kStorageFull, 12, "STORAGE_FULL", false},
      {StatusCode::kSessionReplaced, 13, "SESSION_REPLACED", true},
      {StatusCode::kMismatchedDevices, 14, "MISMATCHED_DEVICES", false},
      {StatusCode::kDeviceRemoved, 15, "DEVICE_REMOVED", true},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(static_cast<uint32_t>(r.code), r.wire);
    EXPECT_EQ(StatusCodeName(r.code), r.name);
    EXPECT_EQ(IsFatalByDefault(r.code), r.fatal);
  }
  EXPECT_EQ(StatusCodeName(StatusCode::kOk), "OK");
  EXPECT_FALSE(IsFatalByDefault(StatusCode::kOk));
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(16)), "UNKNOWN");
  EXPECT_EQ(StatusCodeName(static_cast<StatusCode>(0xffffffffu)), "UNKNOWN");
}

TEST(StatusTest, HelpersSetCodeMessageAndRetryHint) {
  EXPECT_EQ(BadRequest("b").code(), StatusCode::kBadRequest);
  EXPECT_EQ(Unauthenticated("u").code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(TooLarge("t").code(), StatusCode::kTooLarge);
  EXPECT_EQ(NotFound("n").code(), StatusCode::kNotFound);
  EXPECT_EQ(Forbidden("f").code(), StatusCode::kForbidden);
  EXPECT_EQ(Internal("i").code(), StatusCode::kInternal);
  EXPECT_EQ(Unavailable("u").code(), StatusCode::kUnavailable);
  EXPECT_EQ(Overloaded("o").code(), StatusCode::kOverloaded);
  EXPECT_EQ(StorageFull("s").code(), StatusCode::kStorageFull);
  EXPECT_EQ(RateLimited("r", 250).code(), StatusCode::kRateLimited);

  // The retryable codes carry a retry hint (PROTOCOL.md Error.retry_after_ms).
  EXPECT_EQ(RateLimited("r", 250).retry_after_ms(), 250u);
  EXPECT_GT(Unavailable("u").retry_after_ms(), 0u);
  EXPECT_GT(Overloaded("o").retry_after_ms(), 0u);
  EXPECT_GT(StorageFull("s").retry_after_ms(), 0u);
  EXPECT_EQ(Unavailable("u", 42).retry_after_ms(), 42u);
  EXPECT_EQ(BadRequest("b").retry_after_ms(), 0u);

  Status s = NotFound("no such group");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "no such group");
  EXPECT_EQ(s.ToString(), "NOT_FOUND: no such group");
  EXPECT_EQ(Status(StatusCode::kInternal, "").ToString(), "INTERNAL");
}

TEST(StatusTest, EqualityComparesCodeAndMessage) {
  EXPECT_EQ(BadRequest("x"), BadRequest("x"));
  EXPECT_FALSE(BadRequest("x") == BadRequest("y"));
  EXPECT_FALSE(BadRequest("x") == TooLarge("x"));
  EXPECT_EQ(Status(), Status::Ok());
}

TEST(ResultTest, HoldsValue) {
  Result<int> r(7);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.value(), 7);
  EXPECT_EQ(*r, 7);
  *r = 9;
  EXPECT_EQ(r.value(), 9);

  Result<std::string> s(std::string("abc"));
  EXPECT_EQ(s->size(), 3u);
}

TEST(ResultTest, HoldsError) {
  Result<int> r(NotFound("gone"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "gone");
}

TEST(ResultTest, OkStatusWithoutValueBecomesInternal) {
  Result<int> r(Status::Ok());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultTest, MoveOnlyValue) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(5));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

Status FailIf(bool fail) { return fail ? Forbidden("no") : Status::Ok(); }

Status TwoSteps(bool fail_first, bool fail_second, int* steps) {
  IRIS_RETURN_IF_ERROR(FailIf(fail_first));
  ++*steps;
  IRIS_RETURN_IF_ERROR(FailIf(fail_second));
  ++*steps;
  return Status::Ok();
}

TEST(StatusMacrosTest, ReturnIfErrorPropagatesTheFirstFailure) {
  int steps = 0;
  EXPECT_TRUE(TwoSteps(false, false, &steps).ok());
  EXPECT_EQ(steps, 2);
  steps = 0;
  Status s = TwoSteps(true, false, &steps);
  EXPECT_EQ(s.code(), StatusCode::kForbidden);
  EXPECT_EQ(steps, 0);
  steps = 0;
  s = TwoSteps(false, true, &steps);
  EXPECT_EQ(s.code(), StatusCode::kForbidden);
  EXPECT_EQ(steps, 1);
}

Result<int> Half(int x) {
  if (x % 2 != 0) return BadRequest("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  IRIS_ASSIGN_OR_RETURN(int h, Half(x));
  IRIS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Result<std::unique_ptr<int>> Boxed(int x) {
  IRIS_ASSIGN_OR_RETURN(auto h, Half(x));
  return std::make_unique<int>(h);
}

TEST(StatusMacrosTest, AssignOrReturnAssignsOrPropagates) {
  Result<int> q = Quarter(12);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, 3);
  Result<int> bad = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(bad.status().message(), "odd");
  Result<std::unique_ptr<int>> b = Boxed(10);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(**b, 5);
  EXPECT_EQ(Boxed(3).status().code(), StatusCode::kBadRequest);
}

}  // namespace
}  // namespace iris

namespace iris {
namespace {

TEST(DevicesTest, MismatchedDevicesCarriesBothListsThroughItsMessage) {
  const Status s = MismatchedDevices(DeviceBit(2) | DeviceBit(63), DeviceBit(5));
  EXPECT_EQ(s.code(), StatusCode::kMismatchedDevices);
  std::vector<uint32_t> missing, extra;
  ASSERT_TRUE(ParseMismatchedDevices(s, &missing, &extra)) << s.message();
  EXPECT_EQ(missing, (std::vector<uint32_t>{2, 63}));
  EXPECT_EQ(extra, std::vector<uint32_t>{5});
  ASSERT_TRUE(ParseMismatchedDevices(MismatchedDevices(0, 0), &missing, &extra));
  EXPECT_TRUE(missing.empty());
  EXPECT_TRUE(extra.empty());
  EXPECT_FALSE(ParseMismatchedDevices(Forbidden(s.message()), &missing, &extra));
  EXPECT_FALSE(
      ParseMismatchedDevices(Status(StatusCode::kMismatchedDevices, "other"), &missing, &extra));
  EXPECT_FALSE(ParseMismatchedDevices(
      Status(StatusCode::kMismatchedDevices, "devices changed; missing: 0; extra:"), &missing,
      &extra));
  EXPECT_EQ(DeviceIds(DeviceBit(1) | DeviceBit(3)), (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(DeviceBit(0), 0u);
  EXPECT_EQ(DeviceBit(64), 0u);
  EXPECT_TRUE(ForDevice(0, 4));
  EXPECT_TRUE(ForDevice(4, 4));
  EXPECT_FALSE(ForDevice(3, 4));
}

}  // namespace
}  // namespace iris
