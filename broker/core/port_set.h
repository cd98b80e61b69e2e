// The ephemeral-port guard: keeps reserved ports and pools in the kernel's
// net.ipv4.ip_local_reserved_ports (which covers IPv6 too), so the kernel never picks them as
// an automatic source port (the SQL Server on 1433 that cannot start after a reboot because
// some client connection got 1433).
//
// The sysctl is shared with the admin and other tools, so the daemon merges into it, records
// which ports it added ("ours"), and later takes back exactly those, never a port that was
// there before it. Caveat: a port someone else adds while it is already ours cannot be told
// apart and leaves with ours.
//
// Pure: the sysctl files themselves are read and written by broker/os/sysctl.h.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "broker/core/policy.h"  // PortRange, normalize_ports
#include "portbroker/result.hpp"

namespace portbroker::broker {

// A port set throughout this file is a normalized list (normalize_ports): sorted, disjoint,
// non-adjacent. Every function here returns one, and accepts any list.

// The kernel's syntax: "1433,8080-8090", possibly empty, surrounding whitespace (the trailing
// newline) ignored. Ports 0-65535, as the kernel's bitmap allows. Result normalized.
Result<std::vector<PortRange>> parse_port_list(std::string_view text);
// The inverse, normalized first: "1433,8080-8090"; "" for no ports.
std::string format_port_list(std::vector<PortRange> ports);

std::vector<PortRange> port_set_union(std::span<const PortRange> a, std::span<const PortRange> b);
std::vector<PortRange> port_set_intersection(std::span<const PortRange> a,
                                             std::span<const PortRange> b);
// Ports of a that are not in b.
std::vector<PortRange> port_set_difference(std::span<const PortRange> a,
                                           std::span<const PortRange> b);

struct GuardPlan {
  std::vector<PortRange> value;  // what the sysctl should now say
  // The ports of `value` the daemon put there. Persist it (state dir) with the write, so that
  // a daemon restarted after a crash still knows what to take back.
  std::vector<PortRange> ours;
  bool changed = false;  // value differs from current: write it
};

// One step of the guard, for start (ours_before empty), reload (new wanted) and shutdown
// (wanted empty): keep every foreign entry of `current`, drop what we added and no longer
// want, add what we want and is missing.
GuardPlan plan_reserved_ports(std::span<const PortRange> current,
                              std::span<const PortRange> ours_before,
                              std::span<const PortRange> wanted);

// ip_local_port_range: "32768\t60999\n" (the kernel's spelling; any blanks accepted).
Result<PortRange> parse_local_port_range(std::string_view text);

// The wanted ports inside the ephemeral range that are not in ip_local_reserved_ports: the
// ones the kernel may still hand out as a source port (warn about each at start, and in
// `portbroker check`).
std::vector<PortRange> unprotected_ports(std::span<const PortRange> wanted,
                                         std::span<const PortRange> reserved_now,
                                         PortRange ephemeral);

}  // namespace portbroker::broker
