// Integration-test harness: runs the real portbrokerd inside the test process's private network
// namespace (entered by harness_main.cc before any test), so tests may use fixed ports and never
// touch the host's. Everything waits on real events (readiness datagram, pidfd, socket
// readiness, daemon round trips) with generous bounds; nothing sleeps.
//
// One header and one source file a section:
//   harness_files    scratch directories, files, the test process's fd-leak check
//   harness_child    forked children (lambdas and commands) with captured output
//   harness_daemon   the daemon under test and the CLI against it
//   harness_holder   child processes that acquire and hold leases
//   harness_net      sockets outside the broker
//   harness_raw      the wire protocol spoken without the client library
// What needs no test framework (scratch directory, forking, readiness, fd tables, the private
// network namespace) lives in tests/common/, shared with the benchmark.
#pragma once

#include <string>

#include "harness_child.h"
#include "harness_daemon.h"
#include "harness_files.h"
#include "harness_holder.h"
#include "harness_net.h"
#include "harness_raw.h"

namespace pbtest {

// ---- process set-up (harness_main.cc) -----------------------------------------------------------

// True when children may switch to another uid (the harness runs as real root). When the tests
// run as a normal user they live in a user namespace with only their own uid mapped.
bool can_switch_uid();

// Paths of the binaries under test.
std::string daemon_path();
std::string cli_path();
std::string example_path(const std::string& name);
std::string self_exe();  // this test binary, for the helper modes in harness_main.cc

}  // namespace pbtest
