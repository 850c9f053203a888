#include "client/e2ee/body_format.h"

#include <algorithm>

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
  if (type != kBodySignalMessage && type != kBodyPreKeyMessage && type != kBodySenderKeyMessage) {
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

namespace {

void PutBe(std::string* out, uint64_t v, int bytes) {
  for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

uint64_t GetBe(std::string_view p, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v = (v << 8) | static_cast<uint8_t>(p[at + static_cast<size_t>(i)]);
  return v;
}

constexpr size_t kV2Header = 1 + 1 + 8 + 8 + 8 + 4;
constexpr uint8_t kLegacyControlByte = 2;

}  // namespace

std::string EncodeContent(const Content& c) {
  std::string out;
  const size_t n = kV2Header + c.data.size();
  out.reserve(n + kPlaintextPadding);
  out.push_back(static_cast<char>(kPlaintextV2));
  out.push_back(static_cast<char>(c.type));
  PutBe(&out, c.sender_ms, 8);
  PutBe(&out, c.epoch, 8);
  PutBe(&out, c.counter, 8);
  PutBe(&out, c.data.size(), 4);
  out += c.data;
  out.resize((n + kPlaintextPadding - 1) / kPlaintextPadding * kPlaintextPadding, '\0');
  return out;
}

Result<Content> DecodeContent(std::string_view p) {
  Content c;
  if (!p.empty() && static_cast<uint8_t>(p[0]) == kContentText) {  // format 1
    IRIS_ASSIGN_OR_RETURN(c.data, DecodePlaintext(p));
    return c;
  }
  if (p.size() < kV2Header) return BadRequest("decrypted content is too short");
  if (static_cast<uint8_t>(p[0]) != kPlaintextV2) {
    return BadRequest("unknown plaintext format " + std::to_string(static_cast<uint8_t>(p[0])));
  }
  c.type = static_cast<uint8_t>(p[1]);
  if (c.type != kContentText && c.type != kContentReceipt && c.type != kContentControl &&
      c.type != kContentSenderKey && !IsTranscript(c.type)) {
    return BadRequest("unknown content type " + std::to_string(c.type));
  }
  c.has_order = true;
  c.sender_ms = GetBe(p, 2, 8);
  c.epoch = GetBe(p, 10, 8);
  c.counter = GetBe(p, 18, 8);
  const uint64_t len = GetBe(p, 26, 4);
  if (len > p.size() - kV2Header) return BadRequest("decrypted content length exceeds its frame");
  c.data = std::string(p.substr(kV2Header, len));
  return c;
}

std::string EncodeControl(const ControlContent& c) {
  std::string out;
  out.push_back(static_cast<char>(c.kind));
  PutBe(&out, c.message_ids.size(), 4);
  for (uint64_t id : c.message_ids) PutBe(&out, id, 8);
  return out;
}

Result<ControlContent> DecodeControl(std::string_view p) {
  // A payload queued locally before control content moved into format 2 (see the header).
  if (!p.empty() && static_cast<uint8_t>(p[0]) == kLegacyControlByte) p.remove_prefix(1);
  if (p.size() < 5) return BadRequest("malformed control content");
  ControlContent c;
  c.kind = static_cast<uint8_t>(p[0]);
  if (c.kind != kControlSessionReset && c.kind != kControlFiller &&
      c.kind != kControlSenderKeyRequest) {
    return BadRequest("unknown control kind " + std::to_string(c.kind));
  }
  const uint64_t n = GetBe(p, 1, 4);
  if (n > kMaxControlIds || p.size() < 5 + n * 8) {
    return BadRequest("control content: bad message id count");
  }
  for (uint64_t k = 0; k < n; ++k) c.message_ids.push_back(GetBe(p, 5 + k * 8, 8));
  return c;
}

std::string EncodeSenderKeyDistribution(const SenderKeyDistribution& d) {
  std::string out;
  PutBe(&out, d.group_id, 8);
  out += d.message;
  return out;
}

Result<SenderKeyDistribution> DecodeSenderKeyDistribution(std::string_view p) {
  if (p.size() <= 8) return BadRequest("malformed sender-key distribution: too short");
  SenderKeyDistribution d;
  d.group_id = GetBe(p, 0, 8);
  if (d.group_id == 0) return BadRequest("malformed sender-key distribution: group 0");
  d.message = std::string(p.substr(8));
  return d;
}

std::string EncodeTranscript(const Transcript& t, bool with_ids) {
  std::string out;
  PutBe(&out, t.recipient, 8);
  if (with_ids) {
    const size_t n = std::min<size_t>(t.copy_ids.size(), 255);
    out.push_back(static_cast<char>(n));
    for (size_t i = 0; i < n; ++i) PutBe(&out, t.copy_ids[i], 8);
  }
  out += t.text;
  return out;
}

Result<Transcript> DecodeTranscript(std::string_view p, bool with_ids) {
  if (p.size() <= 8) return BadRequest("malformed sent-message transcript: too short");
  Transcript t;
  t.recipient = GetBe(p, 0, 8);
  if (t.recipient == 0) return BadRequest("malformed sent-message transcript: user 0");
  size_t at = 8;
  if (with_ids) {
    const size_t n = static_cast<uint8_t>(p[8]);
    if (n == 0 || p.size() < 9 + n * 8) {
      return BadRequest("malformed sent-message transcript: bad copy id count");
    }
    for (size_t i = 0; i < n; ++i) t.copy_ids.push_back(GetBe(p, 9 + i * 8, 8));
    at = 9 + n * 8;
  }
  t.text = std::string(p.substr(at));
  return t;
}

}  // namespace iris::client::e2ee
