// "Who holds this port", for sockets the broker did not create: the kernel's socket
// diagnostics (NETLINK_SOCK_DIAG, what ss(8) uses) list the sockets on the port, and one pass
// over /proc/*/fd maps their inodes to processes. Like `ss -tuap sport = :PORT`, but for one
// port and without parsing anyone's output.
//
// Scope: the caller's network namespace (port conflicts are per namespace) and the processes
// its /proc shows. Without root (CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH) other users' fds are
// unreadable and their sockets come back with no processes.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

struct SocketOwner {
  pid_t pid = 0;
  std::string comm;  // /proc/PID/comm: at most 15 characters
  uint32_t uid = 0;  // the process's effective uid
};

struct PortHolder {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;  // local address; a wildcard for a socket bound to "any"
  uint16_t port = 0;
  IpAddress peer;  // remote end of a connected socket; family 0 when not connected
  uint16_t peer_port = 0;
  // ss(8)'s names: LISTEN, UNCONN (a bound UDP socket, or a bound-only TCP one), ESTAB,
  // TIME-WAIT, SYN-SENT, ...
  std::string state;
  uint32_t uid = 0;    // the socket's owner as the kernel recorded it at creation
  uint64_t inode = 0;  // 0 for kernel-held sockets (TIME-WAIT, half-open) that no process has
  // Every process with an fd on the socket (forked servers share one). Empty when inode is 0,
  // when the process is in another pid namespace, or when its fds are unreadable to us.
  std::vector<SocketOwner> processes;
};

enum class HolderScope {
  // Everything with the local port: also connections, whose local port is this one, because a
  // client connection that got the port as its ephemeral source port blocks a bind() too.
  kAll,
  // Only what holds the port for binding: TCP listeners and bound-only sockets, all UDP
  // sockets. What `portbroker who` shows first on a busy server port.
  kBound,
};

// TCP or UDP sockets, IPv4 and IPv6, whose local port is `port`: one netlink dump per address
// family, filtered to the port in the kernel (bytecode), then one /proc scan for all of them,
// done only when some socket has an inode. Ordered: listening/bound first, then by family.
// Errors: kInternal naming the failing step ("socket diagnostics for udp are unavailable" when
// the kernel lacks udp_diag).
// The processes that hold the other end of a connected Unix socket `fd` (one /proc scan): who
// really holds a session when the process that opened it has exited and left it to a child.
Result<std::vector<SocketOwner>> unix_peer_processes(int fd);

Result<std::vector<PortHolder>> find_port_holders(Protocol protocol, uint16_t port,
                                                  HolderScope scope = HolderScope::kAll);

// Many ports at once (`check`): one dump per protocol and address family, filtered in the
// kernel to the lowest..highest port asked for, and one /proc scan for all of them, however
// many ports. Ordered as above, listening/bound first.
struct PortSelection {
  std::vector<uint16_t> tcp;
  std::vector<uint16_t> udp;
};
Result<std::vector<PortHolder>> find_port_holders(const PortSelection& selection,
                                                  HolderScope scope = HolderScope::kAll);

}  // namespace portbroker::broker
