// Sockets that outlive a daemon process: how one is recognised (SO_COOKIE, never an fd number),
// how a restarted daemon takes its copy back from a live holder (pidfd_getfd), the service
// manager's fd store (FDSTORE=1), and the fds a previous daemon or the service manager passed
// at start (LISTEN_FDS / LISTEN_FDNAMES, sd_listen_fds(3)).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

// The socket's SO_COOKIE: unique for the kernel's lifetime. 0 when `fd` is not a socket.
uint64_t socket_cookie(int fd);

// /proc/PID/stat's start time (clock ticks after boot): with the pid, a process's identity.
// 0 when the process is gone.
uint64_t process_start_time(pid_t pid);

// A pidfd for `pid` if it is still the process that started at `start_time`, else invalid.
UniqueFd open_process(pid_t pid, uint64_t start_time);

// Copies (pidfd_getfd) of the holder's sockets whose SO_COOKIE is in `wanted`, keyed by cookie.
// Needs ptrace access to the holder (root with CAP_SYS_PTRACE); kPermissionDenied without it.
Result<std::unordered_map<uint64_t, UniqueFd>> take_sockets_from(
    pid_t pid, int pidfd, const std::unordered_set<uint64_t>& wanted);

// What each fd passed to the next daemon is, by its name. The names are short because the
// service manager passes every one of them in a single environment variable, LISTEN_FDNAMES,
// which the kernel limits to 128 KiB: "control", "c<session id>", "s<SO_COOKIE, hex>" for a
// lease socket, "h<SO_COOKIE, hex>" for a held reservation's socket.
enum class FdKind { kControl, kSession, kSocket, kHold, kUnknown };
inline constexpr const char* kControlFdName = "control";
std::string session_fd_name(uint64_t session);
std::string socket_fd_name(uint64_t cookie);
std::string hold_fd_name(uint64_t cookie);
// The kind of a name, and for a session its id.
FdKind classify_fd_name(const std::string& name, uint64_t* session);

struct NamedFd {
  UniqueFd fd;
  std::string name;
};

// The fds passed at start (LISTEN_FDS for this pid), close-on-exec from now on, the variables
// unset so that no child inherits them.
std::vector<NamedFd> take_inherited_fds();

// The service manager's fd store (sd_pid_notify_with_fds). Idle unless enabled: the daemon
// enables it when it runs under a manager that keeps fds for it.
class FdStore {
 public:
  explicit FdStore(bool enabled) : enabled_(enabled) {}
  bool enabled() const { return enabled_; }
  // FDSTORE=1 with FDNAME=`name`; `poll` false (FDPOLL=0) for sockets that are bound but not
  // listening, which the manager must not watch for hang-ups.
  Result<void> store(int fd, const std::string& name, bool poll = true);
  // FDSTOREREMOVE=1 for every fd stored under `name`.
  void remove(const std::string& name);

 private:
  bool enabled_;
};

}  // namespace portbroker::broker
