// Opcode table (wire/opcode.h) against PROTOCOL.md section 4.

#include "wire/opcode.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "unit/wire/protocol_table.h"

namespace iris::wire {
namespace {

TEST(OpcodeTest, TableMatchesProtocolSection4) {
  for (const ProtocolOpcode& op : kProtocolOpcodes) {
    SCOPED_TRACE(op.name);
    EXPECT_EQ(OpcodeName(op.opcode), op.name);
    const Direction want = op.client && op.server ? Direction::kBoth
                           : op.client            ? Direction::kClientToServer
                                                  : Direction::kServerToClient;
    EXPECT_EQ(OpcodeDirection(op.opcode), want);
    EXPECT_EQ(ClientMaySend(op.opcode), op.client);
    EXPECT_EQ(ServerMaySend(op.opcode), op.server);
  }
}

TEST(OpcodeTest, EveryOtherValueIsUnknown) {
  for (int v = 0; v < 256; ++v) {
    if (FindProtocolOpcode(static_cast<uint8_t>(v)) != nullptr) continue;
    SCOPED_TRACE(v);
    EXPECT_EQ(OpcodeName(static_cast<uint8_t>(v)), "UNKNOWN");
    EXPECT_EQ(OpcodeDirection(static_cast<uint8_t>(v)), Direction::kUnknown);
    EXPECT_FALSE(ClientMaySend(static_cast<uint8_t>(v)));
    EXPECT_FALSE(ServerMaySend(static_cast<uint8_t>(v)));
  }
}

TEST(OpcodeTest, EnumValuesMatchProtocol) {
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kHello), 0x01);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kSend), 0x10);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kSyncDone), 0x23);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kOk), 0x32);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kTyping), 0x44);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kKeysBundle), 0x52);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kGroupInfo), 0x63);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kSettingsGet), 0x33);
  EXPECT_EQ(static_cast<uint8_t>(Opcode::kSettingsInfo), 0x34);
  std::map<std::string, int> names;
  for (const ProtocolOpcode& op : kProtocolOpcodes) ++names[std::string(op.name)];
  EXPECT_EQ(names.size(), 32u);
}

}  // namespace
}  // namespace iris::wire
