// What `exec --intercept` does with one bind(2), shared by the preload library (dynamic
// binaries) and the seccomp supervisor (static ones): which binds become broker requests, the
// socket spec that reproduces the app's socket, and how a refusal reaches the app.
#pragma once

#include <sys/socket.h>

#include <optional>
#include <portbroker/result.hpp>
#include <portbroker/spec.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace portbroker::intercept {

// The environment the preload library and the supervisor read (documented in README).
inline constexpr const char* kPassLoopbackEnv = "PORTBROKER_PASS_LOOPBACK";
// Seconds every intercepted lease lingers after its holder exits (`linger=` of a spec).
inline constexpr const char* kLingerEnv = "PORTBROKER_LINGER";

// Loopback ports an admin leaves to the kernel: binds of 127.0.0.0/8 or ::1 to these ports
// are not brokered. Written "PORT[-PORT][,...]".
struct PassList {
  std::vector<PortRange> ranges;

  static Result<PassList> parse(std::string_view text);
  static PassList from_env();  // $PORTBROKER_PASS_LOOPBACK; empty (and ignored) when invalid
  bool passes(const IpAddress& address, uint16_t port) const;
};

// The address a bind asks for, when it is one the broker serves: AF_INET or AF_INET6, a
// whole sockaddr. nullopt for AF_UNIX, netlink and anything malformed (the kernel answers
// those itself).
struct BindTarget {
  IpAddress address;
  uint16_t port = 0;
};
std::optional<BindTarget> bind_target(const sockaddr* addr, socklen_t len);

// The spec for binding socket `fd` (the app's, or the supervisor's duplicate of it) to
// `target`: TCP or UDP from the socket itself, and every option the app set before bind
// (SO_REUSEPORT -> reuseport mode, IPV6_V6ONLY, buffers, TCP_DEFER_ACCEPT, TCP_FASTOPEN,
// SO_BINDTODEVICE, SO_KEEPALIVE, IP_FREEBIND), and $PORTBROKER_LINGER. nullopt when the broker has
// no business with the socket: not TCP or UDP, another family than the address, already bound, or
// not a socket at all (the kernel then gives the app the error it would have given anyway).
std::optional<SocketSpec> spec_for_socket(int fd, const BindTarget& target);

// The errno the kernel itself would have given for a broker refusal: EADDRINUSE for a
// conflict, an outside holder or an empty pool, EACCES for policy, EADDRNOTAVAIL, ...
int errno_for(const Error& error);

// The one stderr line of a refusal, as `portbroker exec` prints it (with the newline).
std::string refusal_line(const Error& error);

}  // namespace portbroker::intercept
