#include "capacity.h"

#include <gtest/gtest.h>

namespace iris::tools {
namespace {

TEST(CapacityTest, RfcFormulaWithDefaults) {
  CapacityInputs in;  // 5B DAU, 10 %, 100K per edge, 100K per shard, x1.5
  auto p = PlanCapacity(in);
  ASSERT_TRUE(p.ok());
  EXPECT_DOUBLE_EQ(p->concurrent_connections, 5e8);
  EXPECT_EQ(p->edge_nodes, 7'500u);     // 5e8 / 1e5 * 1.5
  EXPECT_EQ(p->core_shards, 75'000u);   // 5e9 / 1e5 * 1.5
  EXPECT_EQ(p->core_nodes, 150'000u);
  EXPECT_EQ(p->core_nodes_for_throughput, 0u);
}

TEST(CapacityTest, MeasuredFiguresDriveNodeCounts) {
  CapacityInputs in;
  in.dau = 1e6;
  in.messages_per_user_per_day = 86.4;  // 1 msg/s per 1,000 users
  in.peak_to_average = 2;
  in.measured_msgs_per_sec_per_node = 1000;
  in.measured_conns_per_node = 20000;
  auto p = PlanCapacity(in);
  ASSERT_TRUE(p.ok());
  EXPECT_NEAR(p->peak_msgs_per_sec, 2000, 1e-6);
  EXPECT_EQ(p->core_nodes_for_throughput, 6u);  // 2000 * 2 / 1000 * 1.5
  EXPECT_EQ(p->edge_nodes_for_connections, 8u);  // 1e5 / 2e4 * 1.5 = 7.5
}

TEST(CapacityTest, OutputSaysItIsAModel) {
  CapacityInputs in;
  auto plan = PlanCapacity(in);
  ASSERT_TRUE(plan.ok());
  const std::string text = FormatCapacityPlan(in, *plan);
  EXPECT_EQ(text.rfind("A model, not a measurement", 0), 0u) << text;
  EXPECT_NE(text.find("replica"), std::string::npos) << text;
  EXPECT_NE(text.find("--replicas 3"), std::string::npos) << text;
}

TEST(CapacityTest, RejectsInputsOutsideRfcRanges) {
  CapacityInputs in;
  in.concurrent_ratio = 0.2;
  EXPECT_EQ(PlanCapacity(in).status().code(), StatusCode::kBadRequest);
  in = {};
  in.conn_per_edge = 300'000;
  EXPECT_EQ(PlanCapacity(in).status().code(), StatusCode::kBadRequest);
  in = {};
  in.users_per_shard = 10'000;
  EXPECT_EQ(PlanCapacity(in).status().code(), StatusCode::kBadRequest);
  in = {};
  in.safety = 1.0;
  EXPECT_EQ(PlanCapacity(in).status().code(), StatusCode::kBadRequest);
  in = {};
  in.dau = 0;
  EXPECT_EQ(PlanCapacity(in).status().code(), StatusCode::kBadRequest);
}

}  // namespace
}  // namespace iris::tools
