// Harness, lease holders: child processes that acquire through the client library and then
// serve or hold their lease on the parent's command.
#pragma once

#include <cstdint>
#include <string>

#include "harness_child.h"
#include "harness_daemon.h"
#include "portbroker/result.hpp"

namespace pbtest {

// What one acquire in a child process gave.
struct AcquireOutcome {
  bool ok = false;
  portbroker::ErrorCode code = portbroker::ErrorCode::kOk;
  std::string message;      // the daemon's message on failure
  uint16_t port = 0;        // the lease's port
  uint16_t bound_port = 0;  // getsockname() of the granted fd
  uint64_t id = 0;
  std::string describe() const;
};

// A child process (comm `opts.name`, default "pbholder") that connects to `d`, acquires `spec`,
// reports the outcome, then obeys lines from the parent:
//   "exit" (or EOF)  returns 0, releasing everything as the process exits;
//   "accept NAME"    accepts one connection (blocking), reads a line, answers "NAME", closes it
//                    and reports "accepted";
//   "serve NAME"     answers every connection with "NAME" until "exit".
//   "close"          closes its copy of the socket (keeping the session) and reports "closed".
// With `wait_for_go` it connects first and acquires only once the parent sends "go" (for
// concurrent acquires); read its outcome with read_outcome().
Child start_holder(const Daemon& d, const std::string& spec, SpawnOptions opts = {},
                   bool wait_for_go = false);
AcquireOutcome read_outcome(Child& holder);

struct Holder {
  Child child;
  AcquireOutcome lease;
};
// start_holder + read_outcome, REQUIRing the grant.
Holder spawn_holder(const Daemon& d, const std::string& spec, SpawnOptions opts = {});
// Acquires `spec` in a short-lived child process and returns what happened.
AcquireOutcome acquire_in_child(const Daemon& d, const std::string& spec, SpawnOptions opts = {});

// A child (comm `opts.name`, as `opts.uid` when set) that binds 127.0.0.1:`port` outside the
// broker (SOCK_STREAM listens) and holds it until its input closes. REQUIREs the bind.
Child start_outside(uint16_t port, int type, const SpawnOptions& opts);

}  // namespace pbtest
