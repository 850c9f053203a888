// iris_chaos_cluster_test's main: the process enters a private network namespace of its
// own (harness/network_lab.h) before gtest or any thread starts.
#include <gtest/gtest.h>

#include <iostream>

#include "harness/network_lab.h"

int main(int argc, char** argv) {
  // Before gtest or any thread: the whole test runs in a network namespace of its own.
  const iris::Status s = iris::testing::NetworkLab::EnterPrivateNetwork();
  if (!s.ok()) {
    std::cerr << "iris_chaos_cluster_test: " << s.ToString() << "\n";
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
