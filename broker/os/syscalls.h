// The seam between the broker and the kernel for every socket it makes or keeps: the daemon
// uses the real calls; tests replace some of them to produce the faults the kernel rarely
// gives on demand (listen failing after bind, EMFILE, a failed dup), as Envoy's OsSysCalls.
// Each call returns what the system call returns and sets errno as it does.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

namespace portbroker::broker {

class SysCalls {
 public:
  virtual ~SysCalls() = default;
  virtual int socket(int domain, int type, int protocol);
  virtual int setsockopt(int fd, int level, int name, const void* value, socklen_t len);
  virtual int bind(int fd, const sockaddr* addr, socklen_t len);
  virtual int listen(int fd, int backlog);
  virtual int shutdown(int fd, int how);
  // fcntl(F_DUPFD_CLOEXEC, 3): the broker's own references to a socket.
  virtual int dup_cloexec(int fd);
  // setfsuid(2)/setfsgid(2), this thread only: the ids the kernel records as a new socket's
  // owner. Each returns the previous value; a switch the process may not make (no
  // CAP_SETUID/CAP_SETGID) leaves the id as it was.
  virtual int set_fsuid(uid_t uid);
  virtual int set_fsgid(gid_t gid);

  // The process's one set of real calls.
  static SysCalls& real();
};

}  // namespace portbroker::broker
