#include "broker/service/guard.h"

#include <filesystem>

#include "broker/core/port_set.h"
#include "broker/os/files.h"
#include "broker/os/sysctl.h"

namespace portbroker::broker {

namespace {

constexpr const char* kGuardStateFile = "guard.txt";

}  // namespace

Notices Guard::apply(const std::vector<PortRange>& wanted,
                     const std::vector<Reservation>& reservations) {
  Notices out;
  if (!loaded_) {
    // Entries a previous run added (and could not remove: it crashed) are still ours.
    loaded_ = true;
    if (auto text = read_whole_file(state_dir_ + "/" + kGuardStateFile)) {
      if (auto ours = parse_port_list(*text)) added_ = std::move(ours).value();
    }
  }
  auto plan = apply_reserved_ports(added_, wanted);
  if (!plan) {
    if (!wanted.empty()) {
      out.push_back(
          Notice{Notice::kWarn, "ephemeral-port guard not applied: " + plan.error().message});
    }
  } else {
    if (plan->changed)
      out.push_back(
          Notice{Notice::kInfo, "ip_local_reserved_ports now " + format_port_list(plan->value)});
    added_ = plan->ours;
    if (!state_dir_.empty()) {
      auto saved =
          write_file_atomically(state_dir_, kGuardStateFile, format_port_list(added_) + "\n");
      if (!saved)
        out.push_back(Notice{Notice::kWarn,
                             "ephemeral-port guard state not saved: " + saved.error().message});
    }
  }
  // Say which reserved ports the kernel may still hand out as a source port.
  auto range = read_local_port_range();
  auto reserved = read_reserved_ports();
  if (!range || !reserved) return out;
  for (const Reservation& r : reservations) {
    auto open = unprotected_ports(r.ports, *reserved, *range);
    if (!open.empty()) {
      out.push_back(Notice{Notice::kWarn,
                           "reservation " + r.name + ": ports " + format_port_list(open) +
                               " are inside the ephemeral range " + range->to_string() +
                               " and not protected; the kernel may hand them out as source ports"});
    }
  }
  return out;
}

Notices Guard::remove() {
  Notices out;
  if (added_.empty()) return out;
  auto plan = apply_reserved_ports(added_, {});
  if (!plan) {
    out.push_back(Notice{Notice::kWarn, "could not remove our ip_local_reserved_ports entries: " +
                                            plan.error().message});
    return out;
  }
  added_.clear();
  if (!state_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove(state_dir_ + "/" + kGuardStateFile, ec);
  }
  return out;
}

}  // namespace portbroker::broker
