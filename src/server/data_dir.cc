#include "server/data_dir.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace iris::server {
namespace {

// "0 (root)", or "1234" when the uid has no passwd entry.
std::string UidName(uid_t uid) {
  std::string out = std::to_string(uid);
  passwd pw{};
  passwd* found = nullptr;
  char buf[1024];
  if (getpwuid_r(uid, &pw, buf, sizeof(buf), &found) == 0 && found != nullptr) {
    out += " (" + std::string(found->pw_name) + ")";
  }
  return out;
}

// The command name of `pid` (/proc/PID/comm), or "" when it cannot be read.
std::string ProcessName(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

}  // namespace

std::string DescribeAccess(const std::string& path) {
  std::string out = "irisd runs as uid " + UidName(geteuid());
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    out += "; " + path + " is owned by uid " + UidName(st.st_uid) + ", mode " + mode;
  }
  return out;
}

Status CheckDataDirWritable(const std::string& dir) {
  const std::string probe = dir + "/.irisd-write-check-" + std::to_string(getpid());
  const int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    return BadRequest("data directory " + dir + " is not writable: " + std::strerror(err) + " (" +
                      DescribeAccess(dir) +
                      "): give the directory to the user irisd runs as (chown -R USER " + dir +
                      "), or choose another --data-dir");
  }
  close(fd);
  unlink(probe.c_str());
  return Status::Ok();
}

Status ExplainStoreOpenError(const std::string& data_dir, const std::string& lock_file,
                             const Status& open_error) {
  const int fd = open(lock_file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return open_error;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;
  const bool asked = fcntl(fd, F_GETLK, &fl) == 0;
  close(fd);
  if (!asked || fl.l_type == F_UNLCK) return open_error;
  // An open-file-description lock reports pid -1.
  const pid_t pid = fl.l_pid > 0 ? fl.l_pid : 0;
  const std::string name = pid > 0 ? ProcessName(pid) : "";
  const std::string who = name.empty() || name == "irisd" ? "another irisd" : "another process";
  std::string holder = pid > 0 ? "pid " + std::to_string(pid) : "pid unknown";
  if (!name.empty() && name != "irisd") holder += ", " + name;
  return Unavailable("data directory " + data_dir + " is in use by " + who + " (" + holder +
                         "): stop it first, or give this irisd another --data-dir",
                     0);
}

}  // namespace iris::server
