// The warm dedup tier's Bloom filters and the key layouts.
#include "store/bloom_ring.h"

#include <gtest/gtest.h>

#include <random>

#include "store/inbox_store.h"
#include "store/store_keys.h"

namespace iris::store {
namespace {

constexpr int64_t kDay = 24LL * 3600 * 1000;

TEST(BloomFilterTest, NeverForgetsAnAddedKeyAndRarelyClaimsOthers) {
  const uint64_t seed = 424242;
  std::printf("seed=%llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  BloomFilter f(10'000, 10);
  std::vector<uint64_t> added;
  for (int i = 0; i < 10'000; ++i) {
    added.push_back(rng());
    f.Add(added.back());
  }
  for (uint64_t h : added) ASSERT_TRUE(f.MayContain(h));
  int false_positives = 0;
  for (int i = 0; i < 100'000; ++i) false_positives += f.MayContain(rng()) ? 1 : 0;
  EXPECT_LT(false_positives, 3'000);  // ~1% expected at 10 bits/key
  f.Clear();
  int after_clear = 0;
  for (uint64_t h : added) after_clear += f.MayContain(h) ? 1 : 0;
  EXPECT_EQ(after_clear, 0);
}

TEST(BloomRingTest, KeepsKeysForTheWholeRingThenForgetsThem) {
  BloomRing ring(kDay, 8, 1000, 10, /*origin_mono_ms=*/0);
  ring.Add(111);
  for (int day = 1; day <= 7; ++day) {
    ring.Advance(day * kDay);
    EXPECT_TRUE(ring.MayContain(111)) << day;
  }
  ring.Advance(8 * kDay);
  EXPECT_FALSE(ring.MayContain(111));
}

TEST(BloomRingTest, AgedKeysLandInOlderSlots) {
  BloomRing ring(kDay, 8, 1000, 10, 0);
  ring.Advance(10 * kDay);
  ring.Add(222, /*age_slots=*/6);
  ring.Add(333, /*age_slots=*/0);
  ring.Add(444, /*age_slots=*/100);  // clamped to the oldest slot
  ring.Advance(11 * kDay);
  EXPECT_TRUE(ring.MayContain(222));
  EXPECT_TRUE(ring.MayContain(333));
  EXPECT_FALSE(ring.MayContain(444));  // the oldest slot rotated out
  ring.Advance(12 * kDay);
  EXPECT_FALSE(ring.MayContain(222));
  EXPECT_TRUE(ring.MayContain(333));
  // A jump of many days clears everything.
  ring.Advance(100 * kDay);
  EXPECT_FALSE(ring.MayContain(333));
}

TEST(BloomRingTest, CountsTheKeysOfTheCurrentSlotAgainstItsSize) {
  BloomRing ring(kDay, 8, 1000, 10, 0);
  EXPECT_EQ(ring.keys_per_slot(), 1000u);
  for (uint64_t h = 1; h <= 1500; ++h) ring.Add(h);
  ring.Add(9999, /*age_slots=*/3);  // an older slot's key does not count for today
  EXPECT_EQ(ring.newest_keys(), 1500u);
  ring.Advance(kDay);
  EXPECT_EQ(ring.newest_keys(), 0u);
  ring.Add(1);
  EXPECT_EQ(ring.newest_keys(), 1u);
  // Rotating back onto a slot clears its count with its bits.
  ring.Advance(9 * kDay);
  EXPECT_EQ(ring.newest_keys(), 0u);
}

TEST(StoreKeysTest, InboxKeysSortByVnodeThenUserThenId) {
  EXPECT_LT(InboxKey(0, 1, UINT64_MAX), InboxKey(0, 2, 0));
  EXPECT_LT(InboxKey(0, UINT64_MAX, UINT64_MAX), InboxKey(1, 0, 0));
  EXPECT_LT(InboxKey(3, 5, 255), InboxKey(3, 5, 256));
  EXPECT_LT(InboxKey(3, 5, UINT64_MAX), InboxUpperBound(3, 5));
  EXPECT_LT(InboxUpperBound(3, 5), InboxKey(3, 6, 0));
  EXPECT_LT(InboxKey(3, UINT64_MAX, UINT64_MAX), InboxUpperBound(3, UINT64_MAX));
  EXPECT_LT(InboxUpperBound(3, UINT64_MAX), VnodePrefix(4));
  const std::optional<InboxKeyParts> p = ParseInboxKey(InboxKey(4095, 7, 9));
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->vnode, 4095);
  EXPECT_EQ(p->user, 7u);
  EXPECT_EQ(p->id, 9u);
  EXPECT_FALSE(ParseInboxKey("short").has_value());
}

TEST(StoreKeysTest, EveryPerOwnerKeyLiesInItsVnodeRangeAndNodeWideKeysInNone) {
  const int32_t vnodes = 4096;
  for (uint64_t owner : {uint64_t{1}, uint64_t{2}, uint64_t{77}, UINT64_MAX}) {
    const int32_t v = VnodeOf(owner, vnodes);
    ASSERT_GE(v, 0);
    ASSERT_LT(v, vnodes);
    const std::string begin = VnodePrefix(v);
    const std::string end = VnodePrefix(v + 1);
    for (const std::string& k :
         {InboxKey(v, owner, 1), InboxUpperBound(v, owner), DedupKey(v, owner, "k"),
          MetaUserStateKey(v, owner), MetaArchivePendingKey(v, owner), MetaSettingsKey(v, owner),
          MetaLastSeenKey(v, owner), MetaWroteKey(v, owner, 0), MetaWroteKey(v, owner, UINT64_MAX),
          KeysBundleKey(v, owner), PreKeyKey(v, owner, 3), GroupKey(v, owner)}) {
      EXPECT_LE(begin, k);
      EXPECT_LT(k, end);
    }
  }
  // Node-wide meta keys start with a letter: above every vnode (at most 2^24 of them).
  for (const std::string& k :
       {MetaHlcKey(0), std::string(kMetaLayoutVersionKey), std::string(kMetaVnodesKey),
        MetaRevokedJtiKey("j"), MetaRevokedUserKey(0)}) {
    EXPECT_LE(VnodePrefix(kMaxVnodes), k);
  }
  EXPECT_EQ(ParseMetaUserKey(MetaSettingsKey(9, 42), kMetaSettingsTag), 42u);
  EXPECT_FALSE(ParseMetaUserKey(MetaSettingsKey(9, 42), kMetaUserStateTag).has_value());
}

TEST(StoreKeysTest, SettingsDecodeTheOneByteLayoutAndRefuseMalformedLists) {
  // Before consent, a settings value was the flags byte alone: read receipts off.
  std::optional<UserSettings> old = DecodeUserSettings(std::string(1, '\x02'));
  ASSERT_TRUE(old.has_value());
  EXPECT_FALSE(old->read_receipts);
  EXPECT_TRUE(old->share_presence);
  EXPECT_FALSE(old->group_invites_contacts_only);
  EXPECT_TRUE(old->blocked.empty());
  UserSettings s;
  s.group_invites_contacts_only = true;
  s.blocked = {3, 70000, UINT64_MAX};
  std::optional<UserSettings> back = DecodeUserSettings(EncodeUserSettings(s));
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->group_invites_contacts_only);
  EXPECT_EQ(back->blocked, s.blocked);
  EXPECT_FALSE(DecodeUserSettings("").has_value());
  EXPECT_FALSE(DecodeUserSettings(std::string(5, '\x01')).has_value());  // a torn id
  s.blocked = {9, 3};  // not ascending
  EXPECT_FALSE(DecodeUserSettings(EncodeUserSettings(s)).has_value());
  // With a device list (docs/protocol.md appendix 20), before the blocked users.
  s.blocked = {4, 8};
  s.devices = DeviceBit(1) | DeviceBit(63);
  s.removed_devices = DeviceBit(2);
  s.device_list_version = 9;
  s.device_list = std::string("\x00list\xff", 6);
  back = DecodeUserSettings(EncodeUserSettings(s));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->devices, s.devices);
  EXPECT_EQ(back->removed_devices, s.removed_devices);
  EXPECT_EQ(back->device_list_version, 9u);
  EXPECT_EQ(back->device_list, s.device_list);
  EXPECT_EQ(back->blocked, s.blocked);
  const std::string encoded = EncodeUserSettings(s);
  for (size_t cut = 1; cut < 1 + 32 + s.device_list.size(); ++cut) {  // a torn list
    EXPECT_FALSE(DecodeUserSettings(encoded.substr(0, cut)).has_value()) << cut;
  }
}

TEST(StoreKeysTest, StoredEnvelopeParsesToTheFullEnvelope) {
  v1::Envelope e;
  e.set_id(99);
  e.set_sender(1);
  e.set_recipient(2);
  e.set_body("hello");
  e.set_sent_at_ms(5);
  const std::string body = EncodeEnvelopeBody(&e);
  EXPECT_EQ(e.id(), 0u);
  std::string stored;
  EncodeStoredEnvelope(1ULL << 50, 1'700'000'000'000, body, &stored);
  v1::Envelope parsed;
  ASSERT_TRUE(parsed.ParseFromString(stored));
  EXPECT_EQ(parsed.id(), 1ULL << 50);
  EXPECT_EQ(parsed.sent_at_ms(), 1'700'000'000'000u);
  EXPECT_EQ(parsed.body(), "hello");
  EXPECT_EQ(parsed.recipient(), 2u);
  EXPECT_EQ(parsed.ByteSizeLong(), stored.size());
}

TEST(StoreKeysTest, ValueCodecsRejectWrongSizes) {
  EXPECT_FALSE(DecodeDedupEntry("x").has_value());
  EXPECT_FALSE(DecodeUserState("x").has_value());
  EXPECT_FALSE(DecodeU64("x").has_value());
  EXPECT_FALSE(DecodeStoredBundle("x").has_value());
  const std::optional<DedupEntry> d = DecodeDedupEntry(EncodeDedupEntry({7, 8}));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->first_id, 7u);
  EXPECT_EQ(d->accepted_ms, 8);
}

}  // namespace
}  // namespace iris::store
