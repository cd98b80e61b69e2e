// Dispatch: each request from the wire to the LeaseService and back, one log line per request
// that changes something, naming the peer's pid= and uid=.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>
#include <unordered_map>

#include "broker/daemon/server_internal.h"
#include "broker/os/names.h"
#include "broker/os/peer.h"
#include "ipc/codec.h"
#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"

namespace portbroker::broker {

void Server::handle_record(Session& s, Reply& reply) {
  try {
    capnp::FlatArrayMessageReader reader(recv_buf_.record(), ipc::reader_options());
    auto req = reader.getRoot<wire::Request>();
    if (req.getVersion() != wire::PROTOCOL_VERSION) {
      if (may_log(s.holder.uid)) {
        spdlog::info("pid={} uid={} speaks protocol version {}", s.holder.pid, s.holder.uid,
                     req.getVersion());
      }
      reply.error(make_error(ErrorCode::kUnsupportedVersion,
                             "protocol version " + std::to_string(req.getVersion()) +
                                 " is not supported; this daemon speaks version " +
                                 std::to_string(wire::PROTOCOL_VERSION)));
      return;
    }
    switch (req.which()) {
      case wire::Request::ACQUIRE:
        do_acquire(s, req.getAcquire(), reply);
        return;
      case wire::Request::RELEASE:
        do_release(s, req.getRelease(), reply);
        return;
      case wire::Request::LIST:
        do_list(s);
        return;
      case wire::Request::STATUS:
        do_status(reply);
        return;
      case wire::Request::RESERVE:
        do_reserve(s, req.getReserve(), reply);
        return;
      case wire::Request::UNRESERVE: {
        auto name = req.getUnreserve();
        do_unreserve(s, std::string_view(name.cStr(), name.size()), reply);
        return;
      }
      case wire::Request::RESERVATIONS:
        do_reservations(s);
        return;
      case wire::Request::RELOAD:
        do_reload(s, reply);
        return;
      case wire::Request::WHO:
        do_who(s, req.getWho(), reply);
        return;
      case wire::Request::CHECK:
        do_check(s, reply);
        return;
      case wire::Request::SHUTDOWN:
        do_shutdown(s, req.getShutdown(), reply);
        return;
      case wire::Request::UPGRADE:
        do_upgrade(s, reply);
        return;
      case wire::Request::EVENTS:
        do_events(s, req.getEvents(), reply);
        return;
      case wire::Request::METRICS:
        do_metrics(reply);
        return;
    }
    reply.error(make_error(ErrorCode::kUnknownRequest,
                           "unknown request kind " + std::to_string(static_cast<int>(req.which())) +
                               " (client newer than daemon?)"));
  } catch (const kj::Exception& e) {
    if (may_log(s.holder.uid)) {
      auto bytes = recv_buf_.record().asBytes();
      spdlog::info("pid={} uid={} sent a malformed request: {}", s.holder.pid, s.holder.uid,
                   hex_prefix(std::span<const unsigned char>(bytes.begin(), bytes.size())));
    }
    reply.root = reply.message.initRoot<wire::Reply>();
    reply.error(make_error(ErrorCode::kBadRequest,
                           std::string("malformed request: ") + e.getDescription().cStr()));
  } catch (const std::exception& e) {
    spdlog::error("pid={} uid={} request failed: {}", s.holder.pid, s.holder.uid, e.what());
    reply.root = reply.message.initRoot<wire::Reply>();
    reply.error(make_error(ErrorCode::kInternal, std::string("internal error: ") + e.what()));
  }
}

ipc::LeaseView lease_view(const Lease& l, const Binding* b, const std::string& comm) {
  // Every lease has its binding; a missing one still yields a whole view rather than a crash.
  static const Binding kNoBinding{};
  const Binding& binding = b != nullptr ? *b : kNoBinding;
  return ipc::LeaseView{.id = l.id,
                        .name = l.name,
                        .protocol = binding.endpoint.protocol,
                        .address = binding.endpoint.address,
                        .port = binding.endpoint.port,
                        .mode = binding.mode,
                        .holder = l.holder,
                        .comm = comm,
                        .session = l.session,
                        .created_at_ms = l.created_ms,
                        .state = l.lingering() ? "lingering" : "active",
                        .linger_s = l.linger_s,
                        .linger_until_ms = l.lingering_until_ms,
                        .token = {}};
}

void Server::do_acquire(Session& s, capnp::List<wire::SocketRequest>::Reader list, Reply& reply) {
  const Holder& h = s.holder;
  if (list.size() == 0 || list.size() > ipc::kMaxSocketsPerRequest) {
    reply.error(make_error(ErrorCode::kBadRequest, "an acquire asks for 1 to " +
                                                       std::to_string(ipc::kMaxSocketsPerRequest) +
                                                       " sockets, not " +
                                                       std::to_string(list.size())));
    return;
  }
  std::vector<SocketSpec> specs;
  specs.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    auto spec = ipc::spec_from_wire(list[i]);
    if (!spec) {
      reply.error(list.size() == 1
                      ? spec.error()
                      : make_error(spec.error().code, "socket " + std::to_string(i + 1) + ": " +
                                                          spec.error().message));
      return;
    }
    specs.push_back(std::move(spec).value());
  }

  const uint64_t began = uv_hrtime();
  // Every lease costs the daemon an fd: no uid may take so many that others are locked out.
  if (auto share = over_fd_share(h.uid, specs.size())) {
    spdlog::info("pid={} uid={} acquire refused: {}", h.pid, h.uid, share->message);
    reply.error(*share);
    return;
  }
  AcquireOutcome outcome = service_.acquire(s.id, specs);
  metrics_.observe_acquire(static_cast<double>(uv_hrtime() - began) / 1e9);
  log_notices();
  if (outcome.error) {
    if (outcome.whole_request) {
      spdlog::info("pid={} uid={} acquire refused: {}", h.pid, h.uid, outcome.error->message);
      reply.error(*outcome.error);
      return;
    }
    refuse_acquire(s, specs[outcome.failed_index], outcome.failed_index, specs.size(),
                   *outcome.error, reply);
    return;
  }

  auto out = reply.root.initAcquired(static_cast<unsigned>(outcome.granted.size()));
  const Registry& reg = service_.registry();
  for (size_t i = 0; i < outcome.granted.size(); ++i) {
    const Grant& g = outcome.granted[i];
    const Lease& l = *reg.find_lease(g.lease);
    auto view = lease_view(l, reg.find_binding(l.binding), l.holder.comm);
    view.token = l.token;  // to the holder only: it lets another uid take the lease back
    ipc::grant_to_wire(view, static_cast<uint32_t>(i), out[static_cast<unsigned>(i)]);
    reply.fds.push_back(g.fd);
    if (g.reclaimed) {
      spdlog::info("pid={} uid={} took back lingering lease {}", h.pid, h.uid, l.id);
    } else if (spdlog::should_log(spdlog::level::info)) {  // spares the formatting at warn level
      const Binding& b = *reg.find_binding(l.binding);
      spdlog::info("pid={} uid={} acquired lease {}: {} {}", h.pid, h.uid, l.id,
                   format_endpoint(b.endpoint.protocol, b.endpoint.address, b.endpoint.port),
                   mode_name(b.mode));
    }
  }
}

void Server::do_release(Session& s, uint64_t lease_id, Reply& reply) {
  auto released = service_.release(s.id, lease_id);
  log_notices();
  if (!released) return reply.error(released.error());
  spdlog::info("pid={} uid={} {} lease {}", s.holder.pid, s.holder.uid,
               *released ? "revoked" : "released", lease_id);
  reply.root.setReleased();
}

void Server::do_list(Session& s) {
  // In parts, each looking its leases up again: a lease that ends while the listing goes out is
  // left out of the parts still to come, one that begins is not in it.
  auto ids = std::make_shared<std::vector<uint64_t>>();
  ids->reserve(service_.registry().lease_count());
  for (const Lease* l : service_.registry().all_leases()) ids->push_back(l->id);
  s.parts = std::make_unique<Parts>();
  s.parts->total = ids->size();
  s.parts->fill = [this, ids](wire::Reply::Builder root, size_t begin, size_t end) {
    const Registry& reg = service_.registry();
    std::vector<const Lease*> leases;
    leases.reserve(end - begin);
    for (size_t i = begin; i < end; ++i) {
      if (const Lease* l = reg.find_lease((*ids)[i])) leases.push_back(l);
    }
    auto out = root.initLeases(static_cast<unsigned>(leases.size()));
    // A holder may have exec'd since it connected (`portbroker exec` does): show what runs now.
    std::unordered_map<uint64_t, std::string> comm_now;
    for (size_t i = 0; i < leases.size(); ++i) {
      const Lease& l = *leases[i];
      auto [it, fresh] = comm_now.try_emplace(l.session);
      if (fresh) it->second = service_.current_comm(l);
      auto view = lease_view(l, reg.find_binding(l.binding), it->second);
      view.no_copy = !service_.has_copy(l);
      ipc::lease_to_wire(view, out[static_cast<unsigned>(i)]);
    }
  };
}

void Server::do_status(Reply& reply) {
  const Policy& policy = service_.policy();
  auto st = reply.root.initStatus();
  st.setVersion(PORTBROKER_VERSION);
  st.setPid(::getpid());
  st.setStartedAt(started_at_ms_);
  st.setSessions(static_cast<uint32_t>(sessions_.size()));
  st.setLeases(static_cast<uint32_t>(service_.registry().lease_count()));
  if (!policy.pools.empty() && !policy.pools.front().ports.empty()) {
    st.setPoolLow(policy.pools.front().ports.front().first);
    st.setPoolHigh(policy.pools.front().ports.back().last);
  }
  st.setOpenFds(static_cast<uint32_t>(count_open_fds()));
  st.setSocketPath(config_.socket_path);
}

ReservationInfo reservation_info(const Reservation& r) {
  ReservationInfo out;
  out.name = r.name;
  out.tcp = r.protocols.tcp;
  out.udp = r.protocols.udp;
  if (!r.addresses.empty()) out.address = r.addresses.front();
  if (!r.ports.empty()) {
    out.port_first = r.ports.front().first;
    out.port_last = r.ports.back().last;
  }
  out.hold = r.hold;
  out.no_listen = !r.listen;
  out.origin = r.runtime ? "runtime (portbroker reserve)" : r.origin.to_string();
  out.principals = r.principals.to_string();
  out.target = r.protocols.tcp && r.protocols.udp ? "both:" : r.protocols.to_string() + ":";
  // [::1] is written in brackets in a target, as in a socket spec.
  if (r.addresses.empty()) {
    out.target += "any";
  } else if (r.addresses.front().family == AF_INET6) {
    out.target += "[" + r.addresses.front().to_string() + "]";
  } else {
    out.target += r.addresses.front().to_string();
  }
  std::string ports;
  for (const PortRange& p : r.ports) ports += (ports.empty() ? "" : ",") + p.to_string();
  out.target += ":" + ports;
  return out;
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
  if (r.getNoListen()) {
    if (auto ok = set_no_listen(*res); !ok) return reply.error(ok.error());
  }
  auto reserved = service_.reserve(std::move(res).value());
  log_notices();
  if (!reserved) return reply.error(reserved.error());
  ++policy_generation_;
  spdlog::info("pid={} uid={} reserved {}", s.holder.pid, s.holder.uid, *reserved);
  reply.root.setDone();
}

void Server::do_unreserve(Session& s, std::string_view name, Reply& reply) {
  if (!require_root(s, "unreserve", reply)) return;
  auto removed = service_.unreserve(name);
  log_notices();
  if (!removed) return reply.error(removed.error());
  ++policy_generation_;
  spdlog::info("pid={} uid={} unreserved {}", s.holder.pid, s.holder.uid, name);
  reply.root.setDone();
}

void Server::do_reservations(Session& s) {
  auto infos = std::make_shared<std::vector<ReservationInfo>>();
  for (const Reservation& r : service_.policy().reservations) {
    infos->push_back(reservation_info(r));
  }
  s.parts = std::make_unique<Parts>();
  s.parts->total = infos->size();
  s.parts->fill = [infos](wire::Reply::Builder root, size_t begin, size_t end) {
    auto out = root.initReservations(static_cast<unsigned>(end - begin));
    for (size_t i = begin; i < end; ++i) {
      ipc::reservation_to_wire((*infos)[i], out[static_cast<unsigned>(i - begin)]);
    }
  };
}

Result<std::vector<std::string>> Server::reload() {
  auto next = load_policy(config_.policy_source());
  if (!next) {
    spdlog::error("reload failed; the old policy stays in force: {}", next.error().message);
    return next.error();
  }
  auto refused = service_.replace_policy(std::move(next).value());
  ++policy_generation_;
  const Policy& policy = service_.policy();
  spdlog::info("policy reloaded from {}; {} lease(s) kept that it would now refuse", policy.source,
               refused.size());
  for (const auto& line : refused) spdlog::warn("policy would refuse {}", line);
  for (const auto& line : policy.lint()) spdlog::warn("policy: {}", line);
  log_notices();
  return refused;
}

void Server::do_shutdown(Session& s, wire::ShutdownRequest::Reader r, Reply& reply) {
  if (!require_root(s, "shutdown", reply)) return;
  shutdown_revoke_all_ = r.getRevokeAll();
  spdlog::info("pid={} uid={} asked the daemon to stop{}", s.holder.pid, s.holder.uid,
               shutdown_revoke_all_ ? ", revoking every lease" : "");
  reply.root.setDone();
  // After this reply has gone out: the next loop iteration.
  uv_timer_start(
      &shutdown_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<Server*>(t->data);
        if (self->on_shutdown_request) self->on_shutdown_request(self->shutdown_revoke_all_);
      },
      0, 0);
}

void Server::do_upgrade(Session& s, Reply& reply) {
  if (!require_root(s, "upgrade", reply)) return;
  spdlog::info("pid={} uid={} asked for an upgrade in place", s.holder.pid, s.holder.uid);
  reply.root.setDone();
  request_upgrade();
}

void Server::do_reload(Session& s, Reply& reply) {
  if (!require_root(s, "reload", reply)) return;
  spdlog::info("pid={} uid={} asked for a reload", s.holder.pid, s.holder.uid);
  auto refused = reload();
  if (!refused) return reply.error(refused.error());
  auto lines = std::make_shared<std::vector<std::string>>(std::move(refused).value());
  s.parts = std::make_unique<Parts>();
  s.parts->total = lines->size();
  s.parts->fill = [lines, source = service_.policy().source](wire::Reply::Builder root,
                                                             size_t begin, size_t end) {
    auto out = root.initReloaded();
    out.setSource(source);
    auto list = out.initRefusedLeases(static_cast<unsigned>(end - begin));
    for (size_t i = begin; i < end; ++i) list.set(static_cast<unsigned>(i - begin), (*lines)[i]);
  };
}

}  // namespace portbroker::broker
