// The ephemeral-port guard: keeps reserved and pool ports in the kernel's
// ip_local_reserved_ports (see broker/core/port_set.h for the merge rules), and remembers in
// the state dir which entries the daemon added, so that a daemon restarted after a crash still
// takes back exactly its own.
#pragma once

#include <string>
#include <vector>

#include "broker/core/policy.h"
#include "broker/service/notice.h"

namespace portbroker::broker {

class Guard {
 public:
  explicit Guard(std::string state_dir) : state_dir_(std::move(state_dir)) {}

  // Makes the sysctl hold `wanted` (plus whatever others put there). Returns what the daemon
  // should log: the change, failures, and reserved ports the kernel may still hand out.
  Notices apply(const std::vector<PortRange>& wanted, const std::vector<Reservation>& reservations);
  // Takes back every entry the daemon added.
  Notices remove();
  // Port ranges the daemon put into ip_local_reserved_ports.
  size_t entries() const { return added_.size(); }

 private:
  std::string state_dir_;
  std::vector<PortRange> added_;  // what we put into ip_local_reserved_ports
  bool loaded_ = false;
};

}  // namespace portbroker::broker
