// Diagnostics: `who` (who holds a port, brokered or not), `check` (what an admin should know
// before a restart) and the naming of outside holders in a refusal. Their /proc and sock_diag
// scans take milliseconds, so they run on libuv's thread pool (Server::defer): what they need
// of the daemon's state is copied on the loop first, and the reply is filled on the loop after.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>

#include "broker/core/port_set.h"
#include "broker/daemon/server_internal.h"
#include "broker/os/sockdiag.h"
#include "broker/os/sysctl.h"

namespace portbroker::broker {

namespace {

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

Error prefixed(const Error& e, size_t index, size_t count, const SocketSpec& spec) {
  if (count == 1) return e;
  std::string label = spec.name.empty() ? "" : " (" + spec.name + ")";
  return make_error(e.code, "socket " + std::to_string(index + 1) + " of " + std::to_string(count) +
                                label + ": " + e.message + "; nothing was leased");
}

std::string outside_holders_text(Protocol p, uint16_t port, uint32_t viewer_uid) {
  std::string who;
  for (const PortHolder& h : outside_holders(p, port, HolderScope::kBound, viewer_uid)) {
    who += (who.empty() ? ": " : "; ") + describe_outside(h);
  }
  return who;
}

// What `who` reports: the daemon's knowledge copied on the loop (the leases may end while the
// scan runs), then what the scan found.
struct WhoReport {
  Protocol protocol = Protocol::kTcp;
  uint16_t port = 0;
  std::vector<std::pair<Lease, Binding>> leases;
  std::vector<std::string> comms;
  std::vector<Reservation> reservations;
  std::vector<std::string> pools;
  bool held = false;
  // Off the loop.
  std::vector<PortHolder> outside;
  std::optional<bool> in_ephemeral_range, guarded;
};

void scan_who(WhoReport& who, uint32_t viewer) {
  // Bound and listening sockets, and connections whose source port this is (they block a bind
  // too), but not the lease holders' own accepted connections nor TIME-WAIT leftovers.
  std::vector<int> lease_pids;
  for (const auto& [l, b] : who.leases) lease_pids.push_back(l.holder.pid);
  who.outside = outside_holders(who.protocol, who.port, HolderScope::kAll, viewer);
  std::erase_if(who.outside, [&](const PortHolder& h) {
    if (h.state == "LISTEN" || h.state == "UNCONN") return false;
    if (h.processes.empty()) return true;
    return std::any_of(h.processes.begin(), h.processes.end(), [&](const SocketOwner& o) {
      return std::find(lease_pids.begin(), lease_pids.end(), o.pid) != lease_pids.end();
    });
  });
  if (auto range = read_local_port_range()) who.in_ephemeral_range = range->contains(who.port);
  if (auto reserved = read_reserved_ports()) who.guarded = contains(*reserved, who.port);
}

void fill_who(const WhoReport& who, wire::Reply::Builder root) {
  auto out = root.initWho();
  out.setProtocol(ipc::protocol_to_wire(who.protocol));
  out.setPort(who.port);
  auto wl = out.initLeases(static_cast<unsigned>(who.leases.size()));
  for (size_t i = 0; i < who.leases.size(); ++i) {
    ipc::lease_to_wire(lease_view(who.leases[i].first, &who.leases[i].second, who.comms[i]),
                       wl[static_cast<unsigned>(i)]);
  }
  auto wo = out.initOutside(static_cast<unsigned>(who.outside.size()));
  for (size_t i = 0; i < who.outside.size(); ++i) {
    const PortHolder& h = who.outside[i];
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
  auto wr = out.initReservations(static_cast<unsigned>(who.reservations.size()));
  for (size_t i = 0; i < who.reservations.size(); ++i) {
    ipc::reservation_to_wire(reservation_info(who.reservations[i]), wr[static_cast<unsigned>(i)]);
  }
  auto wp = out.initPools(static_cast<unsigned>(who.pools.size()));
  for (size_t i = 0; i < who.pools.size(); ++i) wp.set(static_cast<unsigned>(i), who.pools[i]);
  if (who.in_ephemeral_range) out.setInEphemeralRange(*who.in_ephemeral_range);
  if (who.guarded) out.setGuarded(*who.guarded);
  out.setHeld(who.held);
}

// What `check` reports: problems known on the loop, then those the scans find.
struct CheckReport {
  std::vector<Reservation> reservations;
  std::vector<std::pair<std::string, std::string>> problems;  // kind, message
  std::vector<std::pair<std::string, std::string>> later;     // known, listed after the scans
};

void scan_check(CheckReport& check, uint32_t viewer) {
  auto range = read_local_port_range();
  auto reserved = read_reserved_ports();
  for (const Reservation& r : check.reservations) {
    size_t checked = 0;
    for (const PortRange& pr : r.ports) {
      for (uint32_t port = pr.first; port <= pr.last && checked < kMaxCheckedPortsPerReservation;
           ++port, ++checked) {
        for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
          if (!r.protocols.has(p)) continue;
          for (const PortHolder& h :
               outside_holders(p, static_cast<uint16_t>(port), HolderScope::kBound, viewer)) {
            check.problems.emplace_back(
                "held-outside", "port " + std::to_string(port) + " of reservation " + r.name +
                                    " is held outside the broker: " + describe_outside(h));
          }
        }
      }
    }
    if (range && reserved) {
      auto open = unprotected_ports(r.ports, *reserved, *range);
      if (!open.empty()) {
        check.problems.emplace_back(
            "unprotected", "reservation " + r.name + ": ports " + format_port_list(open) +
                               " are inside the ephemeral range " + range->to_string() +
                               " and not in ip_local_reserved_ports; the kernel may hand them "
                               "out as source ports");
      }
    }
  }
  check.problems.insert(check.problems.end(), check.later.begin(), check.later.end());
}

}  // namespace

void Server::defer(Session& s, std::function<void()> work, std::function<void(Reply&)> done) {
  auto* d = new Deferred;
  d->req.data = d;
  d->server = this;
  d->session = s.id;
  d->work = std::move(work);
  d->done = std::move(done);
  s.deferred = true;
  ++deferred_in_flight_;
  uv_poll_start(&s.poll, UV_DISCONNECT, &Server::on_session_event);
  if (int rc = uv_queue_work(loop_, &d->req, &Server::on_deferred_work, &Server::on_deferred_done);
      rc != 0) {
    // No thread pool: do the work here rather than not at all.
    spdlog::warn("cannot queue work off the loop ({}); doing it inline", uv_strerror(rc));
    on_deferred_work(&d->req);
    on_deferred_done(&d->req, 0);
  }
}

void Server::on_deferred_work(uv_work_t* req) {
  auto* d = static_cast<Deferred*>(req->data);
  try {
    d->work();
  } catch (const std::exception& e) {  // bad_alloc: the reply says what it could
    spdlog::error("diagnostics failed: {}", e.what());
  }
}

void Server::on_deferred_done(uv_work_t* req, int /*status*/) {
  std::unique_ptr<Deferred> d(static_cast<Deferred*>(req->data));
  Server* self = d->server;
  --self->deferred_in_flight_;
  auto it = self->sessions_.find(d->session);
  if (it == self->sessions_.end()) return;  // the client left meanwhile
  Session& s = *it->second;
  s.deferred = false;
  try {
    Reply reply;
    d->done(reply);
    if (!self->send_reply(s, reply)) return;
    uv_poll_start(&s.poll, UV_READABLE | UV_DISCONNECT, &Server::on_session_event);
  } catch (const std::exception& e) {
    spdlog::error("pid={} uid={} session failed: {}", s.holder.pid, s.holder.uid, e.what());
    self->close_session(s);
  }
}

void Server::refuse_acquire(Session& s, const SocketSpec& spec, size_t index, size_t count,
                            const Error& e, Reply& reply) {
  auto finish = [this, pid = s.holder.pid, uid = s.holder.uid, spec, index, count](Error named,
                                                                                   Reply& out) {
    Error shown = prefixed(named, index, count, spec);
    spdlog::info("pid={} uid={} acquire {} refused: {}", pid, uid, format_socket_spec(spec),
                 shown.message);
    out.error(shown);
  };
  if (e.code != ErrorCode::kInUseOutside || spec.port == 0) return finish(e, reply);
  // Name who holds the port outside the broker: a scan, so off the loop.
  auto named = std::make_shared<Error>(e);
  defer(
      s,
      [named, p = spec.protocol, port = spec.port, uid = s.holder.uid] {
        named->message += outside_holders_text(p, port, uid);
      },
      [named, finish](Reply& out) { finish(*named, out); });
}

void Server::do_who(Session& s, wire::WhoRequest::Reader r, Reply& reply) {
  auto who = std::make_shared<WhoReport>();
  who->protocol = r.getProtocol() == wire::Protocol::UDP ? Protocol::kUdp : Protocol::kTcp;
  who->port = r.getPort();
  if (who->port == 0) {
    return reply.error(make_error(ErrorCode::kBadRequest, "who needs a port from 1 to 65535"));
  }
  spdlog::debug("pid={} uid={} who {} {}", s.holder.pid, s.holder.uid, protocol_name(who->protocol),
                who->port);
  const Registry& reg = service_.registry();
  // A dual-stack wildcard overlaps every binding of the port, of either family.
  Endpoint any{who->protocol, IpAddress::parse("::").value(), who->port, true};
  for (uint64_t bid : reg.overlapping(any)) {
    const Binding* b = reg.find_binding(bid);
    for (uint64_t id : b->leases) {
      const Lease* l = reg.find_lease(id);
      who->leases.emplace_back(*l, *b);
      who->comms.push_back(service_.current_comm(*l));
    }
  }
  const Policy& policy = service_.policy();
  for (const Reservation* res : policy.reservations_at(who->protocol, who->port)) {
    who->reservations.push_back(*res);
  }
  for (const Pool* pool : policy.pools_at(who->protocol, who->port)) {
    who->pools.push_back(pool->name);
  }
  who->held = service_.port_held(who->protocol, who->port);
  defer(
      s, [who, viewer = s.holder.uid] { scan_who(*who, viewer); },
      [who](Reply& out) { fill_who(*who, out.root); });
}

void Server::do_check(Session& s, Reply& /*reply*/) {
  auto check = std::make_shared<CheckReport>();
  for (const auto& line : service_.policy().lint()) check->problems.emplace_back("policy", line);
  check->reservations = service_.policy().reservations;
  for (const auto& f : service_.hold_failures()) {
    check->later.emplace_back("not-held", std::string(protocol_name(f.protocol)) + " port " +
                                              std::to_string(f.port) + " of reservation " +
                                              f.reservation + " is not held (retrying): " + f.why);
  }
  for (const auto& line : service_.leases_refused_by_policy()) {
    check->later.emplace_back("lease-refused", line);
  }
  defer(
      s, [check, viewer = s.holder.uid] { scan_check(*check, viewer); },
      [check](Reply& out) {
        auto list = out.root.initProblems(static_cast<unsigned>(check->problems.size()));
        for (size_t i = 0; i < check->problems.size(); ++i) {
          list[static_cast<unsigned>(i)].setKind(check->problems[i].first);
          list[static_cast<unsigned>(i)].setMessage(check->problems[i].second);
        }
      });
}

}  // namespace portbroker::broker
