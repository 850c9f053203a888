#include "harness/network_lab.h"

#include <sched.h>

#include <atomic>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "harness/run_program.h"

namespace iris::testing {
namespace {

const char* const kTable = "irislab";

}  // namespace

int NetworkLab::NextInstance() {
  static std::atomic<int> next{0};
  return next.fetch_add(1);
}

Status NetworkLab::EnterPrivateNetwork() {
  if (unshare(CLONE_NEWNET) != 0) {
    return Status(StatusCode::kUnavailable,
                  std::string("unshare(CLONE_NEWNET) failed (root is needed): ") +
                      std::strerror(errno));
  }
  std::string out;
  if (RunProgram({"/usr/sbin/ip", "link", "set", "lo", "up"}, &out, 10'000) != 0) {
    return Status(StatusCode::kUnavailable, "ip link set lo up: " + out);
  }
  return Status::Ok();
}

std::string NetworkLab::Name(int k) const { return prefix_ + "-n" + std::to_string(k); }

Status NetworkLab::Run(const std::vector<std::string>& argv) {
  std::string out;
  std::vector<std::string> a = argv;
  if (a[0] == "ip") a[0] = "/usr/sbin/ip";
  if (a[0] == "nft") a[0] = "/usr/sbin/nft";
  const int rc = RunProgram(a, &out, 10'000);
  if (rc == 0) return Status::Ok();
  std::string cmd;
  for (const auto& s : argv) cmd += (cmd.empty() ? "" : " ") + s;
  return Status(StatusCode::kInternal,
                cmd + " exited " + std::to_string(rc) + ": " + out);
}

NetworkLab::NetworkLab(int nodes)
    : nodes_(nodes),
      instance_(NextInstance()),
      prefix_("iris-" + std::to_string(getpid()) + "-" + std::to_string(instance_)) {
  auto step = [this](const std::vector<std::string>& argv) {
    if (status_.ok()) status_ = Run(argv);
  };
  // No spanning tree and no forwarding delay: a port forwards as soon as its link is up.
  step({"ip", "link", "add", "irisbr", "type", "bridge", "forward_delay", "0", "stp_state", "0"});
  bridge_ = status_.ok();
  step({"ip", "addr", "add", HubAddress() + "/24", "dev", "irisbr"});
  step({"ip", "link", "set", "irisbr", "up"});
  for (int k = 1; k <= nodes && status_.ok(); ++k) {
    step({"ip", "netns", "add", Name(k)});
    if (status_.ok()) created_.push_back(k);
    step({"ip", "link", "add", Veth(k), "type", "veth", "peer", "name", "eth0", "netns", Name(k)});
    step({"ip", "link", "set", Veth(k), "master", "irisbr"});
    step({"ip", "link", "set", Veth(k), "up"});
    step({"ip", "netns", "exec", Name(k), "ip", "addr", "add", Address(k) + "/24", "dev", "eth0"});
    step({"ip", "netns", "exec", Name(k), "ip", "link", "set", "eth0", "up"});
    step({"ip", "netns", "exec", Name(k), "ip", "link", "set", "lo", "up"});
  }
  step({"nft", "add", "table", "bridge", kTable});
  if (status_.ok()) table_ = true;
  step({"nft", "add", "chain", "bridge", kTable, "cut",
        "{ type filter hook forward priority 0; policy accept; }"});
  // What the hub itself serves (etcd) is not forwarded by the bridge: its own input and
  // output chains cut a node from one of its ports (CutFromHubPort).
  step({"nft", "add", "table", "ip", kTable});
  if (status_.ok()) hub_table_ = true;
  step({"nft", "add", "chain", "ip", kTable, "hub_in",
        "{ type filter hook input priority 0; policy accept; }"});
  step({"nft", "add", "chain", "ip", kTable, "hub_out",
        "{ type filter hook output priority 0; policy accept; }"});
}

NetworkLab::~NetworkLab() {
  if (table_) Run({"nft", "delete", "table", "bridge", kTable}).IgnoreError();
  if (hub_table_) Run({"nft", "delete", "table", "ip", kTable}).IgnoreError();
  // Deleting one end of a veth pair deletes both (a namespace's end would otherwise linger
  // until the kernel has finished destroying the namespace).
  for (int k : created_) {
    Run({"ip", "link", "del", Veth(k)}).IgnoreError();
    Run({"ip", "netns", "del", Name(k)}).IgnoreError();
  }
  if (bridge_) Run({"ip", "link", "del", "irisbr"}).IgnoreError();
}

Status NetworkLab::Isolate(int k) { return Run({"ip", "link", "set", Veth(k), "down"}); }

Status NetworkLab::Reconnect(int k) { return Run({"ip", "link", "set", Veth(k), "up"}); }

Status NetworkLab::Cut(int a, int b) {
  for (auto [from, to] : {std::pair{a, b}, std::pair{b, a}}) {
    IRIS_RETURN_IF_ERROR(Run({"nft", "add", "rule", "bridge", kTable, "cut", "ip", "saddr",
                              Address(from), "ip", "daddr", Address(to), "drop"}));
  }
  return Status::Ok();
}

Status NetworkLab::CutFromHubPort(int k, uint16_t port) {
  const std::string p = std::to_string(port);
  IRIS_RETURN_IF_ERROR(Run({"nft", "add", "rule", "ip", kTable, "hub_in", "ip", "saddr",
                            Address(k), "tcp", "dport", p, "drop"}));
  return Run({"nft", "add", "rule", "ip", kTable, "hub_out", "ip", "daddr", Address(k), "tcp",
              "sport", p, "drop"});
}

Status NetworkLab::HealAll() {
  IRIS_RETURN_IF_ERROR(Run({"nft", "flush", "chain", "bridge", kTable, "cut"}));
  IRIS_RETURN_IF_ERROR(Run({"nft", "flush", "chain", "ip", kTable, "hub_in"}));
  IRIS_RETURN_IF_ERROR(Run({"nft", "flush", "chain", "ip", kTable, "hub_out"}));
  for (int k = 1; k <= nodes_; ++k) IRIS_RETURN_IF_ERROR(Reconnect(k));
  return Status::Ok();
}

}  // namespace iris::testing
