#pragma once
// An EdgeSink that forwards to another set later: what an in-process stack needs because the
// core (which takes the sink) is built before the edge (which is the sink), as server.cc's
// ForwardingSink does. `to` must be set before the core pushes anything.

#include "core/core_api.h"

namespace iris::testing {

struct ForwardingSink final : core::EdgeSink {
  core::EdgeSink* to = nullptr;
  void Deliver(const core::SessionRef& r, const v1::Envelope& e) override { to->Deliver(r, e); }
  void Replace(const core::SessionRef& r) override { to->Replace(r); }
  void RemoveDevice(const core::SessionRef& r) override { to->RemoveDevice(r); }
  void SettleRate(const core::SessionRef& r, uint64_t u, const core::RateDebt& d) override {
    to->SettleRate(r, u, d);
  }
  void SendPresence(const core::SessionRef& r, const v1::Presence& p) override {
    to->SendPresence(r, p);
  }
  void SendTyping(const core::SessionRef& r, const v1::Typing& t) override { to->SendTyping(r, t); }
};

}  // namespace iris::testing
