#include "ipc/codec.h"

#include "ipc/framing.h"

namespace portbroker::ipc {

namespace {

std::vector<std::string> texts_from_wire(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  out.reserve(list.size());
  for (auto t : list) out.push_back(text_from_wire(t));
  return out;
}

template <typename Builder>
void texts_to_wire(const std::vector<std::string>& texts, Builder list) {
  for (size_t i = 0; i < texts.size(); ++i) list.set(static_cast<unsigned>(i), texts[i]);
}

// Decodes every element of a wire list, stopping at the first bad one.
template <typename List, typename Decode>
auto all_from_wire(List list, Decode decode)
    -> Result<std::vector<std::decay_t<decltype(decode(list[0]).value())>>> {
  std::vector<std::decay_t<decltype(decode(list[0]).value())>> out;
  out.reserve(list.size());
  for (auto element : list) {
    auto decoded = decode(element);
    if (!decoded) return decoded.error();
    out.push_back(std::move(decoded).value());
  }
  return out;
}

template <typename Items, typename ListBuilder, typename Encode>
void all_to_wire(const Items& items, ListBuilder list, Encode encode) {
  for (size_t i = 0; i < items.size(); ++i) encode(items[i], list[static_cast<unsigned>(i)]);
}

}  // namespace

std::string text_from_wire(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

// --- requests -----------------------------------------------------------------------------

void acquire_to_wire(std::span<const SocketSpec> specs, wire::Request::Builder out) {
  auto list = out.initAcquire(static_cast<unsigned>(specs.size()));
  all_to_wire(specs, list, spec_to_wire);
}

Result<std::vector<SocketSpec>> acquire_from_wire(capnp::List<wire::SocketRequest>::Reader in) {
  if (in.size() == 0 || in.size() > kMaxSocketsPerRequest) {
    return make_error(ErrorCode::kBadRequest, "an acquire asks for 1 to " +
                                                  std::to_string(kMaxSocketsPerRequest) +
                                                  " sockets, not " + std::to_string(in.size()));
  }
  std::vector<SocketSpec> specs;
  specs.reserve(in.size());
  for (unsigned i = 0; i < in.size(); ++i) {
    auto spec = spec_from_wire(in[i]);
    if (!spec) {
      if (in.size() == 1) return spec.error();
      return make_error(spec.error().code,
                        "socket " + std::to_string(i + 1) + ": " + spec.error().message);
    }
    specs.push_back(std::move(spec).value());
  }
  return specs;
}

void who_query_to_wire(const WhoQuery& query, wire::WhoRequest::Builder out) {
  out.setProtocol(protocol_to_wire(query.protocol));
  out.setPort(query.port);
}

Result<WhoQuery> who_query_from_wire(wire::WhoRequest::Reader in) {
  auto protocol = protocol_from_wire(in.getProtocol());
  if (!protocol) return protocol.error();
  if (in.getPort() == 0) {
    return make_error(ErrorCode::kBadRequest, "who needs a port from 1 to 65535");
  }
  return WhoQuery{*protocol, in.getPort()};
}

void reservation_to_wire(const ReservationInfo& r, wire::Reservation::Builder out) {
  out.setName(r.name);
  out.setTarget(r.target);
  out.setTcp(r.tcp);
  out.setUdp(r.udp);
  if (r.address) out.setAddress(address_bytes(*r.address));
  out.setPortFirst(r.port_first);
  out.setPortLast(r.port_last);
  texts_to_wire(r.users, out.initUsers(static_cast<unsigned>(r.users.size())));
  texts_to_wire(r.groups, out.initGroups(static_cast<unsigned>(r.groups.size())));
  out.setHold(r.hold);
  out.setNoListen(r.no_listen);
  out.setOrigin(r.origin);
  out.setPrincipals(r.principals);
}

Result<ReservationInfo> reservation_from_wire(wire::Reservation::Reader in) {
  ReservationInfo out;
  out.name = text_from_wire(in.getName());
  out.target = text_from_wire(in.getTarget());
  out.tcp = in.getTcp();
  out.udp = in.getUdp();
  if (in.hasAddress() && in.getAddress().size() > 0) {
    auto address = address_from_wire(in.getAddress());
    if (!address) return address.error();
    out.address = *address;
  }
  out.port_first = in.getPortFirst();
  out.port_last = in.getPortLast();
  if (out.port_first > out.port_last) {
    return make_error(ErrorCode::kBadRequest, "reservation " + out.name + " has the port range " +
                                                  std::to_string(out.port_first) + "-" +
                                                  std::to_string(out.port_last) + ", inverted");
  }
  out.users = texts_from_wire(in.getUsers());
  out.groups = texts_from_wire(in.getGroups());
  out.hold = in.getHold();
  out.no_listen = in.getNoListen();
  out.origin = text_from_wire(in.getOrigin());
  out.principals = text_from_wire(in.getPrincipals());
  return out;
}

// --- replies ------------------------------------------------------------------------------

void error_to_wire(const Error& e, wire::Reply::Builder out) {
  auto err = out.initError();
  err.setCode(error_code_to_wire(e.code));
  err.setMessage(e.message);
}

Error error_from_wire(wire::Reply::Reader in) {
  auto err = in.getError();
  ErrorCode code = error_code_from_wire(err.getCode());
  std::string message = text_from_wire(err.getMessage());
  if (message.empty()) message = error_code_name(code);
  return make_error(code, std::move(message));
}

LeaseView view_of(const LeaseInfo& lease) {
  return LeaseView{.id = lease.id,
                   .name = lease.name,
                   .protocol = lease.protocol,
                   .address = lease.address,
                   .port = lease.port,
                   .mode = lease.mode,
                   .holder = lease.holder,
                   .comm = lease.holder.comm,
                   .session = lease.session,
                   .created_at_ms = lease.created_at_ms,
                   .state = lease.state,
                   .linger_s = lease.linger_s,
                   .linger_until_ms = lease.linger_until_ms,
                   .token = lease.token,
                   .no_copy = lease.no_copy};
}

void lease_to_wire(const LeaseView& lease, wire::LeaseInfo::Builder out) {
  out.setId(lease.id);
  out.setName(lease.name);
  out.setProtocol(protocol_to_wire(lease.protocol));
  out.setAddress(address_bytes(lease.address));
  out.setPort(lease.port);
  out.setMode(mode_to_wire(lease.mode));
  auto holder = out.initHolder();
  holder.setPid(lease.holder.pid);
  holder.setUid(lease.holder.uid);
  holder.setGid(lease.holder.gid);
  holder.setComm(lease.comm);
  holder.setCgroup(lease.holder.cgroup);
  out.setSession(lease.session);
  out.setCreatedAt(lease.created_at_ms);
  out.setState(lease.state);
  out.setLinger(lease.linger_s);
  out.setLingerUntil(lease.linger_until_ms);
  if (lease.token.size() > 0) out.setToken(lease.token);
  out.setNoCopy(lease.no_copy);
}

void lease_to_wire(const LeaseInfo& lease, wire::LeaseInfo::Builder out) {
  lease_to_wire(view_of(lease), out);
}

Result<LeaseInfo> lease_from_wire(wire::LeaseInfo::Reader in) {
  auto protocol = protocol_from_wire(in.getProtocol());
  if (!protocol) return protocol.error();
  auto mode = mode_from_wire(in.getMode());
  if (!mode) return mode.error();
  auto address = address_from_wire(in.getAddress());
  if (!address) return address.error();
  LeaseInfo out;
  out.id = in.getId();
  out.name = text_from_wire(in.getName());
  out.protocol = *protocol;
  out.address = *address;
  out.port = in.getPort();
  out.mode = *mode;
  auto holder = in.getHolder();
  out.holder.pid = holder.getPid();
  out.holder.uid = holder.getUid();
  out.holder.gid = holder.getGid();
  out.holder.comm = text_from_wire(holder.getComm());
  out.holder.cgroup = text_from_wire(holder.getCgroup());
  out.session = in.getSession();
  out.created_at_ms = in.getCreatedAt();
  out.state = text_from_wire(in.getState());
  out.linger_s = in.getLinger();
  out.linger_until_ms = in.getLingerUntil();
  out.token = text_from_wire(in.getToken());
  out.no_copy = in.getNoCopy();
  return out;
}

void leases_to_wire(std::span<const LeaseInfo> leases, wire::Reply::Builder out) {
  auto list = out.initLeases(static_cast<unsigned>(leases.size()));
  all_to_wire(leases, list, [](const LeaseInfo& l, auto b) { lease_to_wire(l, b); });
}

Result<std::vector<LeaseInfo>> leases_from_wire(capnp::List<wire::LeaseInfo>::Reader in) {
  return all_from_wire(in, lease_from_wire);
}

void grant_to_wire(const LeaseView& lease, uint32_t fd_index, wire::Granted::Builder out) {
  out.setFdIndex(fd_index);
  lease_to_wire(lease, out.initLease());
}

Result<std::vector<GrantedLease>> grants_from_wire(capnp::List<wire::Granted>::Reader in,
                                                   size_t asked, size_t fds_received) {
  if (in.size() != asked) {
    return make_error(ErrorCode::kBadRequest, "asked for " + std::to_string(asked) +
                                                  " sockets, granted " + std::to_string(in.size()));
  }
  if (fds_received != asked) {
    return make_error(ErrorCode::kBadRequest, std::to_string(asked) + " sockets granted but " +
                                                  std::to_string(fds_received) + " fds received");
  }
  // An acquire asks for at most 64 sockets: one bit per fd index.
  static_assert(kMaxSocketsPerRequest <= 64);
  if (asked > kMaxSocketsPerRequest) {
    return make_error(ErrorCode::kBadRequest, std::to_string(asked) + " sockets granted");
  }
  uint64_t used = 0;
  std::vector<GrantedLease> out;
  out.reserve(asked);
  for (auto granted : in) {
    uint32_t index = granted.getFdIndex();
    if (index >= asked || (used & (uint64_t{1} << index)) != 0) {
      return make_error(ErrorCode::kBadRequest,
                        "bad or repeated fd index " + std::to_string(index));
    }
    used |= uint64_t{1} << index;
    auto lease = lease_from_wire(granted.getLease());
    if (!lease) return lease.error();
    out.push_back(GrantedLease{std::move(lease).value(), index});
  }
  return out;
}

void status_to_wire(const DaemonStatus& status, wire::Status::Builder out) {
  out.setVersion(status.version);
  out.setPid(status.pid);
  out.setStartedAt(status.started_at_ms);
  out.setSessions(status.sessions);
  out.setLeases(status.leases);
  out.setPoolLow(status.pool_low);
  out.setPoolHigh(status.pool_high);
  out.setOpenFds(status.open_fds);
  out.setSocketPath(status.socket_path);
}

DaemonStatus status_from_wire(wire::Status::Reader in) {
  DaemonStatus out;
  out.version = text_from_wire(in.getVersion());
  out.pid = in.getPid();
  out.started_at_ms = in.getStartedAt();
  out.sessions = in.getSessions();
  out.leases = in.getLeases();
  out.pool_low = in.getPoolLow();
  out.pool_high = in.getPoolHigh();
  out.open_fds = in.getOpenFds();
  out.socket_path = text_from_wire(in.getSocketPath());
  return out;
}

void reservations_to_wire(std::span<const ReservationInfo> reservations, wire::Reply::Builder out) {
  auto list = out.initReservations(static_cast<unsigned>(reservations.size()));
  all_to_wire(reservations, list, reservation_to_wire);
}

Result<std::vector<ReservationInfo>> reservations_from_wire(
    capnp::List<wire::Reservation>::Reader in) {
  return all_from_wire(in, reservation_from_wire);
}

void reload_to_wire(const ReloadReport& report, wire::ReloadResult::Builder out) {
  out.setSource(report.source);
  texts_to_wire(report.refused_leases,
                out.initRefusedLeases(static_cast<unsigned>(report.refused_leases.size())));
}

ReloadReport reload_from_wire(wire::ReloadResult::Reader in) {
  return ReloadReport{text_from_wire(in.getSource()), texts_from_wire(in.getRefusedLeases())};
}

void outside_to_wire(const OutsideHolder& holder, wire::OutsideHolder::Builder out) {
  out.setProtocol(protocol_to_wire(holder.protocol));
  out.setAddress(address_bytes(holder.address));
  out.setPort(holder.port);
  out.setState(holder.state);
  out.setPid(holder.pid);
  out.setUid(holder.uid);
  out.setComm(holder.comm);
}

Result<OutsideHolder> outside_from_wire(wire::OutsideHolder::Reader in) {
  auto protocol = protocol_from_wire(in.getProtocol());
  if (!protocol) return protocol.error();
  auto address = address_from_wire(in.getAddress());
  if (!address) return address.error();
  OutsideHolder out;
  out.protocol = *protocol;
  out.address = *address;
  out.port = in.getPort();
  out.state = text_from_wire(in.getState());
  out.pid = in.getPid();
  out.uid = in.getUid();
  out.comm = text_from_wire(in.getComm());
  return out;
}

void who_to_wire(const WhoReport& report, wire::WhoReply::Builder out) {
  out.setProtocol(protocol_to_wire(report.protocol));
  out.setPort(report.port);
  all_to_wire(report.leases, out.initLeases(static_cast<unsigned>(report.leases.size())),
              [](const LeaseInfo& l, auto b) { lease_to_wire(l, b); });
  all_to_wire(report.outside, out.initOutside(static_cast<unsigned>(report.outside.size())),
              outside_to_wire);
  all_to_wire(report.reservations,
              out.initReservations(static_cast<unsigned>(report.reservations.size())),
              reservation_to_wire);
  texts_to_wire(report.pools, out.initPools(static_cast<unsigned>(report.pools.size())));
  out.setInEphemeralRange(report.in_ephemeral_range);
  out.setGuarded(report.guarded);
  out.setHeld(report.held);
}

Result<WhoReport> who_from_wire(wire::WhoReply::Reader in) {
  auto protocol = protocol_from_wire(in.getProtocol());
  if (!protocol) return protocol.error();
  auto leases = leases_from_wire(in.getLeases());
  if (!leases) return leases.error();
  auto outside = all_from_wire(in.getOutside(), outside_from_wire);
  if (!outside) return outside.error();
  auto reservations = reservations_from_wire(in.getReservations());
  if (!reservations) return reservations.error();
  WhoReport out;
  out.protocol = *protocol;
  out.port = in.getPort();
  out.leases = std::move(leases).value();
  out.outside = std::move(outside).value();
  out.reservations = std::move(reservations).value();
  out.pools = texts_from_wire(in.getPools());
  out.in_ephemeral_range = in.getInEphemeralRange();
  out.guarded = in.getGuarded();
  out.held = in.getHeld();
  return out;
}

void events_query_to_wire(const EventsQuery& q, wire::EventsRequest::Builder out) {
  out.setReplay(q.since.has_value());
  out.setSince(q.since.value_or(0));
}

EventsQuery events_query_from_wire(wire::EventsRequest::Reader in) {
  EventsQuery q;
  if (in.getReplay()) q.since = in.getSince();
  return q;
}

void event_to_wire(const Event& e, wire::Event::Builder out) {
  out.setSeq(e.seq);
  out.setTime(e.time_ms);
  out.setKind(e.kind);
  out.setLease(e.lease);
  out.setName(e.name);
  out.setEndpoint(e.endpoint);
  out.setPort(e.port);
  out.setMode(e.mode);
  out.setPid(e.pid);
  out.setUid(e.uid);
  out.setComm(e.comm);
  out.setCode(error_code_to_wire(e.code));
  out.setReason(e.reason);
  out.setConflictsWith(e.conflicts_with);
  out.setCount(e.count);
}

Result<Event> event_from_wire(wire::Event::Reader in) {
  Event e;
  e.seq = in.getSeq();
  e.time_ms = in.getTime();
  e.kind = text_from_wire(in.getKind());
  if (e.kind.empty()) return make_error(ErrorCode::kBadRequest, "an event without a kind");
  e.lease = in.getLease();
  e.name = text_from_wire(in.getName());
  e.endpoint = text_from_wire(in.getEndpoint());
  e.port = in.getPort();
  e.mode = text_from_wire(in.getMode());
  e.pid = in.getPid();
  e.uid = in.getUid();
  e.comm = text_from_wire(in.getComm());
  e.code = error_code_from_wire(in.getCode());
  e.reason = text_from_wire(in.getReason());
  e.conflicts_with = text_from_wire(in.getConflictsWith());
  e.count = in.getCount();
  return e;
}

void problems_to_wire(std::span<const Problem> problems, wire::Reply::Builder out) {
  auto list = out.initProblems(static_cast<unsigned>(problems.size()));
  all_to_wire(problems, list, [](const Problem& p, wire::Problem::Builder b) {
    b.setKind(p.kind);
    b.setMessage(p.message);
  });
}

std::vector<Problem> problems_from_wire(capnp::List<wire::Problem>::Reader in) {
  std::vector<Problem> out;
  out.reserve(in.size());
  for (auto p : in) out.push_back({text_from_wire(p.getKind()), text_from_wire(p.getMessage())});
  return out;
}

}  // namespace portbroker::ipc
