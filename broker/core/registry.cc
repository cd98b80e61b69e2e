#include "broker/core/registry.h"

#include <sys/socket.h>

#include <algorithm>
#include <ctime>
#include <tuple>

namespace portbroker::broker {

namespace {
// Searches from the back: sessions are torn down newest-first, which makes that O(1).
void erase_value(std::vector<uint64_t>& v, uint64_t x) {
  auto it = std::find(v.rbegin(), v.rend(), x);
  if (it != v.rend()) v.erase(std::next(it).base());
}
}  // namespace

bool options_equal(const SocketOptions& a, const SocketOptions& b) {
  auto tie = [](const SocketOptions& o) {
    return std::tie(o.backlog, o.v6only, o.reuseaddr, o.freebind, o.defer_accept, o.fastopen,
                    o.keepalive, o.rcvbuf, o.sndbuf, o.device);
  };
  return tie(a) == tie(b);
}

bool endpoints_overlap(const Endpoint& a, const Endpoint& b) {
  if (a.protocol != b.protocol || a.port != b.port) return false;
  if (a.address.family == b.address.family) {
    return a.address == b.address || a.address.is_any() || b.address.is_any();
  }
  // A dual-stack IPv6 wildcard also holds every IPv4 address of the port.
  const Endpoint& v6 = a.address.family == AF_INET6 ? a : b;
  return v6.address.is_any() && v6.dual_stack;
}

std::string format_time_of_day(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
  return buf;
}

std::string Registry::describe_holder(const Binding& b) const {
  std::string what = format_endpoint(b.endpoint.protocol, b.endpoint.address, b.endpoint.port);
  std::string how = b.mode == Mode::kExclusive ? "leased exclusively"
                    : b.mode == Mode::kShared  ? "leased shared"
                                               : "leased as a reuseport group";
  std::string who;
  size_t shown = 0;
  for (uint64_t id : b.leases) {
    const Lease* l = find_lease(id);
    if (l == nullptr) continue;
    if (shown == 3) {
      who += " and " + std::to_string(b.leases.size() - shown) + " more";
      break;
    }
    if (shown > 0) who += ", ";
    who += "pid " + std::to_string(l->holder.pid) + " (" +
           (l->holder.comm.empty() ? std::string("?") : l->holder.comm) + ", uid " +
           std::to_string(l->holder.uid) + ")";
    if (shown == 0) who += " since " + format_time_of_day(l->created_ms);
    if (l->lingering()) {
      who += ", lingering until " + format_time_of_day(l->lingering_until_ms) +
             " for its holder to come back";
    }
    ++shown;
  }
  return what + " is " + how + " by " + who;
}

Result<Plan> Registry::plan(const Endpoint& ep, Mode mode, const SocketOptions& options,
                            uint32_t requester_uid, const JoinCheck& may_join) const {
  auto it = by_port_.find(port_key(ep.protocol, ep.port));
  if (it == by_port_.end()) return Plan{};
  for (uint64_t bid : it->second) {
    const Binding& b = bindings_.at(bid);
    if (!endpoints_overlap(b.endpoint, ep)) continue;
    std::string holder = describe_holder(b);
    bool same_endpoint = b.endpoint.address == ep.address && b.endpoint.dual_stack == ep.dual_stack;
    if (mode == Mode::kExclusive || b.mode == Mode::kExclusive || b.mode != mode) {
      return make_error(ErrorCode::kConflict, holder);
    }
    if (!same_endpoint) {
      return make_error(
          ErrorCode::kConflict,
          holder + "; to join it, ask for exactly " +
              format_endpoint(b.endpoint.protocol, b.endpoint.address, b.endpoint.port));
    }
    // Joining a group gives a share of its connections: its owner's uid, root, or a uid the
    // policy lets join.
    if (requester_uid != 0 && requester_uid != b.owner_uid) {
      if (!may_join) {
        return make_error(
            ErrorCode::kConflict,
            holder + "; only uid " + std::to_string(b.owner_uid) + " or root may join it");
      }
      if (auto ok = may_join(b); !ok) {
        return make_error(ErrorCode::kConflict, holder + "; " + ok.error().message);
      }
    }
    if (!options_equal(b.options, options)) {
      return make_error(ErrorCode::kConflict,
                        holder + " with other socket options; ask with the same options to join");
    }
    return Plan{Plan::kJoin, bid};
  }
  return Plan{};
}

std::vector<uint64_t> Registry::overlapping(const Endpoint& ep) const {
  std::vector<uint64_t> out;
  auto it = by_port_.find(port_key(ep.protocol, ep.port));
  if (it == by_port_.end()) return out;
  for (uint64_t bid : it->second) {
    if (endpoints_overlap(bindings_.at(bid).endpoint, ep)) out.push_back(bid);
  }
  return out;
}

void Registry::set_comm(uint64_t lease_id, const std::string& comm) {
  if (auto it = leases_.find(lease_id); it != leases_.end()) it->second.holder.comm = comm;
}

bool Registry::in_use(const Endpoint& ep) const {
  auto it = by_port_.find(port_key(ep.protocol, ep.port));
  if (it == by_port_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(), [&](uint64_t bid) {
    return endpoints_overlap(bindings_.at(bid).endpoint, ep);
  });
}

uint64_t Registry::add_binding(const Endpoint& ep, Mode mode, const SocketOptions& options,
                               uint32_t owner_uid) {
  uint64_t id = next_id_++;
  bindings_.emplace(id, Binding{id, ep, mode, options, owner_uid, {}});
  by_port_[port_key(ep.protocol, ep.port)].push_back(id);
  return id;
}

uint64_t Registry::add_lease(uint64_t binding, std::string name, uint64_t session, Holder holder,
                             int64_t created_ms, uint32_t linger_s, std::string token) {
  uint64_t id = next_id_++;
  uint32_t uid = holder.uid;
  leases_.emplace(id, Lease{id, binding, std::move(name), session, std::move(holder), created_ms,
                            linger_s, std::move(token), 0});
  bindings_.at(binding).leases.push_back(id);
  by_session_[session].push_back(id);
  by_uid_[uid].push_back(id);
  return id;
}

void Registry::rehome(uint64_t lease_id, Holder holder) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  Lease& l = it->second;
  if (l.holder.uid != holder.uid) {
    if (auto u = by_uid_.find(l.holder.uid); u != by_uid_.end()) {
      erase_value(u->second, lease_id);
      if (u->second.empty()) by_uid_.erase(u);
    }
    by_uid_[holder.uid].push_back(lease_id);
  }
  l.holder = std::move(holder);
}

void Registry::restore_binding(Binding b) {
  const uint64_t id = b.id;
  b.leases.clear();
  by_port_[port_key(b.endpoint.protocol, b.endpoint.port)].push_back(id);
  bindings_.emplace(id, std::move(b));
  set_next_id(id + 1);
}

void Registry::restore_lease(Lease l) {
  const uint64_t id = l.id;
  bindings_.at(l.binding).leases.push_back(id);
  by_uid_[l.holder.uid].push_back(id);
  if (l.lingering()) {
    l.session = 0;
    lingering_.push_back(id);
  } else {
    by_session_[l.session].push_back(id);
  }
  leases_.emplace(id, std::move(l));
  set_next_id(id + 1);
}

void Registry::set_lingering(uint64_t lease_id, int64_t until_ms) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end() || it->second.lingering()) return;
  Lease& l = it->second;
  if (auto s = by_session_.find(l.session); s != by_session_.end()) {
    erase_value(s->second, lease_id);
    if (s->second.empty()) by_session_.erase(s);
  }
  l.session = 0;
  l.lingering_until_ms = until_ms;
  lingering_.push_back(lease_id);
}

std::optional<uint64_t> Registry::find_reclaimable(const Endpoint& ep, Mode mode, uint32_t uid,
                                                   const std::string& token) const {
  for (uint64_t id : lingering_) {
    const Lease& l = leases_.at(id);
    const Binding& b = bindings_.at(l.binding);
    if (b.mode != mode || b.endpoint.protocol != ep.protocol || b.endpoint.port != ep.port ||
        !(b.endpoint.address == ep.address)) {
      continue;
    }
    if (l.holder.uid == uid || (!token.empty() && token == l.token)) return id;
  }
  return std::nullopt;
}

void Registry::change_holder(Lease& l, Holder holder) {
  if (l.holder.uid != holder.uid) {
    if (auto u = by_uid_.find(l.holder.uid); u != by_uid_.end()) {
      erase_value(u->second, l.id);
      if (u->second.empty()) by_uid_.erase(u);
    }
    by_uid_[holder.uid].push_back(l.id);
  }
  l.holder = std::move(holder);
}

void Registry::reclaim(uint64_t lease_id, uint64_t session, Holder holder) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end() || !it->second.lingering()) return;
  Lease& l = it->second;
  erase_value(lingering_, lease_id);
  change_holder(l, std::move(holder));
  l.session = session;
  l.lingering_until_ms = 0;
  by_session_[session].push_back(lease_id);
}

void Registry::unreclaim(uint64_t lease_id, Holder holder, int64_t until_ms) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end() || it->second.lingering()) return;
  change_holder(it->second, std::move(holder));
  set_lingering(lease_id, until_ms);
}

std::vector<uint64_t> Registry::expired(int64_t now_ms) const {
  std::vector<uint64_t> out;
  for (uint64_t id : lingering_) {
    if (leases_.at(id).lingering_until_ms <= now_ms) out.push_back(id);
  }
  return out;
}

std::optional<Registry::Removed> Registry::remove_lease(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return std::nullopt;
  Removed out;
  out.lease = std::move(it->second);
  leases_.erase(it);
  if (out.lease.lingering()) erase_value(lingering_, lease_id);

  if (auto s = by_session_.find(out.lease.session); s != by_session_.end()) {
    erase_value(s->second, lease_id);
    if (s->second.empty()) by_session_.erase(s);
  }
  if (auto u = by_uid_.find(out.lease.holder.uid); u != by_uid_.end()) {
    erase_value(u->second, lease_id);
    if (u->second.empty()) by_uid_.erase(u);
  }
  auto b = bindings_.find(out.lease.binding);
  if (b != bindings_.end()) {
    out.mode = b->second.mode;
    out.endpoint = b->second.endpoint;
    erase_value(b->second.leases, lease_id);
    if (b->second.leases.empty()) {
      uint32_t key = port_key(b->second.endpoint.protocol, b->second.endpoint.port);
      // An emptied port keeps its (empty) list: at most one per protocol and port, and the
      // next lease of the port reuses it instead of allocating a node and a vector again.
      erase_value(by_port_[key], b->first);
      bindings_.erase(b);
      out.binding_empty = true;
    }
  }
  return out;
}

const Lease* Registry::find_lease(uint64_t id) const {
  auto it = leases_.find(id);
  return it == leases_.end() ? nullptr : &it->second;
}

const Binding* Registry::find_binding(uint64_t id) const {
  auto it = bindings_.find(id);
  return it == bindings_.end() ? nullptr : &it->second;
}

std::vector<uint64_t> Registry::leases_of_session(uint64_t session) const {
  auto it = by_session_.find(session);
  return it == by_session_.end() ? std::vector<uint64_t>{} : it->second;
}

size_t Registry::leases_of_uid(uint32_t uid) const { return lease_ids_of_uid(uid).size(); }

const std::vector<uint64_t>& Registry::lease_ids_of_uid(uint32_t uid) const {
  static const std::vector<uint64_t> kNone;
  auto it = by_uid_.find(uid);
  return it == by_uid_.end() ? kNone : it->second;
}

std::vector<const Lease*> Registry::all_leases() const {
  std::vector<const Lease*> out;
  out.reserve(leases_.size());
  for (const auto& [id, l] : leases_) out.push_back(&l);
  std::sort(out.begin(), out.end(), [](const Lease* a, const Lease* b) { return a->id < b->id; });
  return out;
}

}  // namespace portbroker::broker
