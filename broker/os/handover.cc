#include "broker/os/handover.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "broker/os/files.h"
#include "broker/os/proc_fds.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace portbroker::broker {

uint64_t socket_cookie(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) return 0;
  return cookie;
}

uint64_t process_start_time(pid_t pid) {
  auto stat = read_whole_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat) return 0;
  // The command may contain spaces and parentheses: fields count from the last ')'.
  size_t close = stat->rfind(')');
  if (close == std::string::npos) return 0;
  const char* p = stat->c_str() + close + 1;
  // Field 3 (state) follows ')'; the start time is field 22.
  for (int field = 3; field < 22 && *p != '\0'; ++field) {
    while (*p == ' ') ++p;
    while (*p != ' ' && *p != '\0') ++p;
  }
  return std::strtoull(p, nullptr, 10);
}

UniqueFd open_process(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return {};
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return {};
  ::fcntl(pidfd.get(), F_SETFD, FD_CLOEXEC);
  // Read after the pidfd pins the pid: if it matches now, the pidfd is that process.
  if (start_time == 0 || process_start_time(pid) != start_time) return {};
  return pidfd;
}

Result<std::unordered_map<uint64_t, UniqueFd>> take_sockets_from(
    pid_t pid, int pidfd, const std::unordered_set<uint64_t>& wanted) {
  std::unordered_map<uint64_t, UniqueFd> out;
  const std::string dir = "/proc/" + std::to_string(pid);
  UniqueFd pid_dir(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!pid_dir) return errno_error(ErrorCode::kNotFound, "cannot open " + dir, errno);
  std::optional<Error> refused;
  const bool listed = for_each_socket_fd(pid_dir.get(), [&](int target_fd, uint64_t) {
    UniqueFd copy(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, target_fd, 0)));
    if (!copy) {
      if (errno == EPERM || errno == EACCES) {
        refused = errno_error(ErrorCode::kPermissionDenied,
                              "cannot take sockets back from pid " + std::to_string(pid), errno);
        return false;
      }
      return true;  // closed meanwhile
    }
    uint64_t cookie = socket_cookie(copy.get());
    if (wanted.count(cookie) != 0) out.try_emplace(cookie, std::move(copy));
    return out.size() < wanted.size();
  });
  if (refused) return *refused;
  if (!listed) return errno_error(ErrorCode::kNotFound, "cannot list the fds of " + dir, errno);
  return out;
}

namespace {

std::string hex(uint64_t v) {
  char buf[17];
  int n = std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(v));
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

std::string session_fd_name(uint64_t session) { return "c" + std::to_string(session); }
std::string socket_fd_name(uint64_t cookie) { return "s" + hex(cookie); }
std::string hold_fd_name(uint64_t cookie) { return "h" + hex(cookie); }

FdKind classify_fd_name(const std::string& name, uint64_t* session) {
  if (name == kControlFdName) return FdKind::kControl;
  if (name.size() < 2) return FdKind::kUnknown;
  const bool digits = name.find_first_not_of("0123456789", 1) == std::string::npos;
  const bool hexdigits = name.find_first_not_of("0123456789abcdef", 1) == std::string::npos;
  switch (name[0]) {
    case 'c':
      if (!digits) return FdKind::kUnknown;
      *session = std::strtoull(name.c_str() + 1, nullptr, 10);
      return *session != 0 ? FdKind::kSession : FdKind::kUnknown;
    case 's':
      return hexdigits ? FdKind::kSocket : FdKind::kUnknown;
    case 'h':
      return hexdigits ? FdKind::kHold : FdKind::kUnknown;
    default:
      return FdKind::kUnknown;
  }
}

std::vector<NamedFd> take_inherited_fds() {
  std::vector<NamedFd> out;
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    out.push_back(NamedFd{UniqueFd(fd), names != nullptr && names[i] ? names[i] : ""});
  }
  if (names != nullptr) {
    for (int i = 0; names[i] != nullptr; ++i) std::free(names[i]);
    std::free(names);
  }
  return out;
}

Result<void> FdStore::store(int fd, const std::string& name, bool poll) {
  if (!enabled_) return {};
  std::string state = "FDSTORE=1\nFDNAME=" + name + (poll ? "" : "\nFDPOLL=0");
  int rc = sd_pid_notify_with_fds(0, 0, state.c_str(), &fd, 1);
  if (rc <= 0) {
    return errno_error(ErrorCode::kInternal, "cannot keep " + name + " in the fd store",
                       rc < 0 ? -rc : ENOTCONN);
  }
  return {};
}

void FdStore::remove(const std::string& name) {
  if (!enabled_) return;
  std::string state = "FDSTOREREMOVE=1\nFDNAME=" + name;
  (void)sd_pid_notify(0, 0, state.c_str());
}

}  // namespace portbroker::broker
