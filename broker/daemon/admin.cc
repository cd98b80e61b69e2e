// The server's administrative side: policy loading and reload, reservations (runtime ones
// persisted in the state dir), held reservation sockets.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "broker/daemon/server_internal.h"
#include "broker/os/files.h"
#include "broker/os/socket_factory.h"
#include "ipc/wire.h"

namespace portbroker::broker {

namespace {

constexpr size_t kMaxHeldPortsPerReservation = 1024;
constexpr const char* kStateFile = "reservations.toml";

uint32_t held_key(Protocol p, uint16_t port) { return (static_cast<uint32_t>(p) << 16) | port; }

}  // namespace

void fill_reservation(const Reservation& r, wire::Reservation::Builder out) {
  out.setName(r.name);
  out.setTcp(r.protocols.tcp);
  out.setUdp(r.protocols.udp);
  if (!r.addresses.empty()) out.setAddress(ipc::address_bytes(r.addresses.front()));
  // [::1] is written in brackets in a target, as in a socket spec.
  if (!r.ports.empty()) {
    out.setPortFirst(r.ports.front().first);
    out.setPortLast(r.ports.back().last);
  }
  out.setHold(r.hold);
  out.setOrigin(r.runtime ? "runtime (portbroker reserve)" : r.origin.to_string());
  out.setPrincipals(r.principals.to_string());
  std::string target = r.protocols.tcp && r.protocols.udp ? "both:" : r.protocols.to_string() + ":";
  if (r.addresses.empty()) {
    target += "any";
  } else if (r.addresses.front().family == AF_INET6) {
    target += "[" + r.addresses.front().to_string() + "]";
  } else {
    target += r.addresses.front().to_string();
  }
  std::string ports;
  for (const PortRange& p : r.ports) ports += (ports.empty() ? "" : ",") + p.to_string();
  out.setTarget(target + ":" + ports);
}

Result<Policy> load_policy(const ServerConfig& config) {
  Policy policy;
  std::error_code ec;
  if (!config.config_path.empty() && std::filesystem::exists(config.config_path, ec)) {
    auto text = read_whole_file(config.config_path);
    if (!text) return text.error();
    auto parsed = parse_policy(*text, config.config_path, system_name_resolver());
    if (!parsed) return parsed.error();
    policy = std::move(parsed).value();
  } else {
    policy = embedded_default_policy();
  }
  if (config.pool) {
    for (Pool& p : policy.pools) {
      if (p.name == "default") p.ports = {*config.pool};
    }
  }
  std::string state = config.state_dir + "/" + kStateFile;
  if (!config.state_dir.empty() && std::filesystem::exists(state, ec)) {
    auto text = read_whole_file(state);
    if (!text) return text.error();
    auto runtime = parse_state(*text, state);
    if (!runtime) return runtime.error();
    for (Reservation& r : *runtime) {
      std::string name = r.name;
      if (auto added = policy.add_reservation(std::move(r)); !added) {
        return make_error(added.error().code,
                          state + ": runtime reservation " + name + ": " + added.error().message);
      }
    }
  }
  return policy;
}

Result<void> Server::save_runtime_reservations() const {
  if (config_.state_dir.empty()) return {};
  auto runtime = policy_.runtime_reservations();
  return write_file_atomically(config_.state_dir, kStateFile, to_state_toml(runtime));
}

bool Server::require_root(const Session& s, const char* what, Reply& reply) {
  if (s.holder.uid == 0) return true;
  reply.error(make_error(
      ErrorCode::kPermissionDenied,
      std::string(what) + " is for root; uid " + std::to_string(s.holder.uid) + " may not"));
  return false;
}

void Server::do_reserve(Session& s, wire::Reservation::Reader r, Reply& reply) {
  if (!require_root(s, "reserve", reply)) return;
  std::vector<std::string> users, groups;
  for (auto u : r.getUsers()) users.emplace_back(u.cStr(), u.size());
  for (auto g : r.getGroups()) groups.emplace_back(g.cStr(), g.size());
  auto res = make_runtime_reservation(std::string_view(r.getName().cStr()),
                                      std::string_view(r.getTarget().cStr()), users, groups,
                                      r.getHold(), system_name_resolver());
  if (!res) return reply.error(res.error());
  Policy next = policy_;
  std::string name = res->name;
  if (auto added = next.add_reservation(std::move(res).value()); !added) {
    return reply.error(added.error());
  }
  std::swap(policy_, next);
  if (auto saved = save_runtime_reservations(); !saved) {
    std::swap(policy_, next);  // not persisted: not made
    return reply.error(saved.error());
  }
  if (auto failures = sync_held(name); !failures.empty()) {
    // Could not hold it: take the reservation back so that nothing changed.
    std::swap(policy_, next);
    sync_held();
    (void)save_runtime_reservations();
    return reply.error(make_error(failures.front().code, "cannot hold reservation " + name + ": " +
                                                             failures.front().message +
                                                             "; nothing was reserved"));
  }
  spdlog::info("pid={} uid={} reserved {}", s.holder.pid, s.holder.uid, name);
  apply_guard();
  reply.root.setDone();
}

void Server::do_unreserve(Session& s, std::string_view name, Reply& reply) {
  if (!require_root(s, "unreserve", reply)) return;
  Policy next = policy_;
  if (auto removed = next.remove_reservation(name); !removed) return reply.error(removed.error());
  std::swap(policy_, next);
  if (auto saved = save_runtime_reservations(); !saved) {
    std::swap(policy_, next);
    return reply.error(saved.error());
  }
  spdlog::info("pid={} uid={} unreserved {}", s.holder.pid, s.holder.uid, name);
  sync_held();
  apply_guard();
  reply.root.setDone();
}

void Server::do_reservations(Reply& reply) {
  auto out = reply.root.initReservations(static_cast<unsigned>(policy_.reservations.size()));
  for (size_t i = 0; i < policy_.reservations.size(); ++i) {
    fill_reservation(policy_.reservations[i], out[static_cast<unsigned>(i)]);
  }
}

std::vector<std::string> Server::leases_refused_by_policy() const {
  std::vector<std::string> out;
  for (const Lease* l : registry_.all_leases()) {
    const Binding* b = registry_.find_binding(l->binding);
    if (b == nullptr) continue;
    Principal who;
    who.uid = l->holder.uid;
    who.gid = l->holder.gid;
    who.cgroup = l->holder.cgroup;
    if (auto s = sessions_.find(l->session); s != sessions_.end()) who = s->second->principal;
    // The lease itself is not counted against the limits it already satisfied.
    std::vector<HeldLease> held;
    Request req{b->endpoint.protocol, b->endpoint.address, b->endpoint.port, b->mode, false};
    Decision d = policy_.check(who, req, held);
    // Pool ports were granted by a pool, not a rule: judge them as the pool would.
    if (!d && policy_.pools_at(b->endpoint.protocol, b->endpoint.port).size() > 0) {
      req.from_pool = true;
      d = policy_.check(who, req, held);
    }
    if (!d) {
      out.push_back("lease " + std::to_string(l->id) + " (" +
                    format_endpoint(b->endpoint.protocol, b->endpoint.address, b->endpoint.port) +
                    ", pid " + std::to_string(l->holder.pid) + " " + current_comm(*l) +
                    "): " + d.reason);
    }
  }
  return out;
}

Result<std::vector<std::string>> Server::reload() {
  auto next = load_policy(config_);
  if (!next) {
    spdlog::error("reload failed; the old policy stays in force: {}", next.error().message);
    return next.error();
  }
  policy_ = std::move(next).value();
  auto refused = leases_refused_by_policy();
  spdlog::info("policy reloaded from {}; {} lease(s) kept that it would now refuse", policy_.source,
               refused.size());
  for (const auto& line : refused) spdlog::warn("policy would refuse {}", line);
  for (const auto& line : policy_.lint()) spdlog::warn("policy: {}", line);
  sync_held();
  apply_guard();
  return refused;
}

void Server::do_reload(Session& s, Reply& reply) {
  if (!require_root(s, "reload", reply)) return;
  spdlog::info("pid={} uid={} asked for a reload", s.holder.pid, s.holder.uid);
  auto refused = reload();
  if (!refused) return reply.error(refused.error());
  auto out = reply.root.initReloaded();
  out.setSource(policy_.source);
  auto list = out.initRefusedLeases(static_cast<unsigned>(refused->size()));
  for (size_t i = 0; i < refused->size(); ++i) list.set(static_cast<unsigned>(i), (*refused)[i]);
}

// --- held reservations --------------------------------------------------------------------
//
// A held port is a set of sockets the daemon bound itself: for a reservation of any address,
// 0.0.0.0 and [::] (v6only), which together keep out every IPv4 and IPv6 bind and let an IPv4
// or IPv6 lease receive the very socket that was held. TCP ones listen, so that even a
// SO_REUSEADDR bind elsewhere fails (and early connections queue for the service); UDP ones
// have no SO_REUSEADDR, which would let others bind the port too.

namespace {

Endpoint held_endpoint(Protocol p, const Server::HeldSocket& h, uint16_t port) {
  return Endpoint{p, h.address, port,
                  h.address.family == AF_INET6 && h.address.is_any() && !h.v6only};
}

}  // namespace

std::vector<Server::HeldSocket> Server::hold_addresses(const Reservation& r) const {
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

Result<void> Server::hold_port(const Reservation& r, Protocol p, uint16_t port) {
  const uint32_t key = held_key(p, port);
  Held& entry = held_[key];
  entry.reservation = r.name;
  std::optional<Error> failed;
  for (HeldSocket& want : hold_addresses(r)) {
    bool have = std::any_of(entry.sockets.begin(), entry.sockets.end(),
                            [&](const HeldSocket& h) { return h.address == want.address; });
    if (have) continue;
    SocketSpec spec;
    spec.protocol = p;
    spec.address = want.address;
    spec.port = port;
    if (want.address.family == AF_INET6 && want.address.is_any()) spec.options.v6only = want.v6only;
    auto fd = make_bound_socket(spec, port);
    if (!fd) {
      failed = fd.error();
      continue;
    }
    want.fd = std::move(fd).value();
    entry.sockets.push_back(std::move(want));
  }
  if (!failed) {
    if (hold_failures_.erase(key) > 0) {
      spdlog::info("now holding {} port {} for reservation {}", protocol_name(p), port, r.name);
    }
    return {};
  }
  // Said once per distinct failure: the sweep retries every few seconds.
  auto [it, fresh] = hold_failures_.try_emplace(key, failed->message);
  if (fresh || it->second != failed->message) {
    it->second = failed->message;
    spdlog::warn("cannot hold {} port {} for reservation {} (retrying): {}", protocol_name(p), port,
                 r.name, failed->message);
  }
  return *failed;
}

void Server::unpark(Held& entry) {
  const int on = 1;
  for (HeldSocket& h : entry.sockets) {
    if (!h.parked) continue;
    // SO_REUSEADDR back on first, so that parking it again later works as it did.
    ::setsockopt(h.fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (::listen(h.fd.get(), SOMAXCONN) == 0) h.parked = false;
  }
}

std::vector<Error> Server::sync_held(const std::string& only, bool from_sweep) {
  // Drop holds whose reservation is gone or no longer held.
  for (auto it = held_.begin(); it != held_.end();) {
    auto p = static_cast<Protocol>(it->first >> 16);
    bool keep = false;
    for (const Reservation* r : policy_.reservations_at(p, it->first & 0xffff)) {
      if (r->hold && r->name == it->second.reservation) keep = true;
    }
    if (!keep) hold_failures_.erase(it->first);
    it = keep ? std::next(it) : held_.erase(it);
  }
  std::vector<Error> failures;
  for (const Reservation& r : policy_.reservations) {
    if (!r.hold || (!only.empty() && r.name != only)) continue;
    size_t count = 0;
    for (const PortRange& range : r.ports) {
      for (uint32_t p32 = range.first; p32 <= range.last && count < kMaxHeldPortsPerReservation;
           ++p32, ++count) {
        const auto port = static_cast<uint16_t>(p32);
        for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
          if (!r.protocols.has(p)) continue;
          Endpoint any{p, IpAddress::parse("::").value(), port, true};
          if (registry_.in_use(any)) continue;  // leased: held through the lease
          if (auto it = held_.find(held_key(p, port)); it != held_.end()) unpark(it->second);
          if (auto held = hold_port(r, p, port); !held) failures.push_back(held.error());
        }
      }
    }
    if (count >= kMaxHeldPortsPerReservation && !from_sweep) {
      spdlog::warn("reservation {}: holding only its first {} ports", r.name,
                   kMaxHeldPortsPerReservation);
    }
  }
  return failures;
}

Result<UniqueFd> Server::bind_reserved(const SocketSpec& spec) {
  auto it = held_.find(held_key(spec.protocol, spec.port));
  if (it == held_.end()) return make_bound_socket(spec, spec.port);
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
    if (auto applied = apply_late_options(h->fd.get(), spec); !applied) return applied.error();
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
  for (HeldSocket& h : socks) {
    if (tcp && in_the_way(h) && !h.parked && ::shutdown(h.fd.get(), SHUT_RD) == 0) h.parked = true;
  }
  if (!tcp) std::erase_if(socks, in_the_way);
  auto fd = make_bound_socket(spec, spec.port);
  if (!fd && fd.error().code == ErrorCode::kInUseOutside) {
    std::erase_if(socks, in_the_way);  // e.g. the request has no SO_REUSEADDR
    fd = make_bound_socket(spec, spec.port);
  }
  // With SO_REUSEADDR off, a parked socket refuses every other bind of its address, even
  // one with SO_REUSEADDR (the kernel checks the flag of the socket already bound).
  const int off = 0;
  for (HeldSocket& h : socks) {
    if (h.parked) ::setsockopt(h.fd.get(), SOL_SOCKET, SO_REUSEADDR, &off, sizeof(off));
  }
  return fd;
}

void Server::rehold_if_reserved(const Endpoint& ep, UniqueFd old) {
  for (const Reservation* r : policy_.reservations_at(ep.protocol, ep.port)) {
    if (!r->hold) continue;
    // `old` is shut down (TCP: no longer listening), so with SO_REUSEADDR a new socket binds
    // while the old one still holds the port: no moment where the port is free. A UDP socket
    // has no such state; it must go first (a window of one bind call).
    if (ep.protocol == Protocol::kUdp) old.reset();
    auto it = held_.find(held_key(ep.protocol, ep.port));
    if (it != held_.end()) unpark(it->second);
    (void)hold_port(*r, ep.protocol, ep.port);
    if (it != held_.end()) unpark(it->second);  // those that waited for `old` to go
    break;
  }
}

}  // namespace portbroker::broker
