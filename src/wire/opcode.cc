#include "wire/opcode.h"

namespace iris::wire {
namespace {
struct OpInfo {
  std::string_view name;
  Direction dir;
};

OpInfo Info(uint8_t op) {
  using D = Direction;
  switch (static_cast<Opcode>(op)) {
    case Opcode::kHello: return {"HELLO", D::kClientToServer};
    case Opcode::kWelcome: return {"WELCOME", D::kServerToClient};
    case Opcode::kError: return {"ERROR", D::kServerToClient};
    case Opcode::kPing: return {"PING", D::kBoth};
    case Opcode::kPong: return {"PONG", D::kBoth};
    case Opcode::kSend: return {"SEND", D::kClientToServer};
    case Opcode::kSendAck: return {"SEND_ACK", D::kServerToClient};
    case Opcode::kDeliver: return {"DELIVER", D::kServerToClient};
    case Opcode::kDeliverAck: return {"DELIVER_ACK", D::kClientToServer};
    case Opcode::kSync: return {"SYNC", D::kClientToServer};
    case Opcode::kSyncPage: return {"SYNC_PAGE", D::kServerToClient};
    case Opcode::kSyncAck: return {"SYNC_ACK", D::kClientToServer};
    case Opcode::kSyncDone: return {"SYNC_DONE", D::kServerToClient};
    case Opcode::kHistory: return {"HISTORY", D::kClientToServer};
    case Opcode::kHistoryPage: return {"HISTORY_PAGE", D::kServerToClient};
    case Opcode::kReceipt: return {"RECEIPT", D::kClientToServer};
    case Opcode::kSettings: return {"SETTINGS", D::kClientToServer};
    case Opcode::kOk: return {"OK", D::kServerToClient};
    case Opcode::kSettingsGet: return {"SETTINGS_GET", D::kClientToServer};
    case Opcode::kSettingsInfo: return {"SETTINGS_INFO", D::kServerToClient};
    case Opcode::kPresenceSubscribe: return {"PRESENCE_SUBSCRIBE", D::kClientToServer};
    case Opcode::kPresenceUnsubscribe: return {"PRESENCE_UNSUBSCRIBE", D::kClientToServer};
    case Opcode::kPresenceQuery: return {"PRESENCE_QUERY", D::kClientToServer};
    case Opcode::kPresence: return {"PRESENCE", D::kServerToClient};
    case Opcode::kTyping: return {"TYPING", D::kBoth};
    case Opcode::kKeysUpload: return {"KEYS_UPLOAD", D::kClientToServer};
    case Opcode::kKeysFetch: return {"KEYS_FETCH", D::kClientToServer};
    case Opcode::kKeysBundle: return {"KEYS_BUNDLE", D::kServerToClient};
    case Opcode::kGroupCreate: return {"GROUP_CREATE", D::kClientToServer};
    case Opcode::kGroupUpdate: return {"GROUP_UPDATE", D::kClientToServer};
    case Opcode::kGroupGet: return {"GROUP_GET", D::kClientToServer};
    case Opcode::kGroupInfo: return {"GROUP_INFO", D::kServerToClient};
  }
  return {"UNKNOWN", D::kUnknown};
}
}  // namespace

Direction OpcodeDirection(uint8_t opcode) { return Info(opcode).dir; }
std::string_view OpcodeName(uint8_t opcode) { return Info(opcode).name; }

}  // namespace iris::wire
