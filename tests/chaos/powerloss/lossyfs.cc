// iris_lossyfs: a FUSE file system (libfuse3) that simulates power loss, in the spirit of
// LazyFS. It mounts MOUNTPOINT over a backing directory BACKING; the backing directory only
// ever holds what is durable, and everything else lives in the daemon's memory:
//
//   iris_lossyfs BACKING MOUNTPOINT [-d]
//
// The model (docs/reliability.md, "Power loss"):
//  - file data: write, truncate and fallocate change 4 KiB pages held in memory (a dirty
//    page overlays the backing file; the live size is kept in memory). fsync or fdatasync
//    of the file writes its dirty pages and its size to the backing inode: that is the only
//    way file data becomes durable. Reads see the latest writes.
//  - names of regular files: create, unlink and rename of a file (over another or not)
//    change only the live namespace. fsync of a directory makes the directory's entries
//    durable: the backing directory is made to hold exactly the live entries, each a hard
//    link to its file's backing inode (whose content is what was last fsynced, possibly
//    nothing). fsync of a file does NOT make its name durable (POSIX; ext4 is stronger).
//    A file created and fsynced whose directory was never fsynced is therefore gone after a
//    crash; a file unlinked or renamed without a directory fsync is back under its old
//    name with its durable content.
//  - directories: mkdir, rmdir and rename of a directory are durable at once (not
//    modelled: Iris and RocksDB create their directories once, before any data).
//  - metadata (mode, owner) goes to the backing inode at once; times are not kept.
//  - links, symlinks, device nodes and sockets are refused (EPERM).
//  - "crash": writing `crash` to MOUNTPOINT/.lossyfs-ctl drops everything volatile, and
//    from then on every operation fails with EIO (the machine is off) until the file
//    system is unmounted; BACKING then holds exactly what a power loss would have left.
//    `sync` persists everything (as sync(2)); reading the file returns counters. A clean
//    unmount is a sync (as umount(8)), a crash is not.
//
// Mounted with direct_io, no attribute or entry caching and auto_unmount: the kernel keeps
// no page cache of its own, so every write reaches the daemon and nothing written by a
// killed process can survive outside the model. Every operation takes one global lock, so
// a crash is atomic with respect to every fsync (an fsync that returned happened before);
// the daemon serves one request at a time (-s).
#define FUSE_USE_VERSION 35
#include <dirent.h>
#include <fcntl.h>
#include <fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr uint64_t kPage = 4096;
constexpr const char* kCtlName = ".lossyfs-ctl";
constexpr const char* kInodeDir = ".lossyfs";  // backing inodes of live files, in BACKING

struct Node {
  bool dir = false;
  bool ctl = false;
  uint64_t id = 0;
  // Regular files: the backing inode (BACKING/.lossyfs/i<id>, open), its size, how much of
  // it is visible (a truncation hides the rest), the live size and the dirty pages.
  int bfd = -1;
  ino_t bino = 0;
  uint64_t bsize = 0;
  uint64_t visible = 0;
  uint64_t size = 0;
  std::map<uint64_t, std::unique_ptr<char[]>> pages;
  // Directories: live entries; whether they differ from the durable ones.
  std::map<std::string, std::shared_ptr<Node>> kids;
  bool ns_dirty = false;
  ~Node();
};

struct State {
  std::mutex mu;
  std::string backing;
  int broot = -1;
  bool crashed = false;
  uint64_t next_id = 2;
  std::shared_ptr<Node> root;
  std::shared_ptr<Node> ctl;
  std::unordered_map<uint64_t, std::shared_ptr<Node>> handles;
  uint64_t next_fh = 1;
  // Counters (read from the control file).
  uint64_t writes = 0, write_bytes = 0, fsyncs = 0, dir_fsyncs = 0, crashes = 0;
  uint64_t dropped_bytes = 0, dropped_files = 0, dropped_dirs = 0;
};
State g;

std::string InodeName(uint64_t id) { return std::string(kInodeDir) + "/i" + std::to_string(id); }

Node::~Node() {
  if (bfd >= 0) {
    close(bfd);
    if (!g.crashed) unlinkat(g.broot, InodeName(id).c_str(), 0);
  }
}

// "/a/b" -> "a/b"; "/" -> ".".
std::string Rel(const char* path) {
  while (*path == '/') ++path;
  return *path == '\0' ? "." : path;
}

std::vector<std::string> Split(const char* path) {
  std::vector<std::string> parts;
  std::string cur;
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '/') {
      if (!cur.empty()) parts.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.push_back(*p);
    }
  }
  if (!cur.empty()) parts.push_back(std::move(cur));
  return parts;
}

std::shared_ptr<Node> Resolve(const char* path) {
  if (path == nullptr) return nullptr;
  std::vector<std::string> parts = Split(path);
  if (parts.size() == 1 && parts[0] == kCtlName) return g.ctl;
  std::shared_ptr<Node> n = g.root;
  for (const std::string& p : parts) {
    if (!n->dir) return nullptr;
    auto it = n->kids.find(p);
    if (it == n->kids.end()) return nullptr;
    n = it->second;
  }
  return n;
}

// The parent directory of `path` and the last component; nullptr if the parent is missing.
std::shared_ptr<Node> ResolveParent(const char* path, std::string* name) {
  std::vector<std::string> parts = Split(path);
  if (parts.empty()) return nullptr;
  *name = parts.back();
  parts.pop_back();
  std::shared_ptr<Node> n = g.root;
  for (const std::string& p : parts) {
    auto it = n->kids.find(p);
    if (it == n->kids.end() || !it->second->dir) return nullptr;
    n = it->second;
  }
  return n;
}

std::shared_ptr<Node> FromFi(const char* path, fuse_file_info* fi) {
  if (fi != nullptr && fi->fh != 0) {
    auto it = g.handles.find(fi->fh);
    if (it != g.handles.end()) return it->second;
  }
  return Resolve(path);
}

// The backing path ("a/b", "." for the root) of directory `d`, found from the root.
bool PathOf(const Node& from, const std::string& rel, const Node* d, std::string* out) {
  if (&from == d) {
    *out = rel;
    return true;
  }
  for (const auto& [name, kid] : from.kids) {
    if (kid->dir && PathOf(*kid, rel == "." ? name : rel + "/" + name, d, out)) return true;
  }
  return false;
}

std::shared_ptr<Node> NewFile(mode_t mode, int* err) {
  auto n = std::make_shared<Node>();
  n->id = g.next_id++;
  n->bfd = openat(g.broot, InodeName(n->id).c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
                  mode & 07777);
  if (n->bfd < 0) {
    *err = -errno;
    return nullptr;
  }
  struct stat st {};
  fstat(n->bfd, &st);
  n->bino = st.st_ino;
  return n;
}

// ---- file data -------------------------------------------------------------------------

bool PreadAll(int fd, char* buf, uint64_t len, uint64_t off) {
  while (len > 0) {
    const ssize_t r = pread(fd, buf, len, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf += r;
    len -= static_cast<uint64_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

bool PwriteAll(int fd, const char* buf, uint64_t len, uint64_t off) {
  while (len > 0) {
    const ssize_t r = pwrite(fd, buf, len, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf += r;
    len -= static_cast<uint64_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

// The dirty page `p`, created from the visible backing content (or zeros) when missing.
char* Page(Node& n, uint64_t p, bool load) {
  auto it = n.pages.find(p);
  if (it != n.pages.end()) return it->second.get();
  std::unique_ptr<char[]> page(new char[kPage]());
  const uint64_t start = p * kPage;
  if (load && start < n.visible) {
    PreadAll(n.bfd, page.get(), std::min(kPage, n.visible - start), start);
  }
  char* raw = page.get();
  n.pages.emplace(p, std::move(page));
  return raw;
}

void WriteData(Node& n, const char* buf, uint64_t len, uint64_t off) {
  const uint64_t end = off + len;
  for (uint64_t pos = off; pos < end;) {
    const uint64_t p = pos / kPage, in = pos % kPage;
    const uint64_t k = std::min(kPage - in, end - pos);
    char* page = Page(n, p, !(in == 0 && k == kPage));
    std::memcpy(page + in, buf + (pos - off), k);
    pos += k;
  }
  n.size = std::max(n.size, end);
}

int ReadData(Node& n, char* buf, uint64_t len, uint64_t off) {
  if (off >= n.size) return 0;
  len = std::min(len, n.size - off);
  const uint64_t end = off + len;
  for (uint64_t pos = off; pos < end;) {
    const uint64_t p = pos / kPage;
    auto it = n.pages.lower_bound(p);
    if (it != n.pages.end() && it->first == p) {
      const uint64_t in = pos % kPage, k = std::min(kPage - in, end - pos);
      std::memcpy(buf + (pos - off), it->second.get() + in, k);
      pos += k;
      continue;
    }
    // A run of clean pages up to the next dirty one: the visible backing content, then zeros.
    const uint64_t run_end = it == n.pages.end() ? end : std::min(end, it->first * kPage);
    const uint64_t b_end = std::min(run_end, n.visible);
    if (pos < b_end && !PreadAll(n.bfd, buf + (pos - off), b_end - pos, pos)) return -EIO;
    const uint64_t z = std::max(pos, b_end);
    if (z < run_end) std::memset(buf + (z - off), 0, run_end - z);
    pos = run_end;
  }
  return static_cast<int>(len);
}

void TruncateData(Node& n, uint64_t size) {
  if (size < n.size) {
    const uint64_t first_gone = (size + kPage - 1) / kPage;
    n.pages.erase(n.pages.lower_bound(first_gone), n.pages.end());
    if (size % kPage != 0) {
      auto it = n.pages.find(size / kPage);
      if (it != n.pages.end()) {
        std::memset(it->second.get() + size % kPage, 0, kPage - size % kPage);
      }
    }
    n.visible = std::min(n.visible, size);
  }
  n.size = size;
}

// fsync(file): the dirty pages and the size reach the backing inode.
int SyncFile(Node& n) {
  if (n.bfd < 0) return 0;
  if (n.visible < n.bsize && ftruncate(n.bfd, static_cast<off_t>(n.visible)) != 0) return -errno;
  for (const auto& [p, page] : n.pages) {
    const uint64_t start = p * kPage;
    if (start >= n.size) break;
    if (!PwriteAll(n.bfd, page.get(), std::min(kPage, n.size - start), start)) return -EIO;
  }
  if (ftruncate(n.bfd, static_cast<off_t>(n.size)) != 0) return -errno;
  n.pages.clear();
  n.bsize = n.visible = n.size;
  return 0;
}

// fsync(directory): the backing directory `rel` holds exactly the live file entries of `d`.
int SyncDir(const std::string& rel, Node& d) {
  const int dfd = openat(g.broot, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return -errno;
  DIR* dir = fdopendir(dup(dfd));
  if (dir == nullptr) {
    close(dfd);
    return -EIO;
  }
  std::vector<std::string> durable;
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == ".." || (rel == "." && name == kInodeDir)) continue;
    durable.push_back(name);
  }
  closedir(dir);
  int rc = 0;
  std::map<std::string, bool> linked;
  for (const std::string& name : durable) {
    struct stat st {};
    if (fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISDIR(st.st_mode)) continue;
    auto it = d.kids.find(name);
    if (it != d.kids.end() && !it->second->dir && it->second->bino == st.st_ino) {
      linked[name] = true;
    } else if (unlinkat(dfd, name.c_str(), 0) != 0) {
      rc = -errno;
    }
  }
  for (const auto& [name, kid] : d.kids) {
    if (kid->dir || linked.count(name) != 0) continue;
    if (linkat(g.broot, InodeName(kid->id).c_str(), dfd, name.c_str(), 0) != 0) rc = -errno;
  }
  close(dfd);
  if (rc == 0) d.ns_dirty = false;
  return rc;
}

void SyncAll(const std::string& rel, Node& d) {
  for (const auto& [name, kid] : d.kids) {
    const std::string sub = rel == "." ? name : rel + "/" + name;
    if (kid->dir) {
      SyncAll(sub, *kid);
    } else {
      SyncFile(*kid);
    }
  }
  for (const auto& [fh, n] : g.handles) {
    if (!n->dir && !n->ctl) SyncFile(*n);
  }
  SyncDir(rel, d);
}

void CountVolatile(Node& d) {
  if (d.ns_dirty) ++g.dropped_dirs;
  for (const auto& [name, kid] : d.kids) {
    if (kid->dir) {
      CountVolatile(*kid);
    } else if (!kid->pages.empty() || kid->visible < kid->bsize || kid->size != kid->bsize) {
      ++g.dropped_files;
      g.dropped_bytes += kid->pages.size() * kPage;
    }
  }
}

void Crash() {
  g.dropped_bytes = g.dropped_files = g.dropped_dirs = 0;
  CountVolatile(*g.root);
  g.crashed = true;
  ++g.crashes;
  std::error_code ec;
  std::filesystem::remove_all(g.backing + "/" + kInodeDir, ec);
  std::fprintf(stderr,
               "iris_lossyfs: crash: dropped %llu dirty pages' bytes in %llu files, and the "
               "entries of %llu directories\n",
               static_cast<unsigned long long>(g.dropped_bytes),
               static_cast<unsigned long long>(g.dropped_files),
               static_cast<unsigned long long>(g.dropped_dirs));
}

std::string Counters() {
  return "crashed " + std::to_string(g.crashed ? 1 : 0) + "\nwrites " + std::to_string(g.writes) +
         "\nwrite_bytes " + std::to_string(g.write_bytes) + "\nfsyncs " + std::to_string(g.fsyncs) +
         "\ndir_fsyncs " + std::to_string(g.dir_fsyncs) + "\ndropped_bytes " +
         std::to_string(g.dropped_bytes) + "\ndropped_files " + std::to_string(g.dropped_files) +
         "\ndropped_dirs " + std::to_string(g.dropped_dirs) + "\n";
}

// Loads the live tree from the durable backing tree (at mount).
void Load(const std::string& rel, Node& d, std::map<ino_t, std::shared_ptr<Node>>* by_ino) {
  const int dfd = openat(g.broot, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  DIR* dir = fdopendir(dfd);
  while (dirent* e = readdir(dir)) {
    const std::string name = e->d_name;
    if (name == "." || name == ".." || (rel == "." && name == kInodeDir)) continue;
    const std::string sub = rel == "." ? name : rel + "/" + name;
    struct stat st {};
    if (fstatat(g.broot, sub.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      auto n = std::make_shared<Node>();
      n->dir = true;
      n->id = g.next_id++;
      Load(sub, *n, by_ino);
      d.kids[name] = n;
    } else if (S_ISREG(st.st_mode)) {
      auto it = by_ino->find(st.st_ino);
      if (it != by_ino->end()) {
        d.kids[name] = it->second;
        continue;
      }
      auto n = std::make_shared<Node>();
      n->id = g.next_id++;
      if (linkat(g.broot, sub.c_str(), g.broot, InodeName(n->id).c_str(), 0) != 0) {
        std::fprintf(stderr, "iris_lossyfs: cannot link %s: %s\n", sub.c_str(), strerror(errno));
        std::exit(1);
      }
      n->bfd = openat(g.broot, InodeName(n->id).c_str(), O_RDWR | O_CLOEXEC);
      n->bino = st.st_ino;
      n->bsize = n->visible = n->size = static_cast<uint64_t>(st.st_size);
      (*by_ino)[st.st_ino] = n;
      d.kids[name] = n;
    }
  }
  closedir(dir);
}

// ---- FUSE operations -------------------------------------------------------------------

#define LOCKED()                          \
  std::lock_guard<std::mutex> lock(g.mu); \
  if (g.crashed) return -EIO

void* OpInit(fuse_conn_info* conn, fuse_config* cfg) {
  cfg->direct_io = 1;
  cfg->kernel_cache = 0;
  cfg->auto_cache = 0;
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->use_ino = 1;
  cfg->hard_remove = 1;  // unlink of an open file: no .fuse_hidden rename
  cfg->nullpath_ok = 1;
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_WRITEBACK_CACHE);
  return nullptr;
}

void OpDestroy(void*) {
  std::lock_guard<std::mutex> lock(g.mu);
  if (!g.crashed) SyncAll(".", *g.root);
}

int OpGetattr(const char* path, struct stat* st, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  std::memset(st, 0, sizeof *st);
  if (n->ctl) {
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
  } else if (n->dir) {
    std::string rel;
    if (!PathOf(*g.root, ".", n.get(), &rel) ||
        fstatat(g.broot, rel.c_str(), st, AT_SYMLINK_NOFOLLOW) != 0) {
      st->st_mode = S_IFDIR | 0755;
    }
    st->st_nlink = 2;
  } else {
    fstat(n->bfd, st);
    st->st_size = static_cast<off_t>(n->size);
    st->st_blocks = static_cast<blkcnt_t>((n->size + 511) / 512);
    st->st_nlink = 1;
  }
  st->st_ino = n->id;
  return 0;
}

int OpOpendir(const char* path, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = Resolve(path);
  if (n == nullptr) return -ENOENT;
  if (!n->dir) return -ENOTDIR;
  fi->fh = g.next_fh++;
  g.handles[fi->fh] = n;
  return 0;
}

int OpReaddir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info* fi,
              fuse_readdir_flags) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (!n->dir) return -ENOTDIR;
  fill(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  for (const auto& [name, kid] : n->kids) {
    fill(buf, name.c_str(), nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  }
  return 0;
}

int OpMkdir(const char* path, mode_t mode) {
  LOCKED();
  std::string name;
  std::shared_ptr<Node> parent = ResolveParent(path, &name);
  if (parent == nullptr) return -ENOENT;
  if (parent->kids.count(name) != 0 || (parent == g.root && name == kCtlName)) return -EEXIST;
  if (mkdirat(g.broot, Rel(path).c_str(), mode) != 0) return -errno;
  auto n = std::make_shared<Node>();
  n->dir = true;
  n->id = g.next_id++;
  parent->kids[name] = n;
  return 0;
}

int OpRmdir(const char* path) {
  LOCKED();
  std::string name;
  std::shared_ptr<Node> parent = ResolveParent(path, &name);
  if (parent == nullptr) return -ENOENT;
  auto it = parent->kids.find(name);
  if (it == parent->kids.end()) return -ENOENT;
  if (!it->second->dir) return -ENOTDIR;
  if (!it->second->kids.empty()) return -ENOTEMPTY;
  // Durable file entries removed live but not yet by a directory fsync go with it.
  std::error_code ec;
  std::filesystem::remove_all(g.backing + "/" + Rel(path), ec);
  if (ec) return -EIO;
  parent->kids.erase(it);
  return 0;
}

int OpCreate(const char* path, mode_t mode, fuse_file_info* fi) {
  LOCKED();
  std::string name;
  std::shared_ptr<Node> parent = ResolveParent(path, &name);
  if (parent == nullptr) return -ENOENT;
  if (parent == g.root && name == kCtlName) return -EEXIST;
  std::shared_ptr<Node> n;
  auto it = parent->kids.find(name);
  if (it != parent->kids.end()) {
    if ((fi->flags & O_EXCL) != 0) return -EEXIST;
    if (it->second->dir) return -EISDIR;
    n = it->second;
    if ((fi->flags & O_TRUNC) != 0) TruncateData(*n, 0);
  } else {
    if (!S_ISREG(mode)) return -EPERM;
    int err = 0;
    n = NewFile(mode, &err);
    if (n == nullptr) return err;
    parent->kids[name] = n;
    parent->ns_dirty = true;
  }
  fi->fh = g.next_fh++;
  fi->direct_io = 1;
  g.handles[fi->fh] = n;
  return 0;
}

int OpOpen(const char* path, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = Resolve(path);
  if (n == nullptr) return -ENOENT;
  if (n->dir) return -EISDIR;
  if (!n->ctl && (fi->flags & O_TRUNC) != 0) TruncateData(*n, 0);
  fi->fh = g.next_fh++;
  fi->direct_io = 1;
  g.handles[fi->fh] = n;
  return 0;
}

int OpRelease(const char*, fuse_file_info* fi) {
  std::lock_guard<std::mutex> lock(g.mu);
  g.handles.erase(fi->fh);
  return 0;
}

int OpRead(const char* path, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  std::lock_guard<std::mutex> lock(g.mu);
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl) {
    const std::string text = Counters();
    if (static_cast<size_t>(off) >= text.size()) return 0;
    const size_t k = std::min(size, text.size() - static_cast<size_t>(off));
    std::memcpy(buf, text.data() + off, k);
    return static_cast<int>(k);
  }
  if (g.crashed) return -EIO;
  if (n->dir) return -EISDIR;
  return ReadData(*n, buf, size, static_cast<uint64_t>(off));
}

int OpWrite(const char* path, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl) {
    std::string cmd(buf, size);
    while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == ' ')) cmd.pop_back();
    if (cmd == "crash") {
      Crash();
    } else if (cmd == "sync") {
      SyncAll(".", *g.root);
    } else {
      std::fprintf(stderr, "iris_lossyfs: unknown control command '%s' (crash|sync)\n",
                   cmd.c_str());
      return -EINVAL;
    }
    return static_cast<int>(size);
  }
  if (n->dir) return -EISDIR;
  WriteData(*n, buf, size, static_cast<uint64_t>(off));
  ++g.writes;
  g.write_bytes += size;
  return static_cast<int>(size);
}

int OpTruncate(const char* path, off_t size, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl) return 0;
  if (n->dir) return -EISDIR;
  TruncateData(*n, static_cast<uint64_t>(size));
  return 0;
}

int OpFallocate(const char* path, int mode, off_t off, off_t len, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->dir || n->ctl) return -EINVAL;
  if ((mode & ~FALLOC_FL_KEEP_SIZE) != 0) return -EOPNOTSUPP;
  // Space reservation has no effect on the model; without KEEP_SIZE the file grows (zeros).
  const uint64_t end = static_cast<uint64_t>(off + len);
  if ((mode & FALLOC_FL_KEEP_SIZE) == 0 && end > n->size) n->size = end;
  return 0;
}

int OpFsync(const char* path, int, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl || n->dir) return 0;
  ++g.fsyncs;
  return SyncFile(*n);
}

int OpFsyncdir(const char* path, int, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (!n->dir) return -ENOTDIR;
  std::string rel;
  if (!PathOf(*g.root, ".", n.get(), &rel)) return -ENOENT;  // removed meanwhile
  ++g.dir_fsyncs;
  return SyncDir(rel, *n);
}

int OpUnlink(const char* path) {
  LOCKED();
  std::string name;
  std::shared_ptr<Node> parent = ResolveParent(path, &name);
  if (parent == nullptr) return -ENOENT;
  auto it = parent->kids.find(name);
  if (it == parent->kids.end()) return -ENOENT;
  if (it->second->dir) return -EISDIR;
  parent->kids.erase(it);
  parent->ns_dirty = true;
  return 0;
}

int OpRename(const char* from, const char* to, unsigned int flags) {
  LOCKED();
  if (flags & RENAME_EXCHANGE) return -EINVAL;
  std::string from_name, to_name;
  std::shared_ptr<Node> fp = ResolveParent(from, &from_name);
  std::shared_ptr<Node> tp = ResolveParent(to, &to_name);
  if (fp == nullptr || tp == nullptr) return -ENOENT;
  if (tp == g.root && to_name == kCtlName) return -EPERM;
  auto src = fp->kids.find(from_name);
  if (src == fp->kids.end()) return -ENOENT;
  std::shared_ptr<Node> n = src->second;
  auto dst = tp->kids.find(to_name);
  if (dst != tp->kids.end()) {
    if (dst->second == n) return 0;
    if (flags & RENAME_NOREPLACE) return -EEXIST;
    if (dst->second->dir && !n->dir) return -EISDIR;
    if (!dst->second->dir && n->dir) return -ENOTDIR;
    if (dst->second->dir && !dst->second->kids.empty()) return -ENOTEMPTY;
  }
  if (n->dir) {
    // Directories are durable at once.
    if (dst != tp->kids.end()) {
      std::error_code ec;
      std::filesystem::remove_all(g.backing + "/" + Rel(to), ec);
    }
    if (renameat(g.broot, Rel(from).c_str(), g.broot, Rel(to).c_str()) != 0) return -errno;
  } else {
    fp->ns_dirty = tp->ns_dirty = true;
  }
  fp->kids.erase(from_name);
  tp->kids[to_name] = n;
  return 0;
}

int OpChmod(const char* path, mode_t mode, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl) return -EPERM;
  std::string rel;
  if (n->dir && !PathOf(*g.root, ".", n.get(), &rel)) return -ENOENT;
  if (n->dir) return fchmodat(g.broot, rel.c_str(), mode, 0) == 0 ? 0 : -errno;
  return fchmod(n->bfd, mode) == 0 ? 0 : -errno;
}

int OpChown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  LOCKED();
  std::shared_ptr<Node> n = FromFi(path, fi);
  if (n == nullptr) return -ENOENT;
  if (n->ctl) return -EPERM;
  std::string rel;
  if (n->dir && !PathOf(*g.root, ".", n.get(), &rel)) return -ENOENT;
  if (n->dir) return fchownat(g.broot, rel.c_str(), uid, gid, 0) == 0 ? 0 : -errno;
  return fchown(n->bfd, uid, gid) == 0 ? 0 : -errno;
}

int OpUtimens(const char* path, const timespec*, fuse_file_info* fi) {
  LOCKED();
  return FromFi(path, fi) == nullptr ? -ENOENT : 0;
}

int OpStatfs(const char*, struct statvfs* st) {
  LOCKED();
  return fstatvfs(g.broot, st) == 0 ? 0 : -errno;
}

int OpRefuse2(const char*, const char*) { return -EPERM; }
int OpMknod(const char*, mode_t, dev_t) { return -EPERM; }
int OpFlush(const char*, fuse_file_info*) { return 0; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: iris_lossyfs BACKING MOUNTPOINT [-d]\n");
    return 2;
  }
  char* real = realpath(argv[1], nullptr);
  if (real == nullptr) {
    std::fprintf(stderr, "iris_lossyfs: backing directory %s: %s\n", argv[1], strerror(errno));
    return 2;
  }
  g.backing = real;
  free(real);
  g.broot = open(g.backing.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (g.broot < 0) {
    std::fprintf(stderr, "iris_lossyfs: %s: %s\n", g.backing.c_str(), strerror(errno));
    return 2;
  }
  // What the previous mount kept volatile is gone (a crash, or a daemon that died).
  std::error_code ec;
  std::filesystem::remove_all(g.backing + "/" + kInodeDir, ec);
  if (mkdirat(g.broot, kInodeDir, 0700) != 0) {
    std::fprintf(stderr, "iris_lossyfs: cannot create %s/%s: %s\n", g.backing.c_str(), kInodeDir,
                 strerror(errno));
    return 2;
  }
  g.root = std::make_shared<Node>();
  g.root->dir = true;
  g.root->id = 1;
  g.ctl = std::make_shared<Node>();
  g.ctl->ctl = true;
  g.ctl->id = g.next_id++;
  std::map<ino_t, std::shared_ptr<Node>> by_ino;
  Load(".", *g.root, &by_ino);
  by_ino.clear();

  fuse_operations ops{};
  ops.init = OpInit;
  ops.destroy = OpDestroy;
  ops.getattr = OpGetattr;
  ops.opendir = OpOpendir;
  ops.releasedir = OpRelease;
  ops.readdir = OpReaddir;
  ops.mkdir = OpMkdir;
  ops.rmdir = OpRmdir;
  ops.create = OpCreate;
  ops.open = OpOpen;
  ops.release = OpRelease;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.truncate = OpTruncate;
  ops.fallocate = OpFallocate;
  ops.fsync = OpFsync;
  ops.fsyncdir = OpFsyncdir;
  ops.unlink = OpUnlink;
  ops.rename = OpRename;
  ops.chmod = OpChmod;
  ops.chown = OpChown;
  ops.utimens = OpUtimens;
  ops.statfs = OpStatfs;
  ops.link = OpRefuse2;
  ops.symlink = OpRefuse2;
  ops.mknod = OpMknod;
  ops.flush = OpFlush;

  // Single-threaded: every operation holds the one lock anyway.
  std::vector<std::string> fargs = {
      argv[0], argv[2], "-f", "-s", "-o", "auto_unmount,fsname=iris_lossyfs,subtype=lossyfs"};
  for (int i = 3; i < argc; ++i) fargs.emplace_back(argv[i]);
  std::vector<char*> fargv;
  for (std::string& a : fargs) fargv.push_back(a.data());
  return fuse_main(static_cast<int>(fargv.size()), fargv.data(), &ops, nullptr);
}
