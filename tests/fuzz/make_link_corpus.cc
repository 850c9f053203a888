// Writes the seed corpus of iris_link_fuzz (tests/fuzz/corpus/link/). Byte 0 of an input
// chooses the side (even: bytes an edge process sends to the core server; odd: bytes the
// core sends back to a RemoteCore with one SEND out, call id 1) and the read chunking;
// the rest is the stream of 4-byte big-endian length-prefixed messages. Run once and
// commit the output; rerun only when proto/iris/v1/internal.proto changes:
//
//   build-fuzz/tests/fuzz/iris_link_fuzz_corpus_gen tests/fuzz/corpus/link

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "iris/v1/internal.pb.h"

namespace {

namespace ipb = iris::internal::v1;

std::string Frame(const google::protobuf::MessageLite& m) {
  const std::string body = m.SerializeAsString();
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(body.size() >> (8 * (3 - i)));
  return out + body;
}

std::vector<ipb::CoreRequest> Requests() {
  std::vector<ipb::CoreRequest> out;
  auto add = [&out](uint64_t call) -> ipb::CoreRequest& {
    out.emplace_back();
    out.back().set_call_id(call);
    out.back().set_user(7);
    out.back().mutable_ref()->set_edge(1);
    out.back().mutable_ref()->set_session(99);
    return out.back();
  };
  add(1).set_hello(0);
  add(2).set_revocations(true);
  add(3).set_register_session(true);
  add(4).set_unregister_session(true);
  out.back().mutable_rate_debt()->add_ns(5);
  out.back().mutable_rate_debt()->add_ns(-1);
  ipb::SendCall* s = add(5).mutable_send();
  s->mutable_send()->set_request_id(1);
  s->mutable_send()->set_recipient(8);
  s->mutable_send()->set_body("hi");
  s->set_trace_id(std::string(16, '\x01'));
  add(6).mutable_receipt()->add_message_ids(1);
  add(7).mutable_settings()->set_read_receipts(false);
  add(0).mutable_typing()->set_user(8);
  add(8).mutable_subscribe()->add_users(8);
  add(9).mutable_unsubscribe()->add_users(8);
  add(10).mutable_query_presence()->add_users(8);
  add(11).mutable_keys_upload()->set_registration_id(1);
  add(12).set_keys_fetch(8);
  add(13).mutable_group_create()->add_members(8);
  add(14).mutable_group_update()->set_group_id(1);
  add(15).set_group_get(1);
  add(16).mutable_scan()->set_limit(10);
  add(17).mutable_history()->set_limit(10);
  add(18).set_pressure(0.5);
  add(19).mutable_peer_hello()->set_node(2);
  add(20).mutable_append_envelopes()->set_idempotency_key("k");
  add(21).set_get_settings(8);
  add(22).mutable_relay_typing()->set_user(8);
  add(23);  // no op
  return out;
}

std::vector<ipb::CoreMessage> Messages() {
  std::vector<ipb::CoreMessage> out;
  auto push = [&out]() -> ipb::Push& {
    out.emplace_back();
    ipb::Push* p = out.back().mutable_push();
    p->mutable_to()->set_edge(1);
    p->mutable_to()->set_session(99);
    return *p;
  };
  push().mutable_deliver()->set_body("m");
  push().set_replace(true);
  push().mutable_presence()->set_user(8);
  push().mutable_typing()->set_user(8);
  push().mutable_revoke_jti()->set_jti("j");
  push().mutable_revoke_user()->set_user(8);
  ipb::SettleRate* sr = push().mutable_settle_rate();
  sr->set_user(7);
  sr->mutable_debt()->add_ns(1'000'000'000'000'000);
  sr->mutable_debt()->add_ns(-5);
  push();              // no what
  out.emplace_back();  // the reply to the SEND (call 1)
  out.back().set_call_id(1);
  out.back().mutable_outcome()->set_message_id(42);
  out.emplace_back();  // a reply nobody waits for
  out.back().set_call_id(77);
  out.back().mutable_status()->set_code(4);
  return out;
}

bool Write(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::ofstream f(dir + "/" + name, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus_dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<std::pair<std::string, std::string>> files;

  // Serving side (byte 0 even): every request op, one per file, and all as one stream.
  std::string all = std::string(1, '\x00');
  int i = 0;
  for (const ipb::CoreRequest& r : Requests()) {
    files.emplace_back("request_" + std::to_string(i++), std::string(1, '\x02') + Frame(r));
    all += Frame(r);
  }
  files.emplace_back("requests_all", all);
  const std::string send = Frame(Requests()[4]);
  files.emplace_back("request_then_unparsable",
                     "\x04" + send + std::string("\x00\x00\x00\x02\xff\xff", 6) + send);
  files.emplace_back("request_then_oversized",
                     "\x06" + send + std::string("\x01\x00\x00\x01", 4) + send);
  files.emplace_back("request_truncated", "\x08" + send.substr(0, send.size() - 2));

  // Calling side (byte 0 odd): pushes and replies.
  std::string msgs = std::string(1, '\x01');
  i = 0;
  for (const ipb::CoreMessage& m : Messages()) {
    files.emplace_back("message_" + std::to_string(i++), std::string(1, '\x03') + Frame(m));
    msgs += Frame(m);
  }
  files.emplace_back("messages_all", msgs);
  const std::string reply = Frame(Messages()[8]);
  files.emplace_back("message_unparsable_then_reply",
                     "\x05" + std::string("\x00\x00\x00\x01\x80", 5) + reply);
  files.emplace_back("message_oversized_then_reply",
                     "\x07" + std::string("\xff\xff\xff\xff", 4) + reply);

  for (const auto& f : files) {
    if (!Write(dir, f.first, f.second)) {
      std::fprintf(stderr, "cannot write %s/%s\n", dir.c_str(), f.first.c_str());
      return 1;
    }
  }
  std::printf("wrote %zu files to %s\n", files.size(), dir.c_str());
  return 0;
}
