#include "edge/shared_table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace iris::edge::internal {
namespace {

constexpr uint64_t kMagic = 0x53544d494c534952ULL;  // "RISLIMTS"
// Bump when the layout of the header, a shard or a slot changes.
constexpr uint32_t kLayoutVersion = 2;  // 2: up to 12 tables (issue 18: KEYS_FETCH per pair)

struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t table_count;
  uint64_t total_size;
  uint64_t seed;
  // The sizes a process of another build could disagree on.
  uint32_t header_size;
  uint32_t shard_header_size;
  uint32_t mutex_size;
  uint32_t reserved;
  SharedRegion::TableLayout tables[SharedRegion::kMaxTables];
};

uint64_t RoundUp(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

uint64_t NextPow2(uint64_t n) {
  uint64_t p = 4;
  while (p < n) p <<= 1;
  return p;
}

Header* HeaderOf(unsigned char* base) { return reinterpret_cast<Header*>(base); }

std::string Describe(const TableSpec& t) {
  return "key " + std::to_string(t.key_size) + " B, entry " + std::to_string(t.entry_size) +
         " B, " + std::to_string(t.max_entries) + " entries";
}

}  // namespace

Result<std::shared_ptr<SharedRegion>> SharedRegion::Create(const std::vector<TableSpec>& tables,
                                                           Mode mode, uint64_t seed) {
  if (tables.empty() || tables.size() > kMaxTables) {
    return BadRequest("a limiter region holds 1 to " + std::to_string(kMaxTables) + " tables");
  }
  Header h{};
  h.magic = kMagic;
  h.version = kLayoutVersion;
  h.table_count = static_cast<uint32_t>(tables.size());
  h.seed = seed;
  h.header_size = sizeof(Header);
  h.shard_header_size = sizeof(ShardHeader);
  h.mutex_size = sizeof(pthread_mutex_t);
  uint64_t offset = RoundUp(sizeof(Header), 4096);
  for (size_t t = 0; t < tables.size(); ++t) {
    TableLayout& l = h.tables[t];
    l.spec = tables[t];
    const uint64_t max = tables[t].max_entries == 0 ? 1 : tables[t].max_entries;
    l.per_shard_cap = max / kShards + (max % kShards != 0 ? 1 : 0);
    if (l.per_shard_cap > (uint64_t{1} << 32)) return BadRequest("limiter table too large");
    l.slots = NextPow2(l.per_shard_cap * 2);  // load factor at most 1/2
    l.slot_size = SlotSize(tables[t].key_size, tables[t].entry_size);
    l.offset = offset;
    offset =
        RoundUp(offset + kShards * sizeof(ShardHeader) + kShards * l.slots * l.slot_size, 4096);
  }
  h.total_size = offset;

  int fd = -1;
  void* base = MAP_FAILED;
  if (mode == Mode::kShared) {
    fd = memfd_create("iris-limits", MFD_CLOEXEC);
    if (fd < 0) return Internal("memfd_create for the limiter tables failed");
    if (ftruncate(fd, static_cast<off_t>(h.total_size)) != 0) {
      close(fd);
      return Internal("ftruncate of the limiter tables (" + std::to_string(h.total_size) +
                      " bytes) failed");
    }
    base = mmap(nullptr, h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  } else {
    // Pages are zero and untouched until a shard uses them.
    base = mmap(nullptr, h.total_size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  if (base == MAP_FAILED) {
    if (fd >= 0) close(fd);
    return Internal("mmap of the limiter tables (" + std::to_string(h.total_size) +
                    " bytes) failed");
  }
  std::shared_ptr<SharedRegion> r(new SharedRegion(base, h.total_size, fd));
  std::memcpy(base, &h, sizeof(h));
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  for (size_t t = 0; t < tables.size(); ++t) {
    for (size_t s = 0; s < kShards; ++s) {
      ShardHeader& sh = r->shard(t, s);
      if (pthread_mutex_init(&sh.mu, &attr) != 0) {
        pthread_mutexattr_destroy(&attr);
        return Internal("pthread_mutex_init for the limiter tables failed");
      }
      sh.count = 0;
      sh.next_sweep_ns = std::numeric_limits<int64_t>::min();
      sh.min_full_ns = std::numeric_limits<int64_t>::max();
    }
  }
  pthread_mutexattr_destroy(&attr);
  return r;
}

Result<std::shared_ptr<SharedRegion>> SharedRegion::Attach(int fd,
                                                           const std::vector<TableSpec>& tables) {
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0) {
    return BadRequest("--limits-fd " + std::to_string(fd) + " is not an open descriptor");
  }
  auto fail = [fd](const std::string& what) {
    close(fd);
    return BadRequest("--limits-fd " + std::to_string(fd) +
                      ": not the limiter tables of this irisd build (" + what +
                      "); the core and edge processes must run the same binary and flags");
  };
  if (static_cast<uint64_t>(st.st_size) < sizeof(Header)) return fail("too small for a header");
  Header h{};
  if (pread(fd, &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h))) return fail("unreadable");
  if (h.magic != kMagic) return fail("bad magic");
  if (h.version != kLayoutVersion) {
    return fail("layout version " + std::to_string(h.version) + ", this binary has " +
                std::to_string(kLayoutVersion));
  }
  if (h.header_size != sizeof(Header) || h.shard_header_size != sizeof(ShardHeader) ||
      h.mutex_size != sizeof(pthread_mutex_t)) {
    return fail("header, shard or mutex size differs");
  }
  if (h.total_size != static_cast<uint64_t>(st.st_size)) return fail("size differs from header");
  if (h.table_count != tables.size()) {
    return fail(std::to_string(h.table_count) + " tables, expected " +
                std::to_string(tables.size()));
  }
  for (size_t t = 0; t < tables.size(); ++t) {
    if (!(h.tables[t].spec == tables[t])) {
      return fail("table " + std::to_string(t) + " is " + Describe(h.tables[t].spec) +
                  ", expected " + Describe(tables[t]));
    }
    if (h.tables[t].offset + kShards * sizeof(ShardHeader) +
            kShards * h.tables[t].slots * h.tables[t].slot_size >
        h.total_size) {
      return fail("table " + std::to_string(t) + " past the end");
    }
  }
  void* base = mmap(nullptr, h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    close(fd);
    return Internal("mmap of the limiter tables (--limits-fd) failed");
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);  // not inherited further
  return std::shared_ptr<SharedRegion>(new SharedRegion(base, h.total_size, fd));
}

SharedRegion::~SharedRegion() {
  munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

uint64_t SharedRegion::seed() const { return HeaderOf(base_)->seed; }
size_t SharedRegion::table_count() const { return HeaderOf(base_)->table_count; }

const SharedRegion::TableLayout& SharedRegion::layout(size_t table) const {
  return HeaderOf(base_)->tables[table];
}

SharedRegion::ShardHeader& SharedRegion::shard(size_t table, size_t shard) const {
  return reinterpret_cast<ShardHeader*>(base_ + layout(table).offset)[shard];
}

unsigned char* SharedRegion::slots(size_t table, size_t shard) const {
  const TableLayout& l = layout(table);
  return base_ + l.offset + kShards * sizeof(ShardHeader) + shard * l.slots * l.slot_size;
}

void SharedRegion::LockFailed(int rc) {
  std::fprintf(stderr, "iris: locking a limiter table shard failed (error %d)\n", rc);
  std::abort();
}

}  // namespace iris::edge::internal
