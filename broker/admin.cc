// The server's administrative side: policy loading and reload, reservations (runtime ones
// persisted in the state dir), held reservation sockets.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "broker/server_internal.h"
#include "broker/socket_factory.h"
#include "ipc/wire.h"

namespace portbroker::broker {

namespace {

constexpr size_t kMaxHeldPortsPerReservation = 1024;
constexpr const char* kStateFile = "reservations.toml";

uint32_t held_key(Protocol p, uint16_t port) { return (static_cast<uint32_t>(p) << 16) | port; }

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_error(ErrorCode::kNotFound, "cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// temp file, fsync, rename, fsync the directory: a crash leaves the old or the new file.
Result<void> write_file_atomically(const std::string& dir, const std::string& name,
                                   const std::string& text) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kInternal, "cannot create " + dir + ": " + ec.message());
  std::string path = dir + "/" + name;
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd)
    return make_error(ErrorCode::kInternal, "cannot write " + tmp + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return make_error(ErrorCode::kInternal, "cannot write " + tmp + ": " + std::strerror(errno));
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return make_error(ErrorCode::kInternal, "cannot save " + path + ": " + std::strerror(errno));
  }
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());
  return {};
}

}  // namespace

void fill_reservation(const Reservation& r, wire::Reservation::Builder out) {
  out.setName(r.name);
  out.setTcp(r.protocols.tcp);
  out.setUdp(r.protocols.udp);
  if (!r.addresses.empty()) out.setAddress(ipc::address_bytes(r.addresses.front()));
  if (!r.ports.empty()) {
    out.setPortFirst(r.ports.front().first);
    out.setPortLast(r.ports.back().last);
  }
  out.setHold(r.hold);
  out.setOrigin(r.runtime ? "runtime (portbroker reserve)" : r.origin.to_string());
  out.setPrincipals(r.principals.to_string());
  std::string target = r.protocols.to_string() + ":";
  target += r.addresses.empty() ? "any" : r.addresses.front().to_string();
  std::string ports;
  for (const PortRange& p : r.ports) ports += (ports.empty() ? "" : ",") + p.to_string();
  out.setTarget(target + ":" + ports);
}

Result<Policy> load_policy(const ServerConfig& config) {
  Policy policy;
  std::error_code ec;
  if (!config.config_path.empty() && std::filesystem::exists(config.config_path, ec)) {
    auto text = read_file(config.config_path);
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
    auto text = read_file(state);
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
  spdlog::info("pid={} uid={} reserved {}", s.holder.pid, s.holder.uid, name);
  sync_held();
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
                    ", pid " + std::to_string(l->holder.pid) + " " + l->holder.comm +
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

void Server::hold_port(const std::string& reservation, Protocol p, const IpAddress& a,
                       uint16_t port) {
  SocketSpec spec;
  spec.protocol = p;
  spec.address = a;
  spec.port = port;
  // TCP: listening, so that even a SO_REUSEADDR bind elsewhere fails (and early connections
  // queue for the service). UDP: no SO_REUSEADDR, which would let others bind it too.
  auto fd = make_bound_socket(spec, port);
  if (!fd) {
    spdlog::warn("cannot hold {} for reservation {}: {}", format_endpoint(p, a, port), reservation,
                 fd.error().message);
    return;
  }
  held_[held_key(p, port)] = Held{reservation, p, a, port, std::move(fd).value()};
}

void Server::sync_held() {
  // Drop holds whose reservation is gone or no longer held.
  for (auto it = held_.begin(); it != held_.end();) {
    bool keep = false;
    for (const Reservation* r : policy_.reservations_at(it->second.protocol, it->second.port)) {
      if (r->hold && r->name == it->second.reservation) keep = true;
    }
    it = keep ? std::next(it) : held_.erase(it);
  }
  for (const Reservation& r : policy_.reservations) {
    if (!r.hold) continue;
    IpAddress addr =
        r.addresses.empty() ? IpAddress::parse("0.0.0.0").value() : r.addresses.front();
    size_t count = 0;
    for (const PortRange& range : r.ports) {
      for (uint32_t port = range.first; port <= range.last; ++port) {
        if (++count > kMaxHeldPortsPerReservation) {
          spdlog::warn("reservation {}: holding only its first {} ports", r.name,
                       kMaxHeldPortsPerReservation);
          goto next_reservation;
        }
        for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
          if (!r.protocols.has(p) || held_.count(held_key(p, static_cast<uint16_t>(port))))
            continue;
          Endpoint ep{p, addr, static_cast<uint16_t>(port), false};
          if (registry_.in_use(ep)) continue;  // leased: it is held through the lease
          hold_port(r.name, p, addr, static_cast<uint16_t>(port));
        }
      }
    }
  next_reservation:;
  }
}

Result<UniqueFd> Server::take_held(const SocketSpec& spec) {
  auto it = held_.find(held_key(spec.protocol, spec.port));
  if (it == held_.end()) return UniqueFd();
  Held& h = it->second;
  const auto& o = spec.options;
  // Options that only work before bind() mean a new socket; the held one is closed first.
  bool fits =
      h.address == spec.address && spec.mode != Mode::kReuseport && !o.v6only &&
      !o.freebind.value_or(false) && o.device.empty() &&
      o.reuseaddr.value_or(spec.protocol == Protocol::kTcp) == (spec.protocol == Protocol::kTcp);
  UniqueFd fd = std::move(h.fd);
  held_.erase(it);
  if (!fits) return UniqueFd();  // closed now; the caller binds what was asked
  auto applied = apply_late_options(fd.get(), spec);
  if (!applied) return applied.error();
  return fd;
}

void Server::rehold_if_reserved(const Endpoint& ep, UniqueFd old) {
  for (const Reservation* r : policy_.reservations_at(ep.protocol, ep.port)) {
    if (!r->hold || held_.count(held_key(ep.protocol, ep.port))) continue;
    IpAddress addr =
        r->addresses.empty() ? IpAddress::parse("0.0.0.0").value() : r->addresses.front();
    // `old` is shut down (TCP: no longer listening), so with SO_REUSEADDR the new socket
    // binds while the old one still holds the port: no moment where the port is free. A UDP
    // socket has no such state; it must go first (a window of one bind call).
    if (ep.protocol == Protocol::kUdp) old.reset();
    hold_port(r->name, ep.protocol, addr, ep.port);
    break;
  }
  old.reset();
}

}  // namespace portbroker::broker
