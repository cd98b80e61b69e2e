// The seam between the broker and the kernel for every socket it makes or keeps: the daemon
// uses the real calls; tests replace some of them to produce the faults the kernel rarely
// gives on demand (listen failing after bind, EMFILE, a failed dup), as Envoy's OsSysCalls.
// Each call returns what the system call returns and sets errno as it does.
#pragma once

#include <sys/socket.h>

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

  // The process's one set of real calls.
  static SysCalls& real();
};

}  // namespace portbroker::broker
