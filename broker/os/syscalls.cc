#include "broker/os/syscalls.h"

#include <fcntl.h>
#include <sys/fsuid.h>
#include <unistd.h>

namespace portbroker::broker {

int SysCalls::socket(int domain, int type, int protocol) {
  return ::socket(domain, type, protocol);
}

int SysCalls::setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
  return ::setsockopt(fd, level, name, value, len);
}

int SysCalls::bind(int fd, const sockaddr* addr, socklen_t len) { return ::bind(fd, addr, len); }

int SysCalls::listen(int fd, int backlog) { return ::listen(fd, backlog); }

int SysCalls::shutdown(int fd, int how) { return ::shutdown(fd, how); }

int SysCalls::dup_cloexec(int fd) { return ::fcntl(fd, F_DUPFD_CLOEXEC, 3); }

int SysCalls::set_fsuid(uid_t uid) { return ::setfsuid(uid); }

int SysCalls::set_fsgid(gid_t gid) { return ::setfsgid(gid); }

SysCalls& SysCalls::real() {
  static SysCalls calls;
  return calls;
}

}  // namespace portbroker::broker
