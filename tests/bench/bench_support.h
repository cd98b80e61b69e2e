// Plumbing for the benchmark: a private network namespace, the fd limit, the daemon as a child
// process, latency samples and their percentiles, and a fan-out of worker processes. What it
// shares with the integration tests (scratch directory, forking, readiness, netns) is in
// tests/common/, which needs no test framework; these wrappers die() where the tests REQUIRE.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/temp_dir.h"
#include "portbroker/fd.hpp"

namespace pbbench {

// Aborts the benchmark with a message (setup failures are not measurements).
[[noreturn]] void die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

inline uint64_t now_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// Enters a fresh network namespace (with a user namespace when not root) and brings lo up, so
// that every port used here is private and fixed ports are safe.
void enter_private_netns();

// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit. Children
// (the daemon included) inherit it.
uint64_t raise_fd_limit();

// A scratch directory (the shared one, tests/common/temp_dir.h), removed on destruction and by
// die().
class TempDir : public pbtest::common::TempDir {
 public:
  TempDir();
  ~TempDir();
};

// How a daemon is started beyond its arguments: the fds it inherits (LISTEN_FDS from 3 on, named
// by LISTEN_FDNAMES, LISTEN_PID set in the child), and who reads its NOTIFY_SOCKET.
struct DaemonLaunch {
  std::vector<std::pair<int, std::string>> listen_fds;  // not owned: the child gets copies
  // Empty: the daemon gets a notify socket of its own, read until READY=1 and then closed.
  // Otherwise the path of a notify socket read by someone else, and how to wait for READY=1.
  std::string notify_path;
  std::function<bool(int pidfd)> wait_ready;  // false: the daemon exited first or timed out
};

// portbrokerd as a child process, started with NOTIFY_SOCKET and waited for until READY=1.
class DaemonProcess {
 public:
  DaemonProcess(const std::string& binary, const std::string& dir, std::vector<std::string> args,
                const DaemonLaunch& launch = {});
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& socket_path() const { return socket_path_; }
  // Number of fds open in the daemon (from /proc), -1 if unreadable.
  int open_fds() const;
  // SIGTERM, then waits (SIGKILL after 5 s); returns the exit code, or 128 + the signal.
  int stop();
  // SIGKILL, as a crash: nothing of the daemon's own clean-up runs. Waits until it is reaped.
  void crash();
  // From just before fork to READY=1 on the notify socket, in seconds.
  double start_seconds() const { return start_seconds_; }

 private:
  pid_t pid_ = -1;
  portbroker::UniqueFd pidfd_;
  std::string socket_path_;
  double start_seconds_ = 0;
};

// Latency samples in nanoseconds and what is reported about them.
struct Summary {
  size_t count = 0;
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, max_us = 0, mean_us = 0;
  double seconds = 0;      // wall time of the measured loop
  double ops_per_sec = 0;  // count / seconds
  // CPU the server process spent per operation (microseconds), when measured; -1 otherwise.
  double server_cpu_us = -1, server_user_us = -1, server_sys_us = -1;
  // Concurrent runs: the slowest and the fastest worker's operations per second.
  double worker_min_ops = -1, worker_max_ops = -1;
};
Summary summarize(std::vector<uint64_t> samples_ns, double wall_seconds);

// Times `op` `iterations` times after `warmup` untimed calls. `op` returns false on failure,
// with a message in its argument; the benchmark then stops.
struct TimedRun {
  std::vector<uint64_t> samples_ns;
  double wall_seconds = 0;
};
TimedRun time_loop(size_t warmup, size_t iterations, const std::function<bool(std::string&)>& op);

// N worker processes, each with its own state made by `setup` (in the child, after fork), all
// released at once and looping `op` until a common deadline. Every op's latency is kept (up to
// a cap per worker).
using WorkerOp = std::function<bool(std::string&)>;
using WorkerSetup = std::function<WorkerOp(std::string&)>;
struct ConcurrentRun {
  uint64_t ops = 0;
  uint64_t min_worker_ops = 0, max_worker_ops = 0;  // fairness between workers
  double wall_seconds = 0;  // from the common start to the last worker's last op
  std::vector<uint64_t> samples_ns;
  std::string error;  // first worker error, empty if none
};
ConcurrentRun run_concurrent(int workers, double seconds, size_t warmup_per_worker,
                             const WorkerSetup& setup);

// pbtest::fork_child (tests/common/process.h) for a child that dies with the benchmark.
pid_t fork_child(const std::function<int()>& body);
// Waits for `pid`; returns its exit code, or 128+signal.
int wait_child(pid_t pid);

std::string loadavg();

// The CPU's model name and how the kernel isolates its page tables, e.g. "AMD EPYC, PTI
// without PCID": with PTI and no PCID every system call flushes the process's TLB, so a
// server's cost per request follows the memory it touches between calls as much as the calls
// themselves, and ratios differ from machines without it.
std::string cpu_description();

// Restricts `pid` (0: this process) to one CPU, or lets it run anywhere with cpu < 0. Children
// inherit the mask at fork. Latency is compared only between runs with the same placement: a
// wake-up on the same CPU and one on another CPU differ by tens of microseconds on a VM.
void pin(pid_t pid, int cpu);
int cpu_count();

// CPU time a process has used so far, in seconds: the total from /proc/PID/schedstat (exact),
// user and system from /proc/PID/stat (sampled at the clock tick).
struct CpuTime {
  double total = 0, user = 0, sys = 0;
  CpuTime operator-(const CpuTime& o) const {
    return {total - o.total, user - o.user, sys - o.sys};
  }
  CpuTime& operator+=(const CpuTime& o) {
    total += o.total;
    user += o.user;
    sys += o.sys;
    return *this;
  }
};
CpuTime cpu_time(pid_t pid);

}  // namespace pbbench
