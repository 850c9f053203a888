#include "wire/messages.h"

#include <string>

#include "wire/opcode.h"

namespace iris::wire {
namespace {

template <typename M>
Result<ClientMessage> ParseAndValidate(std::string_view payload, const ValidationLimits& limits,
                                       uint8_t opcode) {
  M m;
  if (!m.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return BadRequest(std::string(OpcodeName(opcode)) + " payload does not parse");
  }
  Status s = Validate(m, limits);
  if (!s.ok()) return s;
  return ClientMessage(std::move(m));
}

bool ReadVarint(std::string_view& in, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in.empty()) return false;
    const auto b = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *out = v;
      return true;
    }
  }
  return false;
}

// Reads a field tag exactly as protobuf's parser does: at most 5 bytes, bits beyond the
// low 32 dropped (so a padded 5-byte encoding of tag 8 is field 1, varint).
bool ReadTag(std::string_view& in, uint32_t* out) {
  uint64_t v = 0;
  for (int i = 0; i < 5; ++i) {
    if (in.empty()) return false;
    const auto b = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) {
      *out = static_cast<uint32_t>(v);
      return true;
    }
  }
  return false;
}

}  // namespace

Result<ClientMessage> DecodeClientFrame(uint8_t opcode, std::string_view p,
                                        const ValidationLimits& l) {
  switch (static_cast<Opcode>(opcode)) {
    case Opcode::kHello: return ParseAndValidate<v1::Hello>(p, l, opcode);
    case Opcode::kPing: return ParseAndValidate<v1::Ping>(p, l, opcode);
    case Opcode::kPong: return ParseAndValidate<v1::Pong>(p, l, opcode);
    case Opcode::kSend: return ParseAndValidate<v1::Send>(p, l, opcode);
    case Opcode::kDeliverAck: return ParseAndValidate<v1::DeliverAck>(p, l, opcode);
    case Opcode::kSync: return ParseAndValidate<v1::Sync>(p, l, opcode);
    case Opcode::kSyncAck: return ParseAndValidate<v1::SyncAck>(p, l, opcode);
    case Opcode::kHistory: return ParseAndValidate<v1::History>(p, l, opcode);
    case Opcode::kReceipt: return ParseAndValidate<v1::Receipt>(p, l, opcode);
    case Opcode::kSettings: return ParseAndValidate<v1::Settings>(p, l, opcode);
    case Opcode::kSettingsGet: return ParseAndValidate<v1::SettingsGet>(p, l, opcode);
    case Opcode::kPresenceSubscribe: return ParseAndValidate<v1::PresenceSubscribe>(p, l, opcode);
    case Opcode::kPresenceUnsubscribe:
      return ParseAndValidate<v1::PresenceUnsubscribe>(p, l, opcode);
    case Opcode::kPresenceQuery: return ParseAndValidate<v1::PresenceQuery>(p, l, opcode);
    case Opcode::kTyping: return ParseAndValidate<v1::Typing>(p, l, opcode);
    case Opcode::kKeysUpload: return ParseAndValidate<v1::KeysUpload>(p, l, opcode);
    case Opcode::kKeysFetch: return ParseAndValidate<v1::KeysFetch>(p, l, opcode);
    case Opcode::kGroupCreate: return ParseAndValidate<v1::GroupCreate>(p, l, opcode);
    case Opcode::kGroupUpdate: return ParseAndValidate<v1::GroupUpdate>(p, l, opcode);
    case Opcode::kGroupGet: return ParseAndValidate<v1::GroupGet>(p, l, opcode);
    case Opcode::kWelcome:
    case Opcode::kError:
    case Opcode::kSendAck:
    case Opcode::kDeliver:
    case Opcode::kSyncPage:
    case Opcode::kSyncDone:
    case Opcode::kHistoryPage:
    case Opcode::kOk:
    case Opcode::kSettingsInfo:
    case Opcode::kPresence:
    case Opcode::kKeysBundle:
    case Opcode::kGroupInfo:
      return BadRequest(std::string(OpcodeName(opcode)) + " is sent by servers, not clients");
  }
  return Status(StatusCode::kUnknownOpcode, "unknown opcode " + std::to_string(opcode));
}

uint64_t PeekRequestId(std::string_view in) {
  // Mirrors how protobuf parses field 1 of a message: the last top-level occurrence with
  // wire type varint wins; other wire types and fields inside (unknown) groups are skipped.
  // On bytes that cannot be read further, the request id found so far is returned.
  constexpr int kMaxGroupDepth = 100;  // protobuf's default recursion limit
  uint64_t found = 0;
  int depth = 0;
  while (!in.empty()) {
    uint32_t tag = 0;
    if (!ReadTag(in, &tag) || (tag >> 3) == 0) return found;
    const uint32_t field = tag >> 3;
    const auto type = static_cast<uint32_t>(tag & 7);
    uint64_t v = 0;
    switch (type) {
      case 0:
        if (!ReadVarint(in, &v)) return found;
        if (field == 1 && depth == 0) found = v;
        break;
      case 1:
        if (in.size() < 8) return found;
        in.remove_prefix(8);
        break;
      case 2:
        if (!ReadVarint(in, &v) || v > in.size()) return found;
        in.remove_prefix(static_cast<size_t>(v));
        break;
      case 3:  // start group
        if (++depth > kMaxGroupDepth) return found;
        break;
      case 4:  // end group
        if (depth == 0) return found;
        --depth;
        break;
      case 5:
        if (in.size() < 4) return found;
        in.remove_prefix(4);
        break;
      default: return found;  // wire types 6 and 7 do not exist
    }
  }
  return found;
}

bool CarriesRequestId(uint8_t opcode) {
  switch (static_cast<Opcode>(opcode)) {
    case Opcode::kSend:
    case Opcode::kHistory:
    case Opcode::kReceipt:
    case Opcode::kSettings:
    case Opcode::kSettingsGet:
    case Opcode::kPresenceSubscribe:
    case Opcode::kPresenceUnsubscribe:
    case Opcode::kPresenceQuery:
    case Opcode::kKeysUpload:
    case Opcode::kKeysFetch:
    case Opcode::kGroupCreate:
    case Opcode::kGroupUpdate:
    case Opcode::kGroupGet: return true;
    default: return false;
  }
}

uint64_t PeekRequestId(uint8_t opcode, std::string_view payload) {
  return CarriesRequestId(opcode) ? PeekRequestId(payload) : 0;
}

uint64_t RequestIdOf(const ClientMessage& m) {
  return std::visit(
      [](const auto& msg) -> uint64_t {
        if constexpr (requires { msg.request_id(); }) {
          return msg.request_id();
        } else {
          return 0;
        }
      },
      m);
}

}  // namespace iris::wire
