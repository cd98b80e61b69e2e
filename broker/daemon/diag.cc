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
#include <unordered_map>

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
std::vector<PortHolder> outside_only(Result<std::vector<PortHolder>> found, uint32_t viewer_uid) {
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

std::vector<PortHolder> outside_holders(Protocol p, uint16_t port, HolderScope scope,
                                        uint32_t viewer_uid) {
  return outside_only(find_port_holders(p, port, scope), viewer_uid);
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

void outside_to_wire(const PortHolder& h, wire::OutsideHolder::Builder o) {
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

// The items [begin, end) of a who reply, counted across its lists in order (leases, outside
// holders, reservations, pools), with the scalar fields in every part.
void fill_who(const WhoReport& who, wire::Reply::Builder root, size_t begin, size_t end) {
  auto out = root.initWho();
  out.setProtocol(ipc::protocol_to_wire(who.protocol));
  out.setPort(who.port);
  // The part of list `size` items long, starting at `offset` in the whole reply.
  size_t offset = 0;
  auto slice = [&](size_t size) {
    size_t from = std::clamp(begin, offset, offset + size) - offset;
    size_t to = std::clamp(end, offset, offset + size) - offset;
    offset += size;
    return std::pair<size_t, size_t>(from, to);
  };
  auto [lf, lt] = slice(who.leases.size());
  auto wl = out.initLeases(static_cast<unsigned>(lt - lf));
  for (size_t i = lf; i < lt; ++i) {
    ipc::lease_to_wire(lease_view(who.leases[i].first, &who.leases[i].second, who.comms[i]),
                       wl[static_cast<unsigned>(i - lf)]);
  }
  auto [of, ot] = slice(who.outside.size());
  auto wo = out.initOutside(static_cast<unsigned>(ot - of));
  for (size_t i = of; i < ot; ++i)
    outside_to_wire(who.outside[i], wo[static_cast<unsigned>(i - of)]);
  auto [rf, rt] = slice(who.reservations.size());
  auto wr = out.initReservations(static_cast<unsigned>(rt - rf));
  for (size_t i = rf; i < rt; ++i) {
    ipc::reservation_to_wire(reservation_info(who.reservations[i]),
                             wr[static_cast<unsigned>(i - rf)]);
  }
  auto [pf, pt] = slice(who.pools.size());
  auto wp = out.initPools(static_cast<unsigned>(pt - pf));
  for (size_t i = pf; i < pt; ++i) wp.set(static_cast<unsigned>(i - pf), who.pools[i]);
  if (who.in_ephemeral_range) out.setInEphemeralRange(*who.in_ephemeral_range);
  if (who.guarded) out.setGuarded(*who.guarded);
  out.setHeld(who.held);
}

size_t who_items(const WhoReport& who) {
  return who.leases.size() + who.outside.size() + who.reservations.size() + who.pools.size();
}

// What `check` reports: problems known on the loop, then those the scans find.
struct CheckReport {
  std::vector<Reservation> reservations;
  std::vector<std::pair<std::string, std::string>> problems;  // kind, message
  std::vector<std::pair<std::string, std::string>> later;     // known, listed after the scans
};

// The ports of a reservation that `check` inspects, for each protocol it covers.
template <typename Visit>
void checked_ports(const Reservation& r, Visit visit) {
  size_t checked = 0;
  for (const PortRange& pr : r.ports) {
    for (uint32_t port = pr.first; port <= pr.last && checked < kMaxCheckedPortsPerReservation;
         ++port, ++checked) {
      for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
        if (r.protocols.has(p)) visit(p, static_cast<uint16_t>(port));
      }
    }
  }
}

uint32_t port_key(Protocol p, uint16_t port) {
  return (p == Protocol::kUdp ? 0x10000u : 0u) | port;
}

void scan_check(CheckReport& check, uint32_t viewer) {
  auto range = read_local_port_range();
  auto reserved = read_reserved_ports();
  // One scan for every port of every reservation.
  PortSelection wanted;
  for (const Reservation& r : check.reservations) {
    checked_ports(r, [&](Protocol p, uint16_t port) {
      (p == Protocol::kUdp ? wanted.udp : wanted.tcp).push_back(port);
    });
  }
  std::unordered_map<uint32_t, std::vector<PortHolder>> holders;
  if (!wanted.tcp.empty() || !wanted.udp.empty()) {
    for (PortHolder& h : outside_only(find_port_holders(wanted, HolderScope::kBound), viewer)) {
      holders[port_key(h.protocol, h.port)].push_back(std::move(h));
    }
  }
  for (const Reservation& r : check.reservations) {
    checked_ports(r, [&](Protocol p, uint16_t port) {
      auto it = holders.find(port_key(p, port));
      if (it == holders.end()) return;
      for (const PortHolder& h : it->second) {
        check.problems.emplace_back("held-outside",
                                    "port " + std::to_string(port) + " of reservation " + r.name +
                                        " is held outside the broker: " + describe_outside(h));
      }
    });
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

void Server::defer(Session& s, std::function<void()> work,
                   std::function<void(Session&, Reply&)> done) {
  auto* d = new Deferred;
  d->req.data = d;
  d->server = this;
  d->session = s.id;
  d->uid = s.holder.uid;
  ++uid_queues_[d->uid].in_flight;
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
  if (auto q = self->uid_queues_.find(d->uid); q != self->uid_queues_.end()) {
    UidQueue& queue = q->second;
    if (queue.in_flight > 0) --queue.in_flight;
    if (queue.ready.empty() && queue.in_flight == 0 && !queue.in_ring) {
      self->uid_queues_.erase(q);
    } else {
      self->ring_uid(d->uid, queue);
    }
  }
  auto it = self->sessions_.find(d->session);
  if (it == self->sessions_.end() || it->second->closing) return;  // the client left meanwhile
  Session& s = *it->second;
  s.deferred = false;
  try {
    Reply reply;
    d->done(s, reply);
    if (s.parts) {
      self->send_next_part(s);
    } else {
      (void)self->send_reply(s, reply);
    }
    s.drained = false;
    self->resume(s);
  } catch (const std::exception& e) {
    spdlog::error("pid={} uid={} session failed: {}", s.holder.pid, s.holder.uid, e.what());
    self->close_session(s);
  }
}

void Server::refuse_acquire(Session& s, const SocketSpec& spec, size_t index, size_t count,
                            const Error& e, Reply& reply) {
  auto finish = [pid = s.holder.pid, uid = s.holder.uid, spec, index, count](Error named,
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
      [named, finish](Session&, Reply& out) { finish(*named, out); });
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
      [who](Session& session, Reply&) {
        session.parts = std::make_unique<Parts>();
        session.parts->total = who_items(*who);
        session.parts->fill = [who](wire::Reply::Builder root, size_t begin, size_t end) {
          fill_who(*who, root, begin, end);
        };
      });
}

std::vector<std::string> Server::refused_lines() {
  if (refused_generation_ != policy_generation_) {
    refused_ = service_.refused_leases();
    refused_generation_ = policy_generation_;
  }
  // Leases that ended, or that another session took back, since: no longer the policy's
  // concern (whoever holds them now was allowed by it).
  const Registry& reg = service_.registry();
  std::erase_if(refused_, [&](const LeaseService::RefusedLease& r) {
    const Lease* l = reg.find_lease(r.lease);
    return l == nullptr || l->session != r.session;
  });
  std::vector<std::string> out;
  out.reserve(refused_.size());
  for (const auto& r : refused_) out.push_back(r.line);
  return out;
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
  for (std::string& line : refused_lines()) check->later.emplace_back("lease-refused", line);
  defer(
      s, [check, viewer = s.holder.uid] { scan_check(*check, viewer); },
      [check](Session& session, Reply&) {
        session.parts = std::make_unique<Parts>();
        session.parts->total = check->problems.size();
        session.parts->fill = [check](wire::Reply::Builder root, size_t begin, size_t end) {
          auto list = root.initProblems(static_cast<unsigned>(end - begin));
          for (size_t i = begin; i < end; ++i) {
            list[static_cast<unsigned>(i - begin)].setKind(check->problems[i].first);
            list[static_cast<unsigned>(i - begin)].setMessage(check->problems[i].second);
          }
        };
      });
}

}  // namespace portbroker::broker
