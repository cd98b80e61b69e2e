#include "broker/os/sockdiag.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "broker/os/files.h"
#include "broker/os/proc_fds.h"
#include "portbroker/fd.hpp"

namespace portbroker::broker {

namespace {

// The kernel's socket states (include/net/tcp_states.h); UDP reuses them.
enum : uint8_t {
  kEstablished = 1,
  kSynSent = 2,
  kSynRecv = 3,
  kFinWait1 = 4,
  kFinWait2 = 5,
  kTimeWait = 6,
  kClose = 7,
  kCloseWait = 8,
  kLastAck = 9,
  kListen = 10,
  kClosing = 11,
  kNewSynRecv = 12,
  kBoundInactive = 13,  // Linux 6.8+: bound, never listened; older kernels ignore the bit
};

const char* state_name(uint8_t state) {
  switch (state) {
    case kEstablished:
      return "ESTAB";
    case kSynSent:
      return "SYN-SENT";
    case kSynRecv:
    case kNewSynRecv:
      return "SYN-RECV";
    case kFinWait1:
      return "FIN-WAIT-1";
    case kFinWait2:
      return "FIN-WAIT-2";
    case kTimeWait:
      return "TIME-WAIT";
    case kClose:
    case kBoundInactive:
      return "UNCONN";
    case kCloseWait:
      return "CLOSE-WAIT";
    case kLastAck:
      return "LAST-ACK";
    case kListen:
      return "LISTEN";
    case kClosing:
      return "CLOSING";
    default:
      return "UNKNOWN";
  }
}

bool holds_for_bind(const PortHolder& h) { return h.state == "LISTEN" || h.state == "UNCONN"; }

// The ports a dump asks for: sorted, no duplicates.
using Ports = std::vector<uint16_t>;

bool wanted_port(const Ports& ports, uint16_t port) {
  return std::binary_search(ports.begin(), ports.end(), port);
}

// The kernel runs this filter on every socket of the dump, so only sockets on ports from the
// lowest to the highest wanted cross into userspace. S_GE + S_LE rather than S_EQ: S_EQ needs
// Linux 4.16. A failed test jumps past the end (remaining length + 4), which the kernel reads
// as "reject".
std::vector<uint8_t> dump_request(int family, Protocol protocol, const Ports& ports,
                                  uint32_t states, uint32_t seq) {
  const inet_diag_bc_op ops[4] = {
      {INET_DIAG_BC_S_GE, 8, 16 + 4},
      {0, 0, ports.front()},
      {INET_DIAG_BC_S_LE, 8, 8 + 4},
      {0, 0, ports.back()},
  };
  inet_diag_req_v2 req{};
  req.sdiag_family = static_cast<uint8_t>(family);
  req.sdiag_protocol = protocol == Protocol::kUdp ? IPPROTO_UDP : IPPROTO_TCP;
  req.idiag_states = states;

  const size_t attr_len = NLA_HDRLEN + sizeof(ops);
  const size_t total = NLMSG_LENGTH(sizeof(req)) + NLA_ALIGN(attr_len);
  std::vector<uint8_t> buf(total, 0);
  nlmsghdr nlh{};
  nlh.nlmsg_len = static_cast<uint32_t>(total);
  nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh.nlmsg_seq = seq;
  nlattr attr{};
  attr.nla_len = static_cast<uint16_t>(attr_len);
  attr.nla_type = INET_DIAG_REQ_BYTECODE;
  uint8_t* p = buf.data();
  std::memcpy(p, &nlh, sizeof(nlh));
  p += NLMSG_HDRLEN;
  std::memcpy(p, &req, sizeof(req));
  p += NLMSG_ALIGN(sizeof(req));
  std::memcpy(p, &attr, sizeof(attr));
  p += NLA_HDRLEN;
  std::memcpy(p, ops, sizeof(ops));
  return buf;
}

IpAddress address_from(int family, const uint32_t (&words)[4]) {
  IpAddress a;
  a.family = family;
  std::memcpy(a.bytes.data(), words, family == AF_INET ? 4 : 16);
  return a;
}

Result<void> send_to_kernel(int nl, const std::vector<uint8_t>& request) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  ssize_t sent;
  do {
    sent = ::sendto(nl, request.data(), request.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
                    sizeof(kernel));
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return errno_error(ErrorCode::kInternal, "sock_diag request", errno);
  return {};
}

// The next part of the dump into `buf`; returns its length.
Result<size_t> receive_from_kernel(int nl, std::vector<char>& buf) {
  for (;;) {
    sockaddr_nl from{};
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof(from);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = ::recvmsg(nl, &mh, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(ErrorCode::kInternal, "sock_diag reply", errno);
    if (mh.msg_flags & MSG_TRUNC)
      return make_error(ErrorCode::kInternal, "sock_diag reply truncated");
    if (from.nl_pid != 0) continue;  // only the kernel speaks for the kernel
    return static_cast<size_t>(n);
  }
}

enum class DumpStep { kMore, kDone };

// A dump that failed midway reports the error in its NLMSG_DONE.
Result<DumpStep> dump_done(const nlmsghdr* h) {
  if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
    int err = 0;
    std::memcpy(&err, NLMSG_DATA(h), sizeof(err));
    if (err < 0) return errno_error(ErrorCode::kInternal, "sock_diag dump", -err);
  }
  return DumpStep::kDone;
}

Result<DumpStep> dump_refused(const nlmsghdr* h, int family, Protocol protocol) {
  if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) {
    return make_error(ErrorCode::kInternal, "sock_diag: short error message");
  }
  const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
  if (e->error == 0) return DumpStep::kMore;
  int err = -e->error;
  if (family == AF_INET6 && err == EAFNOSUPPORT) return DumpStep::kDone;  // IPv6 disabled: none
  if (err == ENOENT) {
    return make_error(ErrorCode::kInternal,
                      std::string("socket diagnostics for ") + protocol_name(protocol) +
                          " are unavailable (is the " + protocol_name(protocol) +
                          "_diag kernel module loaded?)");
  }
  return errno_error(ErrorCode::kInternal, "sock_diag dump", err);
}

std::optional<PortHolder> holder_from(const nlmsghdr* h, Protocol protocol, const Ports& ports) {
  if (h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) return std::nullopt;
  const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
  if (m->idiag_family != AF_INET && m->idiag_family != AF_INET6) return std::nullopt;
  // The bytecode already filtered to the range; checking again costs nothing and survives a
  // kernel that ignored it.
  const uint16_t port = ntohs(m->id.idiag_sport);
  if (!wanted_port(ports, port)) return std::nullopt;
  PortHolder holder;
  holder.protocol = protocol;
  holder.address = address_from(m->idiag_family, m->id.idiag_src);
  holder.port = port;
  if (m->id.idiag_dport != 0) {
    holder.peer = address_from(m->idiag_family, m->id.idiag_dst);
    holder.peer_port = ntohs(m->id.idiag_dport);
  }
  holder.state = state_name(m->idiag_state);
  holder.uid = m->idiag_uid;
  holder.inode = m->idiag_inode;
  return holder;
}

Result<DumpStep> read_dump_message(const nlmsghdr* h, int family, Protocol protocol,
                                   const Ports& ports, std::vector<PortHolder>& out) {
  switch (h->nlmsg_type) {
    case NLMSG_DONE:
      return dump_done(h);
    case NLMSG_ERROR:
      return dump_refused(h, family, protocol);
    case SOCK_DIAG_BY_FAMILY:
      if (auto holder = holder_from(h, protocol, ports)) out.push_back(std::move(*holder));
      break;
    default:
      break;
  }
  return DumpStep::kMore;
}

// One SOCK_DIAG_BY_FAMILY dump for one address family, appended to `out`.
Result<void> dump_family(int nl, int family, Protocol protocol, const Ports& ports,
                         HolderScope scope, uint32_t seq, std::vector<PortHolder>& out) {
  uint32_t states = ~0u;
  if (protocol == Protocol::kTcp && scope == HolderScope::kBound) {
    states = (1u << kListen) | (1u << kClose) | (1u << kBoundInactive);
  }
  if (auto sent = send_to_kernel(nl, dump_request(family, protocol, ports, states, seq)); !sent) {
    return sent.error();
  }
  // Dumps arrive in parts of up to a page or two each; 64 KiB never truncates one.
  std::vector<char> buf(64 * 1024);
  for (;;) {
    auto received = receive_from_kernel(nl, buf);
    if (!received) return received.error();
    int len = static_cast<int>(received.value());
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len);
         h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue;
      auto step = read_dump_message(h, family, protocol, ports, out);
      if (!step) return step.error();
      if (step.value() == DumpStep::kDone) return {};
    }
  }
}

std::string read_small_file_at(int dirfd, const char* name) {
  UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  char buf[4096];
  std::string out;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > 64 * 1024) break;
  }
  return out;
}

SocketOwner describe_process(pid_t pid, int pid_dir) {
  SocketOwner owner;
  owner.pid = pid;
  owner.comm = read_small_file_at(pid_dir, "comm");
  if (!owner.comm.empty() && owner.comm.back() == '\n') owner.comm.pop_back();
  // "Uid:\treal\teffective\tsaved\tfs"
  std::string status = read_small_file_at(pid_dir, "status");
  size_t at = status.find("\nUid:");
  if (at != std::string::npos) {
    std::string_view rest(status);
    rest.remove_prefix(at + 5);
    for (int field = 0; field < 2; ++field) {
      rest.remove_prefix(std::min(rest.find_first_not_of(" \t"), rest.size()));
      size_t end = std::min(rest.find_first_of(" \t\n"), rest.size());
      if (field == 1) {
        if (auto v = parse_decimal(rest.substr(0, end))) owner.uid = static_cast<uint32_t>(*v);
      }
      rest.remove_prefix(end);
    }
  }
  return owner;
}

// One pass over the fds of every process for every wanted inode at once. Processes come and
// go while we read, and some may not be ours to look at: both are skipped, not errors.
Result<void> attach_processes(std::vector<PortHolder>& holders) {
  std::unordered_map<uint64_t, std::vector<size_t>> wanted;
  for (size_t i = 0; i < holders.size(); ++i)
    if (holders[i].inode != 0) wanted[holders[i].inode].push_back(i);
  if (wanted.empty()) return {};

  Dir proc = open_dir_at(AT_FDCWD, "/proc");
  if (!proc) return errno_error(ErrorCode::kInternal, "opening /proc", errno);
  while (dirent* pe = ::readdir(proc.get())) {
    auto pid = parse_decimal(pe->d_name);
    if (!pid) continue;
    UniqueFd pid_dir(::openat(::dirfd(proc.get()), pe->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!pid_dir) continue;
    std::optional<SocketOwner> owner;
    for_each_socket_fd(pid_dir.get(), [&](int, uint64_t inode) {
      auto it = wanted.find(inode);
      if (it == wanted.end()) return true;
      if (!owner) owner = describe_process(static_cast<pid_t>(*pid), pid_dir.get());
      for (size_t i : it->second) {
        auto& procs = holders[i].processes;
        // The same socket on several fds of one process is still one holder.
        if (procs.empty() || procs.back().pid != owner->pid) procs.push_back(*owner);
      }
      return true;
    });
  }
  return {};
}

}  // namespace

Result<std::vector<SocketOwner>> unix_peer_processes(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_error(ErrorCode::kInternal, "fstat", errno);
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return errno_error(ErrorCode::kInternal, "socket(NETLINK_SOCK_DIAG)", errno);
  struct {
    nlmsghdr h;
    unix_diag_req r;
  } req{};
  req.h.nlmsg_len = sizeof(req);
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST;
  req.h.nlmsg_seq = 1;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_ino = static_cast<uint32_t>(st.st_ino);
  req.r.udiag_show = UDIAG_SHOW_PEER;
  req.r.udiag_cookie[0] = req.r.udiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (::send(nl.get(), &req, sizeof(req), 0) < 0) {
    return errno_error(ErrorCode::kInternal, "unix socket diagnostics", errno);
  }
  alignas(nlmsghdr) char buf[8192];
  ssize_t n = ::recv(nl.get(), buf, sizeof(buf), 0);
  if (n < 0) return errno_error(ErrorCode::kInternal, "unix socket diagnostics", errno);
  PortHolder peer;
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<size_t>(n));
       h = NLMSG_NEXT(h, n)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
      return errno_error(ErrorCode::kInternal, "unix socket diagnostics", -err->error);
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
    const auto* m = static_cast<const unix_diag_msg*>(NLMSG_DATA(h));
    auto len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
    for (auto* a = reinterpret_cast<rtattr*>(const_cast<unix_diag_msg*>(m) + 1); RTA_OK(a, len);
         a = RTA_NEXT(a, len)) {
      if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
        uint32_t ino = 0;
        std::memcpy(&ino, RTA_DATA(a), sizeof(ino));
        peer.inode = ino;
      }
    }
  }
  if (peer.inode == 0) return std::vector<SocketOwner>{};
  std::vector<PortHolder> one{std::move(peer)};
  if (auto r = attach_processes(one); !r) return r.error();
  return std::move(one.front().processes);
}

Result<std::vector<PortHolder>> find_port_holders(Protocol protocol, uint16_t port,
                                                  HolderScope scope) {
  PortSelection one;
  (protocol == Protocol::kUdp ? one.udp : one.tcp).push_back(port);
  return find_port_holders(one, scope);
}

Result<std::vector<PortHolder>> find_port_holders(const PortSelection& selection,
                                                  HolderScope scope) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return errno_error(ErrorCode::kInternal, "socket(NETLINK_SOCK_DIAG)", errno);
  std::vector<PortHolder> holders;
  uint32_t seq = 1;
  for (Protocol protocol : {Protocol::kTcp, Protocol::kUdp}) {
    Ports ports = protocol == Protocol::kTcp ? selection.tcp : selection.udp;
    if (ports.empty()) continue;
    std::sort(ports.begin(), ports.end());
    ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
    for (int family : {AF_INET, AF_INET6}) {
      auto r = dump_family(nl.get(), family, protocol, ports, scope, seq++, holders);
      if (!r) return r.error();
    }
  }
  if (auto r = attach_processes(holders); !r) return r.error();
  std::stable_sort(holders.begin(), holders.end(), [](const PortHolder& a, const PortHolder& b) {
    bool ab = holds_for_bind(a), bb = holds_for_bind(b);
    if (ab != bb) return ab;
    return a.address.family < b.address.family;
  });
  return holders;
}

}  // namespace portbroker::broker
