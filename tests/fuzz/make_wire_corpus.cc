// Writes the seed corpus of iris_wire_fuzz (tests/fuzz/corpus/wire/): one valid frame per
// client opcode, a stream of several frames, and a few malformed inputs. Run once and commit
// the output; rerun only when the protocol changes:
//
//   build-fuzz/tests/fuzz/iris_wire_fuzz_corpus_gen tests/fuzz/corpus/wire

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "unit/wire/sample_messages.h"
#include "wire/frame.h"
#include "wire/opcode.h"

namespace {

using iris::wire::AppendFrame;
using iris::wire::OpcodeName;
namespace samples = iris::wire::samples;

std::string Frame(uint8_t opcode, const std::string& payload) {
  std::string out;
  if (!AppendFrame(&out, opcode, payload).ok()) std::abort();
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
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

  // One valid frame per client opcode, and all of them as one stream.
  std::string stream;
  for (const auto& s : samples::AllSamplePayloads()) {
    const std::string frame = Frame(s.opcode, s.payload);
    files.emplace_back("valid_" + Lower(OpcodeName(s.opcode)), frame);
    stream += frame;
  }
  files.emplace_back("valid_stream_all_opcodes", stream);

  // Malformed inputs.
  iris::v1::Send empty_body = samples::SampleSend();
  empty_body.clear_body();
  files.emplace_back("bad_send_empty_body", Frame(0x10, empty_body.SerializeAsString()));
  iris::v1::Send bad_key = samples::SampleSend();
  bad_key.set_idempotency_key("not-a-uuid");
  files.emplace_back("bad_send_idempotency_key", Frame(0x10, bad_key.SerializeAsString()));
  iris::v1::PresenceQuery too_many = samples::SamplePresenceQuery();
  for (uint64_t u = 1; u <= 256; ++u) too_many.add_users(u);
  files.emplace_back("too_large_presence_query", Frame(0x42, too_many.SerializeAsString()));
  files.emplace_back("server_only_welcome", Frame(0x02, std::string("\x08\x01", 2)));
  files.emplace_back("unknown_opcode", Frame(0x7f, samples::SamplePing().SerializeAsString()));
  files.emplace_back("truncated_send",
                     Frame(0x10, samples::SampleSend().SerializeAsString()).substr(0, 20));
  files.emplace_back("hostile_length", std::string("\x10\xff\xff\x08\x01", 5));
  files.emplace_back("garbage_payload", Frame(0x30, std::string("\xff\xff\xff\x0f\x00", 5)));
  files.emplace_back("hello_invalid_utf8",
                     Frame(0x01, std::string("\x08\x01\x1a\x02\xc3\x28", 6)));  // token field

  for (const auto& [name, bytes] : files) {
    if (!Write(dir, name, bytes)) {
      std::fprintf(stderr, "cannot write %s/%s\n", dir.c_str(), name.c_str());
      return 1;
    }
  }
  std::printf("wrote %zu files to %s\n", files.size(), dir.c_str());
  return 0;
}
