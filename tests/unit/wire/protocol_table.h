#pragma once
// The opcode table of PROTOCOL.md section 4 (and docs/protocol.md's extensions), written out independently of src/wire so the
// tests check the implementation against the contract rather than against itself.
//
// Thread-safety: constant data.

#include <cstdint>
#include <string_view>

namespace iris::wire {

struct ProtocolOpcode {
  uint8_t opcode;
  std::string_view name;
  bool client;  // a client may send it
  bool server;  // a server may send it
};

inline constexpr ProtocolOpcode kProtocolOpcodes[] = {
    {0x01, "HELLO", true, false},
    {0x02, "WELCOME", false, true},
    {0x03, "ERROR", false, true},
    {0x04, "PING", true, true},
    {0x05, "PONG", true, true},
    {0x10, "SEND", true, false},
    {0x11, "SEND_ACK", false, true},
    {0x12, "DELIVER", false, true},
    {0x13, "DELIVER_ACK", true, false},
    {0x20, "SYNC", true, false},
    {0x21, "SYNC_PAGE", false, true},
    {0x22, "SYNC_ACK", true, false},
    {0x23, "SYNC_DONE", false, true},
    {0x24, "HISTORY", true, false},
    {0x25, "HISTORY_PAGE", false, true},
    {0x30, "RECEIPT", true, false},
    {0x31, "SETTINGS", true, false},
    {0x32, "OK", false, true},
    // Iris extensions (docs/protocol.md appendix 19).
    {0x33, "SETTINGS_GET", true, false},
    {0x34, "SETTINGS_INFO", false, true},
    {0x40, "PRESENCE_SUBSCRIBE", true, false},
    {0x41, "PRESENCE_UNSUBSCRIBE", true, false},
    {0x42, "PRESENCE_QUERY", true, false},
    {0x43, "PRESENCE", false, true},
    {0x44, "TYPING", true, true},
    {0x50, "KEYS_UPLOAD", true, false},
    {0x51, "KEYS_FETCH", true, false},
    {0x52, "KEYS_BUNDLE", false, true},
    {0x60, "GROUP_CREATE", true, false},
    {0x61, "GROUP_UPDATE", true, false},
    {0x62, "GROUP_GET", true, false},
    {0x63, "GROUP_INFO", false, true},
};

// The row of `opcode`, or nullptr when PROTOCOL.md does not define it.
inline const ProtocolOpcode* FindProtocolOpcode(uint8_t opcode) {
  for (const ProtocolOpcode& op : kProtocolOpcodes) {
    if (op.opcode == opcode) return &op;
  }
  return nullptr;
}

}  // namespace iris::wire
