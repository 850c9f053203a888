#include "client/e2ee/body_format.h"

namespace iris::client::e2ee {

std::string EncodeBody(const SealedBody& body) {
  std::string out;
  out.reserve(2 + body.ciphertext.size());
  out.push_back(static_cast<char>(kBodyVersion));
  out.push_back(static_cast<char>(body.type));
  out += body.ciphertext;
  return out;
}

Result<SealedBody> DecodeBody(std::string_view body) {
  if (body.size() < 3) return BadRequest("encrypted body is too short");
  const auto version = static_cast<uint8_t>(body[0]);
  if (version != kBodyVersion) {
    return BadRequest("unsupported encrypted body version " + std::to_string(version));
  }
  const auto type = static_cast<uint8_t>(body[1]);
  if (type != kBodySignalMessage && type != kBodyPreKeyMessage) {
    return BadRequest("unknown encrypted body type " + std::to_string(type));
  }
  return SealedBody{type, std::string(body.substr(2))};
}

std::string EncodePlaintext(std::string_view text) {
  std::string out;
  const size_t n = 5 + text.size();
  out.reserve(n + kPlaintextPadding);
  out.push_back(static_cast<char>(kContentText));
  const auto len = static_cast<uint32_t>(text.size());
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((len >> shift) & 0xff));
  out += text;
  out.resize((n + kPlaintextPadding - 1) / kPlaintextPadding * kPlaintextPadding, '\0');
  return out;
}

Result<std::string> DecodePlaintext(std::string_view p) {
  if (p.size() < 5) return BadRequest("decrypted content is too short");
  if (static_cast<uint8_t>(p[0]) != kContentText) {
    return BadRequest("unknown content type " + std::to_string(static_cast<uint8_t>(p[0])));
  }
  uint32_t len = 0;
  for (size_t i = 1; i < 5; ++i) len = (len << 8) | static_cast<uint8_t>(p[i]);
  if (len > p.size() - 5) return BadRequest("decrypted content length exceeds its frame");
  return std::string(p.substr(5, len));
}

bool IsControlContent(std::string_view p) {
  return !p.empty() && static_cast<uint8_t>(p[0]) == kContentControl;
}

std::string EncodeControl(const ControlContent& c) {
  std::string out;
  out.push_back(static_cast<char>(kContentControl));
  out.push_back(static_cast<char>(c.kind));
  const auto n = static_cast<uint32_t>(c.message_ids.size());
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((n >> shift) & 0xff));
  for (uint64_t id : c.message_ids) {
    for (int shift = 56; shift >= 0; shift -= 8) {
      out.push_back(static_cast<char>((id >> shift) & 0xff));
    }
  }
  out.resize((out.size() + kPlaintextPadding - 1) / kPlaintextPadding * kPlaintextPadding, '\0');
  return out;
}

Result<ControlContent> DecodeControl(std::string_view p) {
  if (p.size() < 6 || !IsControlContent(p)) return BadRequest("malformed control content");
  ControlContent c;
  c.kind = static_cast<uint8_t>(p[1]);
  if (c.kind != kControlSessionReset) {
    return BadRequest("unknown control kind " + std::to_string(c.kind));
  }
  uint32_t n = 0;
  for (size_t i = 2; i < 6; ++i) n = (n << 8) | static_cast<uint8_t>(p[i]);
  if (n > kMaxControlIds || p.size() < 6 + size_t{n} * 8) {
    return BadRequest("control content: bad message id count");
  }
  for (uint32_t k = 0; k < n; ++k) {
    uint64_t id = 0;
    for (size_t i = 0; i < 8; ++i) id = (id << 8) | static_cast<uint8_t>(p[6 + k * 8 + i]);
    c.message_ids.push_back(id);
  }
  return c;
}

}  // namespace iris::client::e2ee
