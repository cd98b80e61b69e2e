#include "client/intercept/plan.h"

#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace portbroker::intercept {

namespace {

bool is_loopback(const IpAddress& a) {
  if (a.family == AF_INET) return a.bytes[0] == 127;
  static constexpr std::array<uint8_t, 16> kLoopback6{0, 0, 0, 0, 0, 0, 0, 0,
                                                      0, 0, 0, 0, 0, 0, 0, 1};
  return a.family == AF_INET6 && a.bytes == kLoopback6;
}

std::optional<int> int_option(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (::getsockopt(fd, level, name, &v, &len) != 0 || len != sizeof(v)) return std::nullopt;
  return v;
}

bool flag_option(int fd, int level, int name) { return int_option(fd, level, name).value_or(0); }

// A fresh socket's SO_RCVBUF and SO_SNDBUF for (domain, type), learned once per process (a
// probe socket per bind cost five system calls). Both are never 0, so 0 means "not learned yet";
// a race learns it twice, harmlessly. The defaults follow net.core/net.ipv4 sysctls of the
// process's network namespace: one that changes them, or its namespace, after its first bind
// may have a buffer size it set equal to the old default missed, or one it did not set passed on.
struct BufferDefaults {
  int rcv = 0;
  int snd = 0;
};

std::optional<BufferDefaults> buffer_defaults(int domain, int type) {
  static std::array<std::atomic<uint64_t>, 4> learned{};  // {inet, inet6} x {stream, dgram}
  auto& slot = learned[(domain == AF_INET6 ? 2 : 0) + (type == SOCK_DGRAM ? 1 : 0)];
  uint64_t packed = slot.load(std::memory_order_relaxed);
  if (packed == 0) {
    int fresh = ::socket(domain, type | SOCK_CLOEXEC, 0);
    if (fresh < 0) return std::nullopt;
    auto rcv = int_option(fresh, SOL_SOCKET, SO_RCVBUF);
    auto snd = int_option(fresh, SOL_SOCKET, SO_SNDBUF);
    ::close(fresh);
    if (!rcv || !snd || *rcv <= 0 || *snd <= 0) return std::nullopt;
    packed =
        (static_cast<uint64_t>(static_cast<uint32_t>(*rcv)) << 32) | static_cast<uint32_t>(*snd);
    slot.store(packed, std::memory_order_relaxed);
  }
  return BufferDefaults{static_cast<int>(packed >> 32), static_cast<int>(packed & 0xffffffffu)};
}

// SO_RCVBUF / SO_SNDBUF as the app set them: the kernel reports twice what was set, so a
// value that differs from a fresh socket's default was set, and half of it is what to ask for.
void buffer_options(int fd, int domain, int type, SocketOptions& o) {
  auto defaults = buffer_defaults(domain, type);
  if (!defaults) return;
  auto rcv = int_option(fd, SOL_SOCKET, SO_RCVBUF);
  auto snd = int_option(fd, SOL_SOCKET, SO_SNDBUF);
  if (rcv && *rcv != defaults->rcv) o.rcvbuf = *rcv / 2;
  if (snd && *snd != defaults->snd) o.sndbuf = *snd / 2;
}

void tcp_options(int fd, SocketOptions& o) {
  if (flag_option(fd, SOL_SOCKET, SO_KEEPALIVE)) o.keepalive = true;
  if (int v = int_option(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT).value_or(0); v > 0) {
    o.defer_accept = std::min(v, 3600);
  }
  if (int v = int_option(fd, IPPROTO_TCP, TCP_FASTOPEN).value_or(0); v > 0) o.fastopen = v;
}

std::string bound_device(int fd) {
  char name[IFNAMSIZ + 1] = {};
  socklen_t len = IFNAMSIZ;
  if (::getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, &len) != 0) return {};
  return std::string(name, ::strnlen(name, IFNAMSIZ));
}

// The family of socket `fd` (AF_INET, AF_INET6, AF_UNIX, ...) and whether it is bound to a
// port already, from one getsockname; nullopt when it is not a socket.
struct Name {
  int family = AF_UNSPEC;
  bool bound = false;
};

std::optional<Name> socket_name(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
  Name n{ss.ss_family, false};
  if (n.family == AF_INET) n.bound = reinterpret_cast<sockaddr_in*>(&ss)->sin_port != 0;
  if (n.family == AF_INET6) n.bound = reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port != 0;
  return n;
}

}  // namespace

Result<PassList> PassList::parse(std::string_view text) {
  PassList out;
  const std::string whole(text);
  for (;;) {  // an empty item (",,", a trailing comma, "") is an error too
    size_t comma = text.find(',');
    auto item = text.substr(0, comma);
    auto range = parse_port_range(item);
    if (!range) {
      return make_error(ErrorCode::kBadRequest,
                        "bad loopback pass list '" + whole + "': " + range.error().message);
    }
    out.ranges.push_back(*range);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

PassList PassList::from_env() {
  const char* env = std::getenv(kPassLoopbackEnv);
  if (env == nullptr) return {};
  auto parsed = parse(env);
  return parsed ? std::move(parsed).value() : PassList{};
}

bool PassList::passes(const IpAddress& address, uint16_t port) const {
  if (!is_loopback(address)) return false;
  for (const auto& r : ranges) {
    if (r.contains(port)) return true;
  }
  return false;
}

std::optional<BindTarget> bind_target(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) return std::nullopt;
  BindTarget t;
  if (addr->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in in;
    std::memcpy(&in, addr, sizeof(in));
    t.address.family = AF_INET;
    std::memcpy(t.address.bytes.data(), &in.sin_addr, 4);
    t.port = ntohs(in.sin_port);
    return t;
  }
  if (addr->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 in6;
    std::memcpy(&in6, addr, sizeof(in6));
    // A link-local address needs its scope, which a spec cannot carry: the kernel binds it.
    if (in6.sin6_scope_id != 0) return std::nullopt;
    t.address.family = AF_INET6;
    std::memcpy(t.address.bytes.data(), &in6.sin6_addr, 16);
    t.port = ntohs(in6.sin6_port);
    return t;
  }
  return std::nullopt;
}

std::optional<SocketSpec> spec_for_socket(int fd, const BindTarget& target) {
  auto name = socket_name(fd);
  if (!name || name->family != target.address.family) return std::nullopt;
  auto type = int_option(fd, SOL_SOCKET, SO_TYPE);
  auto protocol = int_option(fd, SOL_SOCKET, SO_PROTOCOL);
  if (!type || !protocol) return std::nullopt;
  SocketSpec spec;
  if (*type == SOCK_STREAM && *protocol == IPPROTO_TCP) {
    spec.protocol = Protocol::kTcp;
  } else if (*type == SOCK_DGRAM && *protocol == IPPROTO_UDP) {
    spec.protocol = Protocol::kUdp;
  } else {
    return std::nullopt;
  }
  if (name->bound) return std::nullopt;
  const int domain = name->family;
  spec.address = target.address;
  spec.port = target.port;
  SocketOptions& o = spec.options;
  if (flag_option(fd, SOL_SOCKET, SO_REUSEPORT)) spec.mode = Mode::kReuseport;
  // Only a set SO_REUSEADDR is passed on: the broker turns it on for TCP anyway.
  if (flag_option(fd, SOL_SOCKET, SO_REUSEADDR)) o.reuseaddr = true;
  if (domain == AF_INET6) {
    o.v6only = flag_option(fd, IPPROTO_IPV6, IPV6_V6ONLY);
    if (flag_option(fd, IPPROTO_IPV6, IPV6_FREEBIND)) o.freebind = true;
  } else if (flag_option(fd, IPPROTO_IP, IP_FREEBIND)) {
    o.freebind = true;
  }
  buffer_options(fd, domain, *type, o);
  if (spec.protocol == Protocol::kTcp) tcp_options(fd, o);
  o.device = bound_device(fd);
  if (const char* linger = std::getenv(kLingerEnv)) {
    spec.linger = static_cast<uint32_t>(parse_decimal(linger, UINT32_MAX).value_or(0));
  }
  return spec;
}

int errno_for(const Error& error) {
  switch (error.code) {
    case ErrorCode::kConflict:
    case ErrorCode::kInUseOutside:
    case ErrorCode::kNoFreePort:
      return EADDRINUSE;
    case ErrorCode::kAddressUnavailable:
      return EADDRNOTAVAIL;
    case ErrorCode::kBadRequest:
    case ErrorCode::kInvalidOption:
      return EINVAL;
    case ErrorCode::kLimitExceeded:
    case ErrorCode::kResourceExhausted:
      return ENOBUFS;
    default:
      // Policy, and a broker that cannot be reached: the port is not the app's to take.
      return EACCES;
  }
}

std::string refusal_line(const Error& error) { return "portbroker exec: " + error.message + "\n"; }

}  // namespace portbroker::intercept
