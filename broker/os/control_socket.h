// The control socket's file: where it may live, and the listening socket itself.
#pragma once

#include <string>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

// Creates the socket's directory if needed and refuses unsafe ones (a symlink, a directory
// others may write to without the sticky bit, one owned by another user); refuses a symlink
// or non-socket at `path`; removes the socket file of a dead daemon (then returns true);
// refuses to start when a live daemon answers there.
Result<bool> prepare_socket_path(const std::string& path);

// A SOCK_SEQPACKET socket bound at `path` (mode 0666: anyone may connect; what a caller may do
// is decided by policy on its kernel identity), listening, non-blocking, close-on-exec.
Result<UniqueFd> listen_control_socket(const std::string& path, int backlog);

}  // namespace portbroker::broker
