// The control socket's file: where it may live, and the listening socket itself.
#pragma once

#include <string>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

// Creates the socket's directory if needed and refuses unsafe ones: the directory a symlink,
// or any directory from / down to it (as written and as resolved) owned by a user other than
// root or the daemon's, or writable by others without the sticky bit; the error names the
// directory. Refuses a symlink or non-socket at `path`; removes the socket file of a dead daemon
// (then returns true); refuses to start when any process answers there, naming it (pid, uid,
// command, by SO_PEERCRED).
Result<bool> prepare_socket_path(const std::string& path);

// A SOCK_SEQPACKET socket bound at `path` (mode 0666: anyone may connect; what a caller may do
// is decided by policy on its kernel identity), listening, non-blocking, close-on-exec.
Result<UniqueFd> listen_control_socket(const std::string& path, int backlog);

}  // namespace portbroker::broker
