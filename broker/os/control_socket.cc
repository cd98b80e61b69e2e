#include "broker/os/control_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace portbroker::broker {

namespace {

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof(addr.sun_path) - 1));
  return addr;
}

UniqueFd connect_seqpacket(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un addr = unix_address(path);
  if (fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) fd.reset();
  return fd;
}

// Refuses a directory others could use to swap what lies below it: one owned by someone but
// root or us, or writable by others without the sticky bit (OpenSSH checks its paths alike).
Result<void> check_safe_directory(const std::string& dir, const struct stat& st) {
  if (!S_ISDIR(st.st_mode)) return make_error(ErrorCode::kBadRequest, dir + " is not a directory");
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + dir + ": it belongs to uid " +
                          std::to_string(st.st_uid) + ", who could replace what is in it");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + dir + ": others may write to it (and no sticky bit)");
  }
  return {};
}

// Every directory from / down to `dir`, as written and as resolved (a symbolic link on the
// way is as safe as the directories it leads through).
Result<void> check_directory_chain(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path resolved = fs::canonical(dir, ec);
  if (ec) return make_error(ErrorCode::kInternal, "cannot resolve " + dir + ": " + ec.message());
  for (const fs::path& path : {fs::path(dir), resolved}) {
    fs::path prefix;
    for (const fs::path& part : path) {
      prefix /= part;
      struct stat st {};
      if (::stat(prefix.c_str(), &st) != 0) {
        return errno_error(ErrorCode::kInternal, "cannot inspect " + prefix.string(), errno);
      }
      if (auto safe = check_safe_directory(prefix.string(), st); !safe) return safe;
    }
  }
  return {};
}

// "pid 123 (portbrokerd, uid 0)": who answers on a connected socket, by the kernel's word.
std::string describe_peer(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return "an unknown process";
  std::string comm;
  if (FILE* f = std::fopen(("/proc/" + std::to_string(cred.pid) + "/comm").c_str(), "re")) {
    char buf[64] = {};
    if (std::fgets(buf, sizeof(buf), f) != nullptr) comm = buf;
    std::fclose(f);
  }
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  if (comm.empty()) comm = "?";
  return "pid " + std::to_string(cred.pid) + " (" + comm + ", uid " + std::to_string(cred.uid) +
         ")";
}

}  // namespace

Result<bool> prepare_socket_path(const std::string& path) {
  namespace fs = std::filesystem;
  sockaddr_un probe{};
  if (path.empty() || path.size() >= sizeof(probe.sun_path)) {
    return make_error(ErrorCode::kBadRequest,
                      "socket path '" + path + "' is empty or longer than " +
                          std::to_string(sizeof(probe.sun_path) - 1) + " bytes");
  }
  if (path.front() != '/') {
    return make_error(ErrorCode::kBadRequest, "socket path '" + path + "' must be absolute");
  }
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = "/";
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return errno_error(ErrorCode::kInternal, "cannot inspect " + dir, errno);
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::kInternal, "cannot create " + dir + ": " + ec.message());
    ::chmod(dir.c_str(), 0755);
    if (::lstat(dir.c_str(), &st) != 0) {
      return errno_error(ErrorCode::kInternal, "cannot inspect " + dir, errno);
    }
  }
  if (S_ISLNK(st.st_mode)) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + dir + ": it is a symbolic link");
  }
  if (auto safe = check_safe_directory(dir, st); !safe) return safe.error();
  if (auto chain = check_directory_chain(dir); !chain) return chain.error();

  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return errno_error(ErrorCode::kInternal, "cannot inspect " + path, errno);
  }
  if (S_ISLNK(st.st_mode)) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + path + ": it is a symbolic link (planted?); remove it");
  }
  if (!S_ISSOCK(st.st_mode)) {
    return make_error(ErrorCode::kBadRequest, path + " exists and is not a socket; remove it");
  }
  auto probe_fd = connect_seqpacket(path);
  if (probe_fd) {
    // Whoever answers: it need not be a portbrokerd.
    return make_error(ErrorCode::kConflict, path + " is already served by " +
                                                describe_peer(probe_fd.get()) +
                                                "; stop it or choose another --socket");
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return errno_error(ErrorCode::kInternal, "cannot remove stale socket " + path, errno);
  }
  return true;
}

Result<UniqueFd> listen_control_socket(const std::string& path, int backlog) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return errno_error(ErrorCode::kInternal, "cannot create the control socket", errno);
  sockaddr_un addr = unix_address(path);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot bind " + path, errno);
  }
  if (::chmod(path.c_str(), 0666) != 0 || ::listen(fd.get(), backlog) != 0) {
    int e = errno;
    ::unlink(path.c_str());
    return errno_error(ErrorCode::kInternal, "cannot listen on " + path, e);
  }
  return fd;
}

}  // namespace portbroker::broker
