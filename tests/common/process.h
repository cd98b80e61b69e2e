// Child processes for tests and benchmarks, with no test framework: the integration harness
// wraps these with doctest checks, the benchmark with its die().
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace pbtest {

using Clock = std::chrono::steady_clock;

// Milliseconds from now until `deadline`, as poll() takes them; 0 once it has passed.
int ms_left(Clock::time_point deadline);
// poll()s one fd until `events` or the deadline; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline);

struct ExitStatus {
  bool exited = false;  // normal exit (then `code`), else killed by `signal`
  int code = -1;
  int signal = 0;
  bool timed_out = false;  // we killed it because it overran its deadline
  bool ok() const { return exited && code == 0; }
  // The shell's convention: the exit code, or 128 + the signal; -1 when neither is known.
  int shell_code() const;
  std::string describe() const;
};

// Reaps `pid` (blocking), retrying on EINTR.
ExitStatus reap(pid_t pid);

// What a child whose body threw exits with.
inline constexpr int kChildThrew = 99;

// Flushes stdio (so that the child does not print the parent's buffered output a second time)
// and forks. The child runs `body` and _exits with its return value: it never returns into the
// caller, so none of the parent's destructors run twice (a Lease destroyed in a child would
// release the parent's lease).
portbroker::Result<pid_t> fork_child(const std::function<int()>& body);

// In a child just forked from `parent`: asks for `sig` when the parent dies, and says whether
// the parent is still there (it may have died before the request; the child should then exit).
// Changing credentials clears the request, so call it after any uid change.
bool die_with_parent(pid_t parent, int sig);

// A pidfd for `pid`: readable once the process has exited.
portbroker::Result<portbroker::UniqueFd> open_pidfd(pid_t pid);

// Open fds of a process (0: this one): fd number -> readlink target. Empty when /proc has none.
std::map<int, std::string> list_fds(pid_t pid);
std::string describe_fd_diff(const std::map<int, std::string>& before,
                             const std::map<int, std::string>& after);

// The sd_notify readiness protocol, from the service manager's end.
// A datagram socket bound at `path` (a stale file there is replaced) for NOTIFY_SOCKET.
portbroker::Result<portbroker::UniqueFd> bind_notify_socket(const std::string& path);
enum class ReadyOutcome { kReady, kExited, kTimeout };
// Waits for READY=1 on `notify` or the exit of the process behind `pidfd`, whichever comes first.
ReadyOutcome wait_ready(int notify, int pidfd, std::chrono::milliseconds timeout);

}  // namespace pbtest
