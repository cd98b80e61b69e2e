// Who is on the other end of a control connection, and what the daemon may know of a process:
// the kernel's word only (SO_PEERCRED, a pidfd), never anything the peer says.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

struct PeerIdentity {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups at connect time (SO_PEERGROUPS)
  // Pins the process: SO_PEERPIDFD where the kernel has it, else pidfd_open re-checked against
  // SO_PEERCRED so that a recycled pid is never taken for the peer. Invalid when neither works.
  UniqueFd pidfd;
};

Result<PeerIdentity> read_peer_identity(int conn);

// /proc/PID/comm, "" when unreadable.
std::string read_comm(pid_t pid);
// /proc/PID/cgroup's answer: the unified-hierarchy path ("0::/system.slice/foo.service"); on a
// hybrid host where that is "/", the name=systemd hierarchy's path when it says more; else the
// first line's path.
std::string read_cgroup(pid_t pid);
std::string cgroup_from_proc(const std::string& proc_cgroup);
// Whether the process a pidfd pins is still alive.
bool pidfd_alive(int pidfd);
// Open descriptors of this process.
int count_open_fds();

// Wall-clock milliseconds since the epoch.
int64_t unix_now_ms();
// 32 random hex digits; "" when the kernel has no randomness to give.
std::string new_token();

}  // namespace portbroker::broker
