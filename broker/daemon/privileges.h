// Least privilege in the daemon process itself (not only in the unit): before it serves, the
// daemon keeps only the capabilities its configured features need (bounding set included), sets
// no_new_privs and installs a seccomp allow-list of the system calls it makes. A call outside
// the list is not fatal: it fails with ENOSYS and one line on stderr names it, so a rare path
// nobody thought of degrades to an error instead of killing every holder's broker.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "portbroker/result.hpp"

namespace portbroker::broker {

// What the daemon is about to do, as far as privileges go.
struct PrivilegeFeatures {
  bool root = false;   // euid 0: sockets are created with the holder's fsuid/fsgid
  bool guard = false;  // the policy's ephemeral-port guard writes ip_local_reserved_ports
};

struct NeededCapability {
  int cap;                // CAP_* number
  std::string why;        // the feature that needs it, for the log and the README
  bool optional = false;  // only makes a feature faster: its absence is not reported
};

// The capabilities `features` need, CAP_NET_BIND_SERVICE first.
std::vector<NeededCapability> needed_capabilities(const PrivilegeFeatures& features);

struct CapabilityOutcome {
  std::vector<std::string> kept;     // e.g. "cap_net_bind_service (bind ports below 1024)"
  std::vector<std::string> missing;  // needed but not in the permitted set: that feature fails
  bool bounding_dropped = false;     // false without CAP_SETPCAP (no_new_privs still holds)
};

// Leaves permitted = effective = `needed` (as far as the process has them), inheritable and
// ambient empty, and drops everything else from the bounding set. Must run before any other
// thread exists (capabilities are per thread). Then sets no_new_privs, so an exec (the upgrade)
// can never gain more than this.
Result<CapabilityOutcome> drop_privileges(const std::vector<NeededCapability>& needed);

// Installs the SIGSYS handler that turns a filtered call into ENOSYS plus a line on stderr.
// main() calls it first thing: an upgraded daemon runs under its predecessor's filter from its
// first instruction, and without the handler a filtered call would kill it.
Result<void> catch_filtered_syscalls();

// The system calls the daemon may make (names as libseccomp spells them).
const std::vector<const char*>& allowed_syscalls();

struct FilterOutcome {
  size_t syscalls = 0;     // how many the allow-list holds
  bool inherited = false;  // an upgraded daemon runs under its predecessor's (same) filter
};

// Installs the allow-list on every thread (needs no_new_privs or CAP_SYS_ADMIN). Any other call
// traps: the SIGSYS handler writes one line to stderr and makes the call return -ENOSYS. After
// an upgrade (exec) the filter is inherited: only the handler is installed again, so filters do
// not pile up one per upgrade.
Result<FilterOutcome> install_syscall_filter();

// Built with AddressSanitizer or UBSan (make test-asan).
bool sanitizer_build();

// How many calls the filter has refused in this process.
uint64_t syscall_violations();

}  // namespace portbroker::broker
