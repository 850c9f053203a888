#include "wire/frame.h"

#include <google/protobuf/message_lite.h>

#include "common/bytes.h"

namespace iris::wire {

Status AppendFrame(std::string* out, uint8_t opcode, std::string_view payload) {
  if (payload.size() > kMaxPayloadBytes) {
    return TooLarge("frame payload of " + std::to_string(payload.size()) +
                    " bytes exceeds 65535");
  }
  out->push_back(static_cast<char>(opcode));
  AppendBigEndian16(out, static_cast<uint16_t>(payload.size()));
  out->append(payload);
  return Status::Ok();
}

Status AppendMessageFrame(std::string* out, uint8_t opcode,
                          const google::protobuf::MessageLite& msg) {
  const size_t size = msg.ByteSizeLong();
  if (size > kMaxPayloadBytes) {
    return TooLarge("message of " + std::to_string(size) + " bytes exceeds one frame");
  }
  out->push_back(static_cast<char>(opcode));
  AppendBigEndian16(out, static_cast<uint16_t>(size));
  const size_t at = out->size();
  out->resize(at + size);
  if (!msg.SerializeToArray(out->data() + at, static_cast<int>(size))) {
    out->resize(at - kFrameHeaderBytes);
    return Internal("protobuf serialisation failed");
  }
  return Status::Ok();
}

}  // namespace iris::wire
