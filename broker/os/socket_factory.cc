#include "broker/os/socket_factory.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace portbroker::broker {

namespace {

Error sys_error(ErrorCode code, const SocketSpec& spec, uint16_t port, const std::string& what,
                int err) {
  return errno_error(code, format_endpoint(spec.protocol, spec.address, port) + ": " + what, err);
}

bool set_int(SysCalls& sys, int fd, int level, int name, int value) {
  return sys.setsockopt(fd, level, name, &value, sizeof(value)) == 0;
}

}  // namespace

bool is_dual_stack(const SocketSpec& spec, bool bindv6only_default) {
  if (spec.address.family != AF_INET6 || !spec.address.is_any()) return false;
  return !spec.options.v6only.value_or(bindv6only_default);
}

namespace {

// `late`: only the options that still work on a bound (or listening) socket.
Result<void> apply_options(SysCalls& sys, int fd, const SocketSpec& spec, bool late) {
  const bool tcp = spec.protocol == Protocol::kTcp;
  const auto& o = spec.options;
  struct Opt {
    bool wanted;
    bool before_bind;
    int level, name, value;
    const char* label;
  };
  // Servers expect SO_REUSEADDR on TCP listeners (restart while old connections linger in
  // TIME_WAIT); it never lets two listeners share a port.
  const bool v6 = spec.address.family == AF_INET6;
  const Opt opts[] = {
      {o.reuseaddr.value_or(tcp), true, SOL_SOCKET, SO_REUSEADDR, 1, "reuseaddr"},
      {spec.mode == Mode::kReuseport, true, SOL_SOCKET, SO_REUSEPORT, 1, "reuseport"},
      {o.v6only.has_value(), true, IPPROTO_IPV6, IPV6_V6ONLY, o.v6only.value_or(false), "v6only"},
      {o.freebind.value_or(false), true, v6 ? IPPROTO_IPV6 : IPPROTO_IP,
       v6 ? IPV6_FREEBIND : IP_FREEBIND, 1, "freebind"},
      {o.keepalive.has_value(), false, SOL_SOCKET, SO_KEEPALIVE, o.keepalive.value_or(false),
       "keepalive"},
      {o.rcvbuf.has_value(), false, SOL_SOCKET, SO_RCVBUF, o.rcvbuf.value_or(0), "rcvbuf"},
      {o.sndbuf.has_value(), false, SOL_SOCKET, SO_SNDBUF, o.sndbuf.value_or(0), "sndbuf"},
      {o.defer_accept.has_value(), false, IPPROTO_TCP, TCP_DEFER_ACCEPT, o.defer_accept.value_or(0),
       "defer_accept"},
      {o.fastopen.has_value(), false, IPPROTO_TCP, TCP_FASTOPEN, o.fastopen.value_or(0),
       "fastopen"},
  };
  for (const Opt& opt : opts) {
    if (!opt.wanted || (late && opt.before_bind)) continue;
    if (!set_int(sys, fd, opt.level, opt.name, opt.value)) {
      return sys_error(ErrorCode::kInvalidOption, spec, spec.port,
                       std::string("cannot set ") + opt.label, errno);
    }
  }
  return {};
}

}  // namespace

Result<void> apply_late_options(SysCalls& sys, int fd, const SocketSpec& spec) {
  if (auto r = apply_options(sys, fd, spec, true); !r) return r;
  // listen() on a listening socket only changes its backlog.
  if (spec.protocol == Protocol::kTcp &&
      sys.listen(fd, spec.options.backlog.value_or(SOMAXCONN)) != 0) {
    return sys_error(ErrorCode::kInternal, spec, spec.port, "listen failed", errno);
  }
  return {};
}

namespace {

// socket() with the fs ids switched to `owner`'s, and always switched back, errno kept. No switch
// when they are the daemon's own already (a root client of a root daemon): each setfsuid or
// setfsgid call prepares a new set of credentials even when nothing changes.
int socket_as(SysCalls& sys, int domain, int type, std::optional<OwnerIds> owner) {
  static const uid_t self_uid = ::geteuid();
  static const gid_t self_gid = ::getegid();
  if (!owner || (owner->uid == self_uid && owner->gid == self_gid)) {
    return sys.socket(domain, type, 0);
  }
  // Changing the fs ids clears the process's dumpable flag, and with it ptrace by the daemon's
  // own tools (LeakSanitizer's exit check hangs without it): put back what it was at start.
  static const int dumpable = ::prctl(PR_GET_DUMPABLE);
  const int old_gid = sys.set_fsgid(owner->gid);
  const int old_uid = sys.set_fsuid(owner->uid);
  const int fd = sys.socket(domain, type, 0);
  const int e = errno;
  sys.set_fsuid(static_cast<uid_t>(old_uid));
  sys.set_fsgid(static_cast<gid_t>(old_gid));
  if (dumpable == 1 &&
      (owner->uid != static_cast<uid_t>(old_uid) || owner->gid != static_cast<gid_t>(old_gid))) {
    (void)::prctl(PR_SET_DUMPABLE, 1);
  }
  errno = e;
  return fd;
}

}  // namespace

Result<UniqueFd> make_unbound_socket(SysCalls& sys, const SocketSpec& spec,
                                     std::optional<OwnerIds> owner) {
  const bool tcp = spec.protocol == Protocol::kTcp;
  UniqueFd fd(
      socket_as(sys, spec.address.family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, owner));
  if (!fd) {
    int e = errno;
    ErrorCode code = (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
                         ? ErrorCode::kResourceExhausted
                         : ErrorCode::kAddressUnavailable;
    return sys_error(code, spec, spec.port, "cannot create socket", e);
  }
  if (auto r = apply_options(sys, fd.get(), spec, false); !r) return r.error();
  const auto& o = spec.options;
  if (!o.device.empty() && sys.setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE, o.device.data(),
                                          static_cast<socklen_t>(o.device.size())) != 0) {
    int e = errno;
    return sys_error(e == ENODEV ? ErrorCode::kAddressUnavailable : ErrorCode::kInvalidOption, spec,
                     spec.port, "cannot bind to device '" + o.device + "'", e);
  }
  return fd;
}

Result<void> bind_socket(SysCalls& sys, int fd, const SocketSpec& spec, uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len;
  if (spec.address.family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, spec.address.bytes.data(), 4);
    len = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    std::memcpy(&sin6->sin6_addr, spec.address.bytes.data(), 16);
    len = sizeof(sockaddr_in6);
  }
  if (sys.bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int e = errno;
    switch (e) {
      case EADDRINUSE:
        return make_error(ErrorCode::kInUseOutside,
                          format_endpoint(spec.protocol, spec.address, port) +
                              " is in use by a process outside the broker");
      case EADDRNOTAVAIL:
        return make_error(ErrorCode::kAddressUnavailable,
                          format_endpoint(spec.protocol, spec.address, port) + ": address " +
                              spec.address.to_string() +
                              " is not assigned to any local interface (freebind allows it)");
      case EACCES:
        return sys_error(ErrorCode::kPermissionDenied, spec, port,
                         "the daemon itself may not bind this port (does it have "
                         "CAP_NET_BIND_SERVICE?)",
                         e);
      default:
        return sys_error(ErrorCode::kInternal, spec, port, "bind failed", e);
    }
  }
  return {};
}

Result<void> bind_and_listen(SysCalls& sys, int fd, const SocketSpec& spec, uint16_t port) {
  if (auto bound = bind_socket(sys, fd, spec, port); !bound) return bound;
  if (spec.protocol == Protocol::kTcp) {
    if (sys.listen(fd, spec.options.backlog.value_or(SOMAXCONN)) != 0) {
      int e = errno;
      return sys_error(e == EADDRINUSE ? ErrorCode::kInUseOutside : ErrorCode::kInternal, spec,
                       port, "listen failed", e);
    }
  }
  return {};
}

Result<UniqueFd> make_bound_socket(SysCalls& sys, const SocketSpec& spec, uint16_t port,
                                   std::optional<OwnerIds> owner) {
  auto fd = make_unbound_socket(sys, spec, owner);
  if (!fd) return fd;
  if (auto r = bind_and_listen(sys, fd->get(), spec, port); !r) return r.error();
  return fd;
}

}  // namespace portbroker::broker
