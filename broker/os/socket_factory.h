// Creates the sockets the broker hands out: socket, options, bind, listen. Every fd is
// SOCK_CLOEXEC; every call goes through the SysCalls seam; every failure is a Result naming the
// endpoint and the reason.
#pragma once

#include "broker/os/syscalls.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

// A socket with `spec`'s protocol, family and options applied, not yet bound.
Result<UniqueFd> make_unbound_socket(SysCalls& sys, const SocketSpec& spec);

// Binds `fd` to spec.address:port and, for TCP, listens. On EADDRINUSE the error code is
// kInUseOutside (the caller knows the broker itself does not hold the port). The socket stays
// usable for another bind attempt after a failed bind.
Result<void> bind_and_listen(SysCalls& sys, int fd, const SocketSpec& spec, uint16_t port);

// For a socket bound earlier (a held reservation) and now handed to a lease: the options that
// still apply after bind, and the requested backlog.
Result<void> apply_late_options(SysCalls& sys, int fd, const SocketSpec& spec);

// Both of the above, for a fixed port.
Result<UniqueFd> make_bound_socket(SysCalls& sys, const SocketSpec& spec, uint16_t port);

// Whether an IPv6 wildcard socket on this host also accepts IPv4 (v6only off, explicitly or
// through net.ipv6.bindv6only).
bool is_dual_stack(const SocketSpec& spec, bool bindv6only_default);

}  // namespace portbroker::broker
