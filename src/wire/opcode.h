#pragma once
// Opcodes of the client protocol (PROTOCOL.md section 4).

#include <cstdint>
#include <string_view>

namespace iris::wire {

enum class Opcode : uint8_t {
  kHello = 0x01,
  kWelcome = 0x02,
  kError = 0x03,
  kPing = 0x04,
  kPong = 0x05,
  kSend = 0x10,
  kSendAck = 0x11,
  kDeliver = 0x12,
  kDeliverAck = 0x13,
  kSync = 0x20,
  kSyncPage = 0x21,
  kSyncAck = 0x22,
  kSyncDone = 0x23,
  kHistory = 0x24,
  kHistoryPage = 0x25,
  kReceipt = 0x30,
  kSettings = 0x31,
  kOk = 0x32,
  kSettingsGet = 0x33,   // Iris extension (docs/protocol.md appendix 19)
  kSettingsInfo = 0x34,  // Iris extension
  kPresenceSubscribe = 0x40,
  kPresenceUnsubscribe = 0x41,
  kPresenceQuery = 0x42,
  kPresence = 0x43,
  kTyping = 0x44,
  kKeysUpload = 0x50,
  kKeysFetch = 0x51,
  kKeysBundle = 0x52,
  kGroupCreate = 0x60,
  kGroupUpdate = 0x61,
  kGroupGet = 0x62,
  kGroupInfo = 0x63,
};

enum class Direction : uint8_t { kUnknown = 0, kClientToServer = 1, kServerToClient = 2, kBoth = 3 };

// Which way an opcode travels; kUnknown for values not in the table.
Direction OpcodeDirection(uint8_t opcode);
// "SEND", "SYNC_PAGE", ... ; "UNKNOWN" for values not in the table.
std::string_view OpcodeName(uint8_t opcode);

inline bool ClientMaySend(uint8_t opcode) {
  Direction d = OpcodeDirection(opcode);
  return d == Direction::kClientToServer || d == Direction::kBoth;
}
inline bool ServerMaySend(uint8_t opcode) {
  Direction d = OpcodeDirection(opcode);
  return d == Direction::kServerToClient || d == Direction::kBoth;
}

}  // namespace iris::wire
