// The socket fds of another process, read from /proc.
//
// /proc/PID/fd's links name each socket's inode, but the directory is readable only by the
// process's owner or with CAP_DAC_READ_SEARCH. /proc/PID/fdinfo shows the same inode to anyone
// who may ptrace the process (CAP_SYS_PTRACE), one small file per fd: the daemon reads the links
// where it can and the fdinfo files where it cannot, so that the shipped unit does not need
// CAP_DAC_READ_SEARCH.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>

namespace portbroker::broker {

// Calls `visit(fd, inode)` for each socket among the fds of the process whose /proc directory
// is open as `pid_dir`, until `visit` returns false. Returns false, with errno set, when neither
// /proc/PID/fd nor /proc/PID/fdinfo can be read (the process is gone, or not ours to look at).
bool for_each_socket_fd(int pid_dir, const std::function<bool(int fd, uint64_t inode)>& visit);

// The same, through /proc/PID/fdinfo only (for tests: the link path is the one taken as root).
bool for_each_socket_fd_by_fdinfo(int pid_dir,
                                  const std::function<bool(int fd, uint64_t inode)>& visit);

}  // namespace portbroker::broker
