// The sysctl files the daemon reads and writes. They are per network namespace: tests exercise
// the real ones only inside a private one, or pass a plain file's path instead.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "broker/core/port_set.h"
#include "portbroker/result.hpp"

namespace portbroker::broker {

inline constexpr const char* kReservedPortsSysctl = "/proc/sys/net/ipv4/ip_local_reserved_ports";
inline constexpr const char* kLocalPortRangeSysctl = "/proc/sys/net/ipv4/ip_local_port_range";

Result<std::vector<PortRange>> read_reserved_ports(const std::string& path = kReservedPortsSysctl);
// One write(2) of the whole list: the kernel replaces the set on a write at offset 0. Refuses
// lists longer than a page (the kernel's limit for one write) with kInvalidOption.
Result<void> write_reserved_ports(std::span<const PortRange> ports,
                                  const std::string& path = kReservedPortsSysctl);
Result<PortRange> read_local_port_range(const std::string& path = kLocalPortRangeSysctl);

// Read, plan, and write when changed. Not atomic against another writer between the read and
// the write; the window is microseconds and the sysctl has no better interface.
Result<GuardPlan> apply_reserved_ports(std::span<const PortRange> ours_before,
                                       std::span<const PortRange> wanted,
                                       const std::string& path = kReservedPortsSysctl);

// net.ipv6.bindv6only of the daemon's network namespace.
bool read_bindv6only();

}  // namespace portbroker::broker
