// Held reservations: sockets the daemon binds and keeps so nothing outside the broker can take
// a reserved port. Part of LeaseService: a held socket becomes a lease's socket and back.
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

#include "broker/os/handover.h"
#include "broker/os/socket_factory.h"
#include "broker/service/lease_service.h"

namespace portbroker::broker {

namespace {

constexpr size_t kMaxHeldPortsPerReservation = 1024;

}  // namespace

// --- held reservations --------------------------------------------------------------------
//
// A held port is a set of sockets the daemon bound itself: for a reservation of any address,
// 0.0.0.0 and [::] (v6only), which together keep out every IPv4 and IPv6 bind and let an IPv4
// or IPv6 lease receive the very socket that was held. TCP ones listen, so that even a
// SO_REUSEADDR bind elsewhere fails (and early connections queue for the service); UDP ones
// have no SO_REUSEADDR, which would let others bind the port too.

namespace {

Endpoint held_endpoint(Protocol p, const HeldSocket& h, uint16_t port) {
  return Endpoint{p, h.address, port,
                  h.address.family == AF_INET6 && h.address.is_any() && !h.v6only};
}

}  // namespace

std::vector<HeldSocket> LeaseService::hold_addresses(const Reservation& r) const {
  std::vector<HeldSocket> out;
  if (!r.addresses.empty()) {
    const IpAddress& a = r.addresses.front();
    out.push_back(
        HeldSocket{a, a.family == AF_INET6 && a.is_any() && !dual_stack_default_, {}, false});
    return out;
  }
  out.push_back(HeldSocket{IpAddress::parse("0.0.0.0").value(), false, {}, false});
  if (ipv6_available_) out.push_back(HeldSocket{IpAddress::parse("::").value(), true, {}, false});
  return out;
}

Result<void> LeaseService::hold_port(const Reservation& r, Protocol p, uint16_t port) {
  const uint32_t key = port_key(p, port);
  Held& entry = held_[key];
  entry.reservation = r.name;
  std::optional<Error> failed;
  bool bound_any = false;
  for (HeldSocket& want : hold_addresses(r)) {
    bool have = std::any_of(entry.sockets.begin(), entry.sockets.end(),
                            [&](const HeldSocket& h) { return h.address == want.address; });
    if (have) continue;
    SocketSpec spec;
    spec.protocol = p;
    spec.address = want.address;
    spec.port = port;
    if (want.address.family == AF_INET6 && want.address.is_any()) spec.options.v6only = want.v6only;
    auto fd = make_held_socket(r, spec);
    if (!fd) {
      failed = fd.error();
      continue;
    }
    want.fd = std::move(fd).value();
    bound_any = true;
    want.unlistened = !r.listen && p == Protocol::kTcp;
    store_hold(want.fd.get());
    entry.sockets.push_back(std::move(want));
  }
  Event e;
  e.name = r.name;
  e.endpoint = std::string(protocol_name(p)) + " port " + std::to_string(port);
  e.port = port;
  if (!failed) {
    if (bound_any) {
      e.kind = "reservation-held";
      daemon_event(std::move(e));
    }
    if (hold_failures_.erase(key) > 0) {
      notice(Notice::kInfo, "now holding " + std::string(protocol_name(p)) + " port " +
                                std::to_string(port) + " for reservation " + r.name);
    }
    return {};
  }
  // Said once per distinct failure: the sweep retries every few seconds.
  auto [it, fresh] = hold_failures_.try_emplace(key, failed->message);
  if (fresh || it->second != failed->message) {
    it->second = failed->message;
    notice(Notice::kWarn, "cannot hold " + std::string(protocol_name(p)) + " port " +
                              std::to_string(port) + " for reservation " + r.name +
                              " (retrying): " + failed->message);
    e.kind = "hold-failed";
    e.code = failed->code;
    e.reason = failed->message;
    daemon_event(std::move(e));
  }
  return *failed;
}

Result<UniqueFd> LeaseService::make_held_socket(const Reservation& r, const SocketSpec& spec) {
  if (r.listen || spec.protocol != Protocol::kTcp) return make_bound_socket(sys_, spec, spec.port);
  // Bound with SO_REUSEADDR (a lease's old socket, shut down, may still be bound there), then
  // without it: a non-listening socket with SO_REUSEADDR on would let another SO_REUSEADDR
  // socket bind the same port.
  auto fd = make_unbound_socket(sys_, spec);
  if (!fd) return fd;
  if (auto bound = bind_socket(sys_, fd->get(), spec, spec.port); !bound) return bound.error();
  const int off = 0;
  if (sys_.setsockopt(fd->get(), SOL_SOCKET, SO_REUSEADDR, &off, sizeof(off)) != 0) {
    return errno_error(ErrorCode::kInternal,
                       format_endpoint(spec.protocol, spec.address, spec.port) +
                           ": cannot turn SO_REUSEADDR off on the held socket",
                       errno);
  }
  return fd;
}

void LeaseService::unpark(Held& entry) {
  const int on = 1;
  for (HeldSocket& h : entry.sockets) {
    if (!h.parked) continue;
    // SO_REUSEADDR back on first, so that parking it again later works as it did.
    sys_.setsockopt(h.fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (sys_.listen(h.fd.get(), SOMAXCONN) == 0) h.parked = false;
  }
}

void LeaseService::drop_stale_holds() {
  // Holds whose reservation is gone or no longer held.
  for (auto it = held_.begin(); it != held_.end();) {
    bool keep = false;
    for (const Reservation* r :
         policy_.reservations_at(port_key_protocol(it->first), port_key_port(it->first))) {
      if (r->hold && r->name == it->second.reservation) keep = true;
    }
    if (!keep) {
      hold_failures_.erase(it->first);
      for (const HeldSocket& h : it->second.sockets) unstore_hold(h);
    }
    it = keep ? std::next(it) : held_.erase(it);
  }
}

void LeaseService::hold_one_port(const Reservation& r, uint16_t port,
                                 std::vector<Error>& failures) {
  for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
    if (!r.protocols.has(p)) continue;
    Endpoint any{p, IpAddress::parse("::").value(), port, true};
    if (registry_.in_use(any)) continue;  // leased: held through the lease
    if (auto it = held_.find(port_key(p, port)); it != held_.end()) unpark(it->second);
    if (auto held = hold_port(r, p, port); !held) failures.push_back(held.error());
  }
}

std::vector<Error> LeaseService::sync_held(const std::string& only, bool from_sweep) {
  drop_stale_holds();
  std::vector<Error> failures;
  for (const Reservation& r : policy_.reservations) {
    if (!r.hold || (!only.empty() && r.name != only)) continue;
    size_t count = 0;
    for (const PortRange& range : r.ports) {
      for (uint32_t port = range.first; port <= range.last && count < kMaxHeldPortsPerReservation;
           ++port, ++count) {
        hold_one_port(r, static_cast<uint16_t>(port), failures);
      }
    }
    if (count >= kMaxHeldPortsPerReservation && !from_sweep) {
      notice(Notice::kWarn, "reservation " + r.name + ": holding only its first " +
                                std::to_string(kMaxHeldPortsPerReservation) + " ports");
    }
  }
  return failures;
}

Result<UniqueFd> LeaseService::bind_reserved(const SocketSpec& spec, OwnerIds owner) {
  auto it = held_.find(port_key(spec.protocol, spec.port));
  if (it == held_.end()) return make_bound_socket(sys_, spec, spec.port, owner);
  auto& socks = it->second.sockets;
  const auto& o = spec.options;
  const bool tcp = spec.protocol == Protocol::kTcp;
  const bool want_v6only = o.v6only.value_or(!dual_stack_default_);
  for (auto h = socks.begin(); h != socks.end(); ++h) {
    // Options that only work before bind() mean a socket of its own.
    bool fits =
        !h->parked && h->address == spec.address && spec.mode != Mode::kReuseport &&
        (spec.address.family != AF_INET6 || !spec.address.is_any() || h->v6only == want_v6only) &&
        !o.freebind.value_or(false) && o.device.empty() && o.reuseaddr.value_or(tcp) == tcp;
    if (!fits) continue;
    // The held socket itself: nothing is released and rebound, so there is no window.
    if (h->unlistened) {
      // It was held without SO_REUSEADDR; the lease gets it as a new socket would be.
      const int on = 1;
      if (tcp && sys_.setsockopt(h->fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0) {
        return errno_error(ErrorCode::kInternal,
                           format_endpoint(spec.protocol, spec.address, spec.port) +
                               ": cannot set reuseaddr on the held socket",
                           errno);
      }
    }
    // apply_late_options listens (an unlistened one starts listening now, for its lease).
    if (auto applied = apply_late_options(sys_, h->fd.get(), spec); !applied)
      return applied.error();
    unstore_hold(*h);  // before the lease stores it under its own name
    UniqueFd fd = std::move(h->fd);
    socks.erase(h);
    return fd;
  }
  // A socket of its own. Held sockets in its way stand aside: TCP ones stop listening but stay
  // bound (binds without SO_REUSEADDR stay refused), UDP ones must go.
  Endpoint ep{spec.protocol, spec.address, spec.port, is_dual_stack(spec, !dual_stack_default_)};
  auto in_the_way = [&](const HeldSocket& h) {
    return endpoints_overlap(held_endpoint(spec.protocol, h, spec.port), ep);
  };
  auto drop_in_the_way = [&](const HeldSocket& h) {
    if (!in_the_way(h)) return false;
    unstore_hold(h);
    return true;
  };
  for (HeldSocket& h : socks) {
    if (tcp && in_the_way(h) && !h.parked && sys_.shutdown(h.fd.get(), SHUT_RD) == 0)
      h.parked = true;
  }
  if (!tcp) std::erase_if(socks, drop_in_the_way);
  auto fd = make_bound_socket(sys_, spec, spec.port, owner);
  if (!fd && fd.error().code == ErrorCode::kInUseOutside) {
    std::erase_if(socks, drop_in_the_way);  // e.g. the request has no SO_REUSEADDR
    fd = make_bound_socket(sys_, spec, spec.port, owner);
  }
  // With SO_REUSEADDR off, a parked socket refuses every other bind of its address, even
  // one with SO_REUSEADDR (the kernel checks the flag of the socket already bound).
  const int off = 0;
  for (HeldSocket& h : socks) {
    if (h.parked) sys_.setsockopt(h.fd.get(), SOL_SOCKET, SO_REUSEADDR, &off, sizeof(off));
  }
  // Nothing is leased after all: the sockets that stood aside hold the port again now. Left
  // parked they would wait for the sweep; closed ones nothing would ever bind again.
  if (!fd) rehold_if_reserved(ep, UniqueFd());
  return fd;
}

void LeaseService::rehold_if_reserved(const Endpoint& ep, UniqueFd old) {
  for (const Reservation* r : policy_.reservations_at(ep.protocol, ep.port)) {
    if (!r->hold) continue;
    // `old` is shut down (TCP: no longer listening), so with SO_REUSEADDR a new socket binds
    // while the old one still holds the port: no moment where the port is free. A UDP socket
    // has no such state; it must go first (a window of one bind call).
    if (ep.protocol == Protocol::kUdp) old.reset();
    auto it = held_.find(port_key(ep.protocol, ep.port));
    if (it != held_.end()) unpark(it->second);
    (void)hold_port(*r, ep.protocol, ep.port);
    if (it != held_.end()) unpark(it->second);  // those that waited for `old` to go
    break;
  }
}

void LeaseService::store_hold(int fd) {
  if (!fd_store_.enabled()) return;
  if (auto stored = fd_store_.store(fd, hold_fd_name(socket_cookie(fd)), false); !stored) {
    notice(Notice::kWarn, stored.error().message);
  }
}

void LeaseService::unstore_hold(const HeldSocket& h) {
  if (fd_store_.enabled() && h.fd) {
    fd_store_.remove(hold_fd_name(socket_cookie(h.fd.get())));
  }
}

bool LeaseService::any_parked() const {
  for (const auto& [key, entry] : held_) {
    for (const auto& h : entry.sockets) {
      if (h.parked) return true;
    }
  }
  return false;
}

void LeaseService::retry_holds() {
  if (!hold_failures_.empty() || any_parked()) (void)sync_held({}, true);
}

bool LeaseService::port_held(Protocol p, uint16_t port) const {
  auto it = held_.find(port_key(p, port));
  return it != held_.end() && std::any_of(it->second.sockets.begin(), it->second.sockets.end(),
                                          [](const HeldSocket& h) { return !h.parked; });
}

std::vector<LeaseService::HoldFailure> LeaseService::hold_failures() const {
  std::vector<HoldFailure> out;
  for (const auto& [key, why] : hold_failures_) {
    auto entry = held_.find(key);
    out.push_back(HoldFailure{port_key_protocol(key), port_key_port(key),
                              entry == held_.end() ? "?" : entry->second.reservation, why});
  }
  return out;
}

}  // namespace portbroker::broker
