#include "broker/os/proc_fds.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <optional>
#include <string_view>

#include "broker/os/files.h"
#include "portbroker/fd.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

namespace {

std::optional<int> fd_number(const char* name) {
  auto v = parse_decimal(name);
  if (!v || *v > 0x7fffffff) return std::nullopt;
  return static_cast<int>(*v);
}

// "socket:[12345]" -> 12345
std::optional<uint64_t> socket_inode(std::string_view link) {
  constexpr std::string_view kPrefix = "socket:[";
  if (!link.starts_with(kPrefix) || !link.ends_with(']')) return std::nullopt;
  return parse_decimal(link.substr(kPrefix.size(), link.size() - kPrefix.size() - 1));
}

// The value of "key:\tvalue\n" in an fdinfo text.
std::optional<uint64_t> fdinfo_field(std::string_view text, std::string_view key) {
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(at, end - at);
    if (line.starts_with(key) && line.size() > key.size() && line[key.size()] == ':') {
      line.remove_prefix(key.size() + 1);
      line.remove_prefix(std::min(line.find_first_not_of(" \t"), line.size()));
      return parse_decimal(line);
    }
    at = end + 1;
  }
  return std::nullopt;
}

struct FdInfo {
  uint64_t mnt_id = 0;
  uint64_t inode = 0;
};

std::optional<FdInfo> read_fdinfo(int dirfd, const char* name) {
  UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  // pos, flags, mnt_id and ino come first; a socket's fdinfo has nothing after them.
  char buf[512];
  ssize_t n;
  do {
    n = ::read(fd.get(), buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  std::string_view text(buf, static_cast<size_t>(n));
  auto mnt = fdinfo_field(text, "mnt_id");
  auto ino = fdinfo_field(text, "ino");
  if (!mnt || !ino) return std::nullopt;
  return FdInfo{*mnt, *ino};
}

// Every socket lives on the kernel's one sockfs mount: its mount id tells a socket's fdinfo
// from that of a file whose inode number happens to match. 0 when it cannot be learnt.
uint64_t sockfs_mount_id() {
  static const uint64_t id = [] {
    UniqueFd probe(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!probe) return uint64_t{0};
    UniqueFd self(::open("/proc/self/fdinfo", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!self) return uint64_t{0};
    auto info = read_fdinfo(self.get(), std::to_string(probe.get()).c_str());
    return info ? info->mnt_id : uint64_t{0};
  }();
  return id;
}

}  // namespace

bool for_each_socket_fd_by_fdinfo(int pid_dir,
                                  const std::function<bool(int fd, uint64_t inode)>& visit) {
  const uint64_t sockfs = sockfs_mount_id();
  if (sockfs == 0) {
    errno = ENOSYS;  // a kernel whose fdinfo shows no mount id or inode (before 5.14)
    return false;
  }
  Dir infos = open_dir_at(pid_dir, "fdinfo");
  if (!infos) return false;
  while (dirent* e = ::readdir(infos.get())) {
    auto fd = fd_number(e->d_name);
    if (!fd) continue;
    auto info = read_fdinfo(::dirfd(infos.get()), e->d_name);
    if (!info || info->mnt_id != sockfs) continue;  // closed meanwhile, or not a socket
    if (!visit(*fd, info->inode)) break;
  }
  return true;
}

bool for_each_socket_fd(int pid_dir, const std::function<bool(int fd, uint64_t inode)>& visit) {
  Dir fds = open_dir_at(pid_dir, "fd");
  if (!fds) {
    if (errno != EACCES && errno != EPERM) return false;
    return for_each_socket_fd_by_fdinfo(pid_dir, visit);
  }
  char link[64];
  while (dirent* e = ::readdir(fds.get())) {
    auto fd = fd_number(e->d_name);
    if (!fd) continue;
    ssize_t n = ::readlinkat(::dirfd(fds.get()), e->d_name, link, sizeof(link));
    if (n <= 0 || static_cast<size_t>(n) >= sizeof(link)) continue;
    auto inode = socket_inode(std::string_view(link, static_cast<size_t>(n)));
    if (inode && !visit(*fd, *inode)) break;
  }
  return true;
}

}  // namespace portbroker::broker
