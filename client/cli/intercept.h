// `portbroker exec --intercept`: the preload library for dynamic binaries (found and put in
// LD_PRELOAD) and, for what bypasses libc, a seccomp user-notification filter on bind(2) with
// a supervisor that answers it from the broker.
#pragma once

#include <portbroker/client.hpp>
#include <string>

namespace portbroker::cli {

struct InterceptOptions {
  bool enabled = false;
  std::string pass_loopback;  // "PORT[-PORT][,...]": loopback ports left to the kernel
  std::string linger;         // seconds each intercepted lease lingers; empty: none
};

// Run by `exec` just before it execs CMD, with the client whose session CMD inherits:
// sets LD_PRELOAD and the environment the library reads, forks the supervisor (which asks
// the broker on that same session, so CMD is the leases' holder) and installs the filter in
// this process. A kernel without user notification leaves only the preload library at work,
// said in one line on stderr. Fails only when the preload library cannot be found.
Result<void> start_intercept(Client& client, const std::string& socket_path,
                             const InterceptOptions& options);

}  // namespace portbroker::cli
