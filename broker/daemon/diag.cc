// Diagnostics: `who` (who holds a port, brokered or not), `check` (what an admin should know
// before a restart), and the ephemeral-port guard that keeps reserved and pool ports out of
// the kernel's automatic source-port choice.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "broker/core/port_set.h"
#include "broker/daemon/server_internal.h"
#include "broker/os/files.h"
#include "broker/os/sockdiag.h"
#include "broker/os/sysctl.h"

namespace portbroker::broker {

namespace {

constexpr const char* kGuardStateFile = "guard.txt";
// `check` inspects at most this many ports of one reservation (a socket-diag dump each).
constexpr size_t kMaxCheckedPortsPerReservation = 64;

bool contains(const std::vector<PortRange>& ranges, uint16_t port) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const PortRange& r) { return r.contains(port); });
}

// Sockets on the port that are not the broker's own (its copies of leased or held sockets).
// Like ss(8) for a user, a caller other than root sees which processes hold a socket only when
// they are its own; of other users' sockets it sees the owning uid (what /proc/net shows).
std::vector<PortHolder> outside_holders(Protocol p, uint16_t port, HolderScope scope,
                                        uint32_t viewer_uid) {
  auto found = find_port_holders(p, port, scope);
  if (!found) {
    spdlog::warn("socket diagnostics failed: {}", found.error().message);
    return {};
  }
  const pid_t self = ::getpid();
  std::vector<PortHolder> out;
  for (PortHolder& h : *found) {
    bool ours = std::any_of(h.processes.begin(), h.processes.end(),
                            [&](const SocketOwner& o) { return o.pid == self; });
    if (ours) continue;
    if (viewer_uid != 0) {
      std::erase_if(h.processes, [&](const SocketOwner& o) { return o.uid != viewer_uid; });
    }
    out.push_back(std::move(h));
  }
  return out;
}

std::string describe_outside(const PortHolder& h) {
  std::string where = format_endpoint(h.protocol, h.address, h.port);
  std::string who;
  for (const SocketOwner& o : h.processes) {
    who += (who.empty() ? "" : ", ") + std::string("pid ") + std::to_string(o.pid) + " (" + o.comm +
           ", uid " + std::to_string(o.uid) + ")";
  }
  if (who.empty()) who = "a process of uid " + std::to_string(h.uid) + " (not shown to you)";
  return h.state + " " + where + " by " + who;
}

}  // namespace

std::string Server::outside_holders_text(Protocol p, uint16_t port, uint32_t viewer_uid) const {
  std::string who;
  for (const PortHolder& h : outside_holders(p, port, HolderScope::kBound, viewer_uid)) {
    who += (who.empty() ? ": " : "; ") + describe_outside(h);
  }
  return who;
}

void Server::apply_guard() {
  if (guard_state_loaded_ == false) {
    // Entries a previous run added (and could not remove: it crashed) are still ours.
    guard_state_loaded_ = true;
    if (auto text = read_whole_file(config_.state_dir + "/" + kGuardStateFile)) {
      if (auto ours = parse_port_list(*text)) guard_added_ = std::move(ours).value();
    }
  }
  auto wanted = policy_.guarded_ports();
  auto plan = apply_reserved_ports(guard_added_, wanted);
  if (!plan) {
    if (!wanted.empty()) {
      spdlog::warn("ephemeral-port guard not applied: {}", plan.error().message);
    }
  } else {
    if (plan->changed) {
      spdlog::info("ip_local_reserved_ports now {}", format_port_list(plan->value));
    }
    guard_added_ = plan->ours;
    if (!config_.state_dir.empty()) {
      auto saved = write_file_atomically(config_.state_dir, kGuardStateFile,
                                         format_port_list(guard_added_) + "\n");
      if (!saved) spdlog::warn("ephemeral-port guard state not saved: {}", saved.error().message);
    }
  }
  // Say which reserved ports the kernel may still hand out as a source port.
  auto range = read_local_port_range();
  auto reserved = read_reserved_ports();
  if (!range || !reserved) return;
  for (const Reservation& r : policy_.reservations) {
    auto open = unprotected_ports(r.ports, *reserved, *range);
    if (!open.empty()) {
      spdlog::warn(
          "reservation {}: ports {} are inside the ephemeral range {} and not protected; the "
          "kernel may hand them out as source ports",
          r.name, format_port_list(open), range->to_string());
    }
  }
}

void Server::remove_guard() {
  if (guard_added_.empty()) return;
  auto plan = apply_reserved_ports(guard_added_, {});
  if (!plan) {
    spdlog::warn("could not remove our ip_local_reserved_ports entries: {}", plan.error().message);
    return;
  }
  guard_added_.clear();
  if (!config_.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove(config_.state_dir + "/" + kGuardStateFile, ec);
  }
}

void Server::do_who(Session& s, wire::WhoRequest::Reader r, Reply& reply) {
  Protocol p = r.getProtocol() == wire::Protocol::UDP ? Protocol::kUdp : Protocol::kTcp;
  uint16_t port = r.getPort();
  if (port == 0) {
    return reply.error(make_error(ErrorCode::kBadRequest, "who needs a port from 1 to 65535"));
  }
  spdlog::debug("pid={} uid={} who {} {}", s.holder.pid, s.holder.uid, protocol_name(p), port);
  auto out = reply.root.initWho();
  out.setProtocol(ipc::protocol_to_wire(p));
  out.setPort(port);

  // A dual-stack wildcard overlaps every binding of the port, of either family.
  Endpoint any{p, IpAddress::parse("::").value(), port, true};
  std::vector<const Lease*> leases;
  for (uint64_t bid : registry_.overlapping(any)) {
    for (uint64_t id : registry_.find_binding(bid)->leases)
      leases.push_back(registry_.find_lease(id));
  }
  auto wl = out.initLeases(static_cast<unsigned>(leases.size()));
  for (size_t i = 0; i < leases.size(); ++i) {
    fill_lease(registry_, *leases[i], current_comm(*leases[i]), wl[static_cast<unsigned>(i)]);
  }

  // Bound and listening sockets, and connections whose source port this is (they block a bind
  // too), but not the lease holders' own accepted connections nor TIME-WAIT leftovers.
  std::vector<int> lease_pids;
  for (const Lease* l : leases) lease_pids.push_back(l->holder.pid);
  auto outside = outside_holders(p, port, HolderScope::kAll, s.holder.uid);
  std::erase_if(outside, [&](const PortHolder& h) {
    if (h.state == "LISTEN" || h.state == "UNCONN") return false;
    if (h.processes.empty()) return true;
    return std::any_of(h.processes.begin(), h.processes.end(), [&](const SocketOwner& o) {
      return std::find(lease_pids.begin(), lease_pids.end(), o.pid) != lease_pids.end();
    });
  });
  auto wo = out.initOutside(static_cast<unsigned>(outside.size()));
  for (size_t i = 0; i < outside.size(); ++i) {
    const PortHolder& h = outside[i];
    auto o = wo[static_cast<unsigned>(i)];
    o.setProtocol(ipc::protocol_to_wire(h.protocol));
    o.setAddress(ipc::address_bytes(h.address));
    o.setPort(h.port);
    o.setState(h.state);
    o.setUid(h.uid);
    if (!h.processes.empty()) {
      o.setPid(h.processes.front().pid);
      o.setUid(h.processes.front().uid);
      std::string comm = h.processes.front().comm;
      if (h.processes.size() > 1) comm += " +" + std::to_string(h.processes.size() - 1);
      o.setComm(comm);
    }
  }

  auto reservations = policy_.reservations_at(p, port);
  auto wr = out.initReservations(static_cast<unsigned>(reservations.size()));
  for (size_t i = 0; i < reservations.size(); ++i) {
    fill_reservation(*reservations[i], wr[static_cast<unsigned>(i)]);
  }
  auto pools = policy_.pools_at(p, port);
  auto wp = out.initPools(static_cast<unsigned>(pools.size()));
  for (size_t i = 0; i < pools.size(); ++i) wp.set(static_cast<unsigned>(i), pools[i]->name);

  if (auto range = read_local_port_range()) out.setInEphemeralRange(range->contains(port));
  if (auto reserved = read_reserved_ports()) out.setGuarded(contains(*reserved, port));
  if (auto it = held_.find((static_cast<uint32_t>(p) << 16) | port); it != held_.end()) {
    out.setHeld(std::any_of(it->second.sockets.begin(), it->second.sockets.end(),
                            [](const HeldSocket& h) { return !h.parked; }));
  }
}

void Server::do_check(const Session& s, Reply& reply) {
  const uint32_t viewer = s.holder.uid;
  std::vector<std::pair<std::string, std::string>> problems;
  for (const auto& line : policy_.lint()) problems.emplace_back("policy", line);

  auto range = read_local_port_range();
  auto reserved = read_reserved_ports();
  for (const Reservation& r : policy_.reservations) {
    size_t checked = 0;
    for (const PortRange& pr : r.ports) {
      for (uint32_t port = pr.first; port <= pr.last && checked < kMaxCheckedPortsPerReservation;
           ++port, ++checked) {
        for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
          if (!r.protocols.has(p)) continue;
          for (const PortHolder& h :
               outside_holders(p, static_cast<uint16_t>(port), HolderScope::kBound, viewer)) {
            problems.emplace_back("held-outside",
                                  "port " + std::to_string(port) + " of reservation " + r.name +
                                      " is held outside the broker: " + describe_outside(h));
          }
        }
      }
    }
    if (range && reserved) {
      auto open = unprotected_ports(r.ports, *reserved, *range);
      if (!open.empty()) {
        problems.emplace_back("unprotected",
                              "reservation " + r.name + ": ports " + format_port_list(open) +
                                  " are inside the ephemeral range " + range->to_string() +
                                  " and not in ip_local_reserved_ports; the kernel may hand them "
                                  "out as source ports");
      }
    }
  }
  for (const auto& [key, why] : hold_failures_) {
    auto p = static_cast<Protocol>(key >> 16);
    auto entry = held_.find(key);
    std::string name = entry == held_.end() ? "?" : entry->second.reservation;
    problems.emplace_back("not-held", std::string(protocol_name(p)) + " port " +
                                          std::to_string(key & 0xffff) + " of reservation " + name +
                                          " is not held (retrying): " + why);
  }
  for (const auto& line : leases_refused_by_policy()) problems.emplace_back("lease-refused", line);

  auto out = reply.root.initProblems(static_cast<unsigned>(problems.size()));
  for (size_t i = 0; i < problems.size(); ++i) {
    out[static_cast<unsigned>(i)].setKind(problems[i].first);
    out[static_cast<unsigned>(i)].setMessage(problems[i].second);
  }
}

}  // namespace portbroker::broker
