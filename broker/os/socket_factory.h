// Creates the sockets the broker hands out: socket, options, bind, listen. Every fd is
// SOCK_CLOEXEC; every call goes through the SysCalls seam; every failure is a Result naming the
// endpoint and the reason.
#pragma once

#include <cstdint>
#include <optional>

#include "broker/os/syscalls.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

// Whom the kernel records as a socket's owner (its sk_uid: what SO_REUSEPORT's same-uid check
// and `ss -e` see). The broker creates a lease's socket as its holder's uid, and every member of
// a group as the group owner's uid, so the kernel's own isolation agrees with the registry even
// where the broker has forgotten a group (a restart without its journal).
struct OwnerIds {
  uint32_t uid = 0;
  uint32_t gid = 0;
};

// A socket with `spec`'s protocol, family and options applied, not yet bound. With `owner`, it
// is created with the fs ids switched to the owner's around socket() (this thread only), when
// the daemon may switch them (CAP_SETUID/CAP_SETGID); a daemon that may not creates its own.
Result<UniqueFd> make_unbound_socket(SysCalls& sys, const SocketSpec& spec,
                                     std::optional<OwnerIds> owner = std::nullopt);

// Binds `fd` to spec.address:port, no more; errors as bind_and_listen's.
Result<void> bind_socket(SysCalls& sys, int fd, const SocketSpec& spec, uint16_t port);

// Binds `fd` to spec.address:port and, for TCP, listens. On EADDRINUSE the error code is
// kInUseOutside (the caller knows the broker itself does not hold the port). The socket stays
// usable for another bind attempt after a failed bind.
Result<void> bind_and_listen(SysCalls& sys, int fd, const SocketSpec& spec, uint16_t port);

// For a socket bound earlier (a held reservation) and now handed to a lease: the options that
// still apply after bind, and the requested backlog.
Result<void> apply_late_options(SysCalls& sys, int fd, const SocketSpec& spec);

// Both of the above, for a fixed port.
Result<UniqueFd> make_bound_socket(SysCalls& sys, const SocketSpec& spec, uint16_t port,
                                   std::optional<OwnerIds> owner = std::nullopt);

// Whether an IPv6 wildcard socket on this host also accepts IPv4 (v6only off, explicitly or
// through net.ipv6.bindv6only).
bool is_dual_stack(const SocketSpec& spec, bool bindv6only_default);

}  // namespace portbroker::broker
