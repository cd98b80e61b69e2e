#include "broker/service/lease_service.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>

#include "broker/os/files.h"
#include "broker/os/peer.h"
#include "broker/os/socket_factory.h"
#include "broker/os/sysctl.h"
#include "broker/service/policy_source.h"

namespace portbroker::broker {

namespace {

bool is_bound(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  return ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port != 0
                                 : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port != 0;
}

// The pool port at position `k` of the pool's ranges taken end to end.
uint16_t nth_pool_port(const Pool& pool, size_t k) {
  for (const PortRange& r : pool.ports) {
    if (k < r.size()) return static_cast<uint16_t>(r.first + k);
    k -= r.size();
  }
  return pool.ports.front().first;
}

size_t pool_size(const Pool& pool) {
  size_t size = 0;
  for (const PortRange& r : pool.ports) size += r.size();
  return size;
}

}  // namespace

void LeaseService::lease_event(const char* kind, const Lease& l, const Endpoint& ep, Mode mode) {
  Event& e = events_.emplace_back();  // built in place: an Event is eight strings to move
  e.time_ms = unix_now_ms();
  e.kind = kind;
  e.lease = l.id;
  e.name = l.name;
  e.endpoint = format_endpoint(ep.protocol, ep.address, ep.port);
  e.port = ep.port;
  e.mode = mode_name(mode);
  e.pid = l.holder.pid;
  e.uid = l.holder.uid;
  e.comm = l.holder.comm;
}

void LeaseService::lease_event(const char* kind, uint64_t id) {
  const Lease* l = registry_.find_lease(id);
  const Binding* b = l != nullptr ? registry_.find_binding(l->binding) : nullptr;
  if (b != nullptr) lease_event(kind, *l, b->endpoint, b->mode);
}

void LeaseService::daemon_event(Event e) {
  e.time_ms = unix_now_ms();
  events_.push_back(std::move(e));
}

void LeaseService::refusal_event(const Session& s, const SocketSpec* spec, const Error& err) {
  Event e;
  e.time_ms = unix_now_ms();
  e.kind = "refused";
  e.pid = s.holder.pid;
  e.uid = s.holder.uid;
  e.comm = s.holder.comm;
  e.code = err.code;
  e.reason = err.message;
  if (spec != nullptr) {
    e.name = spec->name;
    e.endpoint = format_endpoint(spec->protocol, spec->address, spec->port);
    e.port = spec->port;
    e.mode = mode_name(spec->mode);
    if (err.code == ErrorCode::kConflict) {
      Endpoint ep{spec->protocol, spec->address, spec->port,
                  is_dual_stack(*spec, !dual_stack_default_)};
      for (uint64_t bid : registry_.overlapping(ep)) {
        const Binding* b = registry_.find_binding(bid);
        if (b == nullptr) continue;
        for (uint64_t id : b->leases) {
          const Lease* l = registry_.find_lease(id);
          if (l == nullptr || !e.conflicts_with.empty()) continue;
          e.conflicts_with =
              "lease " + std::to_string(l->id) + " (" +
              format_endpoint(b->endpoint.protocol, b->endpoint.address, b->endpoint.port) +
              ", pid " + std::to_string(l->holder.pid) + " " + l->holder.comm + ", uid " +
              std::to_string(l->holder.uid) + ")";
        }
      }
    }
  }
  events_.push_back(std::move(e));
}

LeaseService::Gauges LeaseService::gauges() const {
  Gauges g;
  for (const auto& [key, entry] : held_) {
    if (!entry.sockets.empty()) ++g.held_ports;
  }
  g.hold_failures = hold_failures_.size();
  g.guard_entries = guard_.entries();
  g.journal_bytes = journal_ ? journal_->log_bytes() : 0;
  return g;
}

LeaseService::LeaseService(ServiceConfig config, Policy policy, SysCalls& sys)
    : config_(std::move(config)),
      policy_(std::move(policy)),
      sys_(sys),
      guard_(config_.state_dir),
      fd_store_(config_.fd_store) {}

LeaseService::~LeaseService() = default;

Result<RestoreReport> LeaseService::start(Inheritance inherited) {
  dual_stack_default_ = !read_bindv6only();
  ipv6_available_ = UniqueFd(sys_.socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0)).valid();
  RestoreReport report;
  if (!config_.journal_dir.empty()) {
    auto opened = JournalFile::open(config_.journal_dir);
    if (!opened) return opened.error();
    journal_.emplace(std::move(opened).value());
    for (const std::string& line : journal_->ignored()) notice(Notice::kWarn, "journal: " + line);
    restore_leases(journal_->state(), inherited, report);
    // The journal now says what this daemon holds, no more.
    if (auto compacted = journal_->compact(); !compacted) {
      notice(Notice::kWarn, "journal not compacted: " + compacted.error().message);
    }
  }
  // What was passed on but no lease claims (its holder died while no daemon ran) is not ours
  // to keep: out of the fd store too, or the service manager's copy would keep its port bound
  // for good, and nobody could lease it again.
  for (const auto& [cookie, fd] : inherited.sockets) {
    fd_store_.remove(socket_fd_name(cookie));
  }
  inherited.sockets.clear();
  adopt_holds(std::move(inherited.holds));
  sync_held();
  apply_guard();
  Event started;
  started.kind = "daemon-started";
  started.count = report.restored;
  started.reason = std::to_string(report.restored) + " lease(s) restored, " +
                   std::to_string(report.dropped) + " ended while the daemon was away";
  daemon_event(std::move(started));
  return report;
}

uint64_t LeaseService::next_session_id() const {
  uint64_t next = journal_ ? journal_->state().next_session() : 1;
  for (const auto& [id, s] : sessions_) next = std::max(next, id + 1);
  for (const Lease* l : registry_.all_leases()) next = std::max(next, l->session + 1);
  return next;
}

int LeaseService::keep(std::unordered_map<uint64_t, KeptSocket>& table, uint64_t key, UniqueFd fd) {
  const int raw = fd.get();
  const uint64_t cookie = socket_cookie(raw);
  if (fd_store_.enabled()) {
    // FDPOLL=0: the manager must not drop it on a hang-up. A bound UDP socket, or a TCP one
    // whose listener a revoke shut down, is still ours until we say FDSTOREREMOVE=1.
    if (auto stored = fd_store_.store(raw, socket_fd_name(cookie), false); !stored) {
      notice(Notice::kWarn, stored.error().message);
    }
  }
  table[key] = KeptSocket{std::move(fd), cookie};
  return raw;
}

UniqueFd LeaseService::release_kept(std::unordered_map<uint64_t, KeptSocket>& table, uint64_t key) {
  auto it = table.find(key);
  if (it == table.end()) return {};
  UniqueFd fd = std::move(it->second.fd);
  if (fd_store_.enabled()) fd_store_.remove(socket_fd_name(it->second.cookie));
  table.erase(it);
  return fd;
}

std::vector<std::pair<int, std::string>> LeaseService::handover_fds() const {
  std::vector<std::pair<int, std::string>> out;
  for (const auto* table : {&binding_sockets_, &member_sockets_}) {
    for (const auto& [key, kept] : *table)
      out.emplace_back(kept.fd.get(), socket_fd_name(kept.cookie));
  }
  for (const auto& [key, entry] : held_) {
    for (const HeldSocket& h : entry.sockets) {
      out.emplace_back(h.fd.get(), hold_fd_name(socket_cookie(h.fd.get())));
    }
  }
  return out;
}

Result<void> LeaseService::record(const journal::Record& r) {
  if (!journal_) return {};
  if (auto ok = journal_->append(r); !ok) return ok;
  compact_if_due();
  return {};
}

void LeaseService::compact_if_due() {
  if (!journal_ || !journal_->compaction_due()) return;
  if (auto compacted = journal_->compact(); !compacted) {
    notice(Notice::kWarn, "journal not compacted: " + compacted.error().message);
  }
}

void LeaseService::record_or_warn(const journal::Record& r) {
  if (auto ok = record(r); !ok) {
    notice(Notice::kWarn, std::string("journal: ") + journal::record_kind_name(r) +
                              " not recorded: " + ok.error().message);
  }
}

journal::Record LeaseService::granted_record(uint64_t lease, const Session& s) const {
  const Lease& l = *registry_.find_lease(lease);
  const Binding& b = *registry_.find_binding(l.binding);
  uint64_t cookie = 0;
  const auto& table = b.mode == Mode::kReuseport ? member_sockets_ : binding_sockets_;
  if (auto it = table.find(b.mode == Mode::kReuseport ? lease : b.id); it != table.end()) {
    cookie = it->second.cookie;
  }
  journal::LeaseGranted g;
  g.lease = l.id;
  g.binding = b.id;
  g.endpoint = b.endpoint;
  g.mode = b.mode;
  g.options = b.options;
  g.owner_uid = b.owner_uid;
  g.name = l.name;
  g.session = l.session;
  g.holder = l.holder;
  g.holder_start_time = s.start_time;
  g.created_ms = l.created_ms;
  g.linger_s = l.linger_s;
  g.token = l.token;
  g.cookie = cookie;
  return g;
}

void LeaseService::stop() {
  stopping_ = true;
  for (uint64_t id : registry_.expired(INT64_MAX)) end_lease(id, true, "revoked");  // lingering
  std::vector<uint64_t> all;
  for (const auto& [id, s] : sessions_) all.push_back(id);
  for (uint64_t id : all) end_session(id);
  for (const auto& [key, entry] : held_) {
    for (const HeldSocket& h : entry.sockets) unstore_hold(h);
  }
  held_.clear();
  for (Notice& n : guard_.remove()) notices_.push_back(std::move(n));
}

void LeaseService::detach() {
  // Not release_kept: the fd store keeps its copies for the next daemon.
  binding_sockets_.clear();
  member_sockets_.clear();
  held_.clear();
  registry_ = Registry();
  sessions_.clear();
}

void LeaseService::rehome_session(uint64_t session, const Holder& holder, int pidfd) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  // Only who holds it changes: what the session may do stays decided by the identity the
  // kernel gave at connect (an fd passed to a more privileged process gains nothing).
  s.holder = holder;
  s.pidfd = pidfd;
  s.start_time = process_start_time(holder.pid);
  std::vector<journal::Record> records;
  for (uint64_t id : registry_.leases_of_session(session)) {
    registry_.rehome(id, holder);
    records.emplace_back(journal::LeaseReclaimed{id, session, holder, s.start_time, 0});
  }
  if (journal_ && !records.empty()) {
    if (auto ok = journal_->append(records); !ok) {
      notice(Notice::kWarn, "journal: new holder not recorded: " + ok.error().message);
    }
  }
}

UidLimits LeaseService::limits_for(uint32_t uid) const {
  if (uid == 0) return config_.root_limits;
  return UidLimits{config_.max_connections_per_uid.value_or(policy_.limits.max_connections_per_uid),
                   config_.max_leases_per_uid.value_or(policy_.limits.max_leases_per_uid)};
}

void LeaseService::open_session(uint64_t session, const Holder& holder, const Principal& principal,
                                int pidfd) {
  sessions_[session] = Session{holder, principal, pidfd,
                               config_.journal_dir.empty() ? 0 : process_start_time(holder.pid)};
}

LeaseService::SessionEnd LeaseService::end_session(uint64_t session) {
  SessionEnd out;
  auto leases = registry_.leases_of_session(session);
  const int64_t now = unix_now_ms();
  for (auto it = leases.rbegin(); it != leases.rend(); ++it) {
    const Lease* l = registry_.find_lease(*it);
    if (l != nullptr && l->linger_s > 0 && !stopping_) {
      const int64_t until = now + int64_t{l->linger_s} * 1000;
      registry_.set_lingering(*it, until);
      record_or_warn(journal::LeaseLingering{*it, until});
      lease_event("lingering", *it);
      ++out.lingering;
    } else {
      end_lease(*it, true, stopping_ ? "revoked" : "holder-exited");
      ++out.released;
    }
  }
  sessions_.erase(session);
  return out;
}

std::vector<HeldLease> LeaseService::held_by(uint32_t uid, uint64_t except) const {
  std::vector<HeldLease> out;
  for (uint64_t id : registry_.lease_ids_of_uid(uid)) {
    if (id == except) continue;
    const Lease* l = registry_.find_lease(id);
    const Binding* b = l ? registry_.find_binding(l->binding) : nullptr;
    if (b) out.push_back(HeldLease{b->endpoint.protocol, b->endpoint.address, b->endpoint.port});
  }
  return out;
}

Result<void> LeaseService::authorize(const Session& s, const SocketSpec& spec, bool from_pool,
                                     uint64_t reclaiming) const {
  const Principal& who = s.principal;
  // Unrestricted root is never limited, so its (possibly many) leases need not be listed.
  std::vector<HeldLease> held;
  if (!(who.uid == 0 && policy_.daemon.root_unrestricted)) held = held_by(who.uid, reclaiming);
  Request req{spec.protocol, spec.address, spec.port, spec.mode, from_pool};
  Decision d = policy_.check(who, req, held);
  if (!d) return make_error(d.code, d.reason);
  return {};
}

Result<UniqueFd> LeaseService::allocate_from_pools(const Session& s, SocketSpec& spec,
                                                   Endpoint& ep) {
  auto pools = policy_.pools_for(s.principal, spec.protocol);
  if (pools.empty()) {
    return make_error(ErrorCode::kPermissionDenied,
                      s.principal.describe() + " may not lease " + protocol_name(spec.protocol) +
                          " ports from any pool (policy " + policy_.source + ")");
  }
  const OwnerIds owner{s.holder.uid, s.holder.gid};
  auto sock = make_unbound_socket(sys_, spec, owner);
  if (!sock) return sock.error();
  std::string names;
  for (const Pool* pool : pools) {
    names += (names.empty() ? "" : ", ") + pool->name;
    const size_t size = pool_size(*pool);
    // Next-fit from where this pool left off: ports just released are reused last.
    size_t& cursor = pool_cursors_[pool->name];
    for (size_t tries = 0; tries < size; ++tries) {
      ep.port = nth_pool_port(*pool, cursor++ % size);
      if (registry_.in_use(ep) || !policy_.reservations_at(spec.protocol, ep.port).empty()) {
        continue;
      }
      auto bound = bind_and_listen(sys_, sock->get(), spec, ep.port);
      if (bound) {
        spec.port = ep.port;
        return std::move(sock).value();
      }
      if (bound.error().code != ErrorCode::kInUseOutside) return bound.error();
      if (is_bound(sock->get())) {
        sock = make_unbound_socket(sys_, spec, owner);  // bind worked, listen did not: again
        if (!sock) return sock.error();
      }
    }
  }
  return make_error(ErrorCode::kNoFreePort, std::string("no free ") + protocol_name(spec.protocol) +
                                                " port in pool(s) " + names);
}

AcquireOutcome LeaseService::acquire(uint64_t session, std::vector<SocketSpec>& specs) {
  AcquireOutcome out;
  auto sit = sessions_.find(session);
  if (sit == sessions_.end()) {
    out.error = make_error(ErrorCode::kInternal, "no session " + std::to_string(session));
    out.whole_request = true;
    return out;
  }
  const Session& s = sit->second;
  const UidLimits lim = limits_for(s.holder.uid);
  const size_t held = registry_.leases_of_uid(s.holder.uid);
  // A restarted holder at its limit still takes back what it left lingering: that adds none.
  const auto more =
      static_cast<size_t>(std::count_if(specs.begin(), specs.end(), [&](const SocketSpec& spec) {
        return !own_reclaimable(s, spec);
      }));
  if (held + more > lim.leases) {
    out.error = make_error(ErrorCode::kLimitExceeded,
                           "uid " + std::to_string(s.holder.uid) + " holds " +
                               std::to_string(held) + " leases; " + std::to_string(more) +
                               " more would pass the limit of " + std::to_string(lim.leases));
    out.whole_request = true;
    refusal_event(s, specs.size() == 1 ? &specs.front() : nullptr, *out.error);
    return out;
  }
  const int64_t now = unix_now_ms();
  std::vector<Holder> lingered_for(specs.size());  // per grant, when it was a reclaim
  for (size_t i = 0; i < specs.size(); ++i) {
    auto grant = acquire_one(s, session, specs[i], now, lingered_for[i]);
    if (!grant) {
      roll_back(out.granted, lingered_for);
      out.error = grant.error();
      out.failed_index = i;
      refusal_event(s, &specs[i], *out.error);
      return out;
    }
    out.granted.push_back(*grant);
  }
  // Recorded, all grants in one batch, before anyone hears of them: what the journal cannot
  // take is not granted.
  if (journal_) {
    std::vector<journal::Record> records;
    records.reserve(out.granted.size());
    for (const Grant& g : out.granted) {
      const Lease& l = *registry_.find_lease(g.lease);
      if (g.reclaimed) {
        records.emplace_back(journal::LeaseReclaimed{l.id, session, l.holder, s.start_time, 0});
      } else {
        records.push_back(granted_record(g.lease, s));
      }
    }
    if (auto recorded = journal_->append(std::move(records)); !recorded) {
      roll_back(out.granted, lingered_for);
      out.error =
          make_error(recorded.error().code, "cannot record the lease: " + recorded.error().message +
                                                "; nothing was leased");
      out.whole_request = true;
      refusal_event(s, nullptr, *out.error);
      return out;
    }
    compact_if_due();
  }
  for (const Grant& g : out.granted) lease_event(g.reclaimed ? "reclaimed" : "acquired", g.lease);
  return out;
}

void LeaseService::roll_back(std::vector<Grant>& granted, std::vector<Holder>& lingered_for) {
  // All or nothing: undo what the request did, newest first. Nothing of it was journaled.
  for (size_t k = granted.size(); k-- > 0;) {
    const Grant& g = granted[k];
    // A lingering lease taken back goes back to lingering rather than ending, for the holder
    // it lingered for: a token reclaim by another uid must not keep it on that uid.
    if (g.reclaimed) {
      registry_.unreclaim(g.lease, std::move(lingered_for[k]), g.lingered_until_ms);
    } else {
      end_lease(g.lease, false);
    }
  }
  granted.clear();
}

Result<Grant> LeaseService::acquire_one(const Session& s, uint64_t session, SocketSpec& spec,
                                        int64_t now_ms, Holder& lingered_for) {
  const Holder& h = s.holder;
  if (auto ok = authorize(s, spec, false, own_reclaimable(s, spec).value_or(0)); !ok) {
    return ok.error();
  }
  Endpoint ep{spec.protocol, spec.address, spec.port, is_dual_stack(spec, !dual_stack_default_)};

  if (spec.port != 0) {
    // A restarted holder takes its lingering lease back: the very socket, with whatever
    // connections queued while it was away.
    if (auto id = registry_.find_reclaimable(ep, spec.mode, h.uid, spec.token)) {
      const Lease& l = *registry_.find_lease(*id);
      auto& table = spec.mode == Mode::kReuseport ? member_sockets_ : binding_sockets_;
      auto kept = table.find(spec.mode == Mode::kReuseport ? *id : l.binding);
      if (kept == table.end()) {
        return make_error(ErrorCode::kInternal,
                          "lease " + std::to_string(*id) +
                              " cannot be taken back: the broker lost its copy of the socket");
      }
      int fd = kept->second.fd.get();
      const int64_t until = l.lingering_until_ms;
      lingered_for = l.holder;
      registry_.reclaim(*id, session, h);
      return Grant{*id, fd, true, until};
    }
  }

  uint64_t binding = 0;
  UniqueFd fresh;
  if (spec.port == 0) {
    // Pick and bind in one step: nobody can take the port between choice and bind.
    auto sock = allocate_from_pools(s, spec, ep);
    if (!sock) return sock.error();
    fresh = std::move(sock).value();
    binding = registry_.add_binding(ep, spec.mode, spec.options, h.uid);
  } else {
    const JoinCheck may_join = [&](const Binding& b) { return share_allows(s, spec, b); };
    auto plan = registry_.plan(ep, spec.mode, spec.options, h.uid, may_join);
    if (!plan && plan.error().code == ErrorCode::kConflict) {
      refresh_comms(ep);  // name the holder as it runs now
      plan = registry_.plan(ep, spec.mode, spec.options, h.uid, may_join);
    }
    if (!plan) return plan.error();
    if (plan->kind == Plan::kCreate || spec.mode == Mode::kReuseport) {
      auto sock = plan->kind == Plan::kCreate
                      ? bind_reserved(spec, OwnerIds{h.uid, h.gid})
                      : make_bound_socket(sys_, spec, spec.port,
                                          group_owner(*registry_.find_binding(plan->binding), h));
      if (!sock) return sock.error();
      fresh = std::move(sock).value();
    }
    binding = plan->kind == Plan::kJoin ? plan->binding
                                        : registry_.add_binding(ep, spec.mode, spec.options, h.uid);
  }
  uint64_t lease = registry_.add_lease(binding, spec.name, session, h, now_ms, spec.linger,
                                       spec.linger > 0 ? new_token() : std::string());
  int fd = -1;
  if (spec.mode == Mode::kReuseport) {
    fd = keep(member_sockets_, lease, std::move(fresh));
  } else if (fresh) {
    fd = keep(binding_sockets_, binding, std::move(fresh));
  } else if (auto kept = binding_sockets_.find(binding); kept != binding_sockets_.end()) {
    fd = kept->second.fd.get();
  } else {
    end_lease(lease, false);
    return make_error(ErrorCode::kInternal,
                      "cannot join " + format_endpoint(ep.protocol, ep.address, ep.port) +
                          ": the broker lost its copy of the socket at a restart");
  }
  return Grant{lease, fd, false};
}

Result<void> LeaseService::share_allows(const Session& s, const SocketSpec& spec,
                                        const Binding& b) const {
  // The group's creator as the policy knows principals: a member of its uid still in the group
  // (its gid and cgroup), else only its uid.
  Principal creator;
  creator.uid = b.owner_uid;
  for (uint64_t id : b.leases) {
    const Lease* l = registry_.find_lease(id);
    if (l == nullptr || l->holder.uid != b.owner_uid) continue;
    auto owner_session = sessions_.find(l->session);
    if (owner_session != sessions_.end()) {
      creator = owner_session->second.principal;
    } else {
      creator.gid = l->holder.gid;
      creator.cgroup = l->holder.cgroup;
    }
    break;
  }
  Request req{spec.protocol, spec.address, spec.port, spec.mode, false};
  Decision d = policy_.may_join(s.principal, creator, req);
  if (!d) return make_error(d.code, d.reason);
  return {};
}

OwnerIds LeaseService::group_owner(const Binding& b, const Holder& joiner) const {
  if (joiner.uid == b.owner_uid) return OwnerIds{joiner.uid, joiner.gid};
  for (uint64_t id : b.leases) {
    const Lease* l = registry_.find_lease(id);
    if (l != nullptr && l->holder.uid == b.owner_uid) return OwnerIds{l->holder.uid, l->holder.gid};
  }
  // The owner's own members have all left: only its uid matters to the kernel's check.
  return OwnerIds{b.owner_uid, joiner.gid};
}

std::optional<uint64_t> LeaseService::own_reclaimable(const Session& s,
                                                      const SocketSpec& spec) const {
  if (spec.port == 0) return std::nullopt;
  Endpoint ep{spec.protocol, spec.address, spec.port, is_dual_stack(spec, !dual_stack_default_)};
  auto id = registry_.find_reclaimable(ep, spec.mode, s.holder.uid, spec.token);
  // Found by token, another uid's lease would become this uid's: one more after all.
  if (!id || registry_.find_lease(*id)->holder.uid != s.holder.uid) return std::nullopt;
  return id;
}

Result<bool> LeaseService::release(uint64_t session, uint64_t lease_id) {
  const Lease* l = registry_.find_lease(lease_id);
  if (l == nullptr) return make_error(ErrorCode::kNotFound, "no lease " + std::to_string(lease_id));
  auto s = sessions_.find(session);
  const uint32_t uid = s == sessions_.end() ? UINT32_MAX : s->second.holder.uid;
  // Your own session, your own uid, or root (revoke).
  if (l->session != session && uid != 0 && uid != l->holder.uid) {
    return make_error(ErrorCode::kPermissionDenied,
                      "lease " + std::to_string(lease_id) + " is held by uid " +
                          std::to_string(l->holder.uid) + "; only that uid or root may release it");
  }
  const bool revoke = l->session != session;
  end_lease(lease_id, true, revoke ? "revoked" : "released");
  return revoke;
}

std::vector<uint64_t> LeaseService::expire(int64_t now_ms) {
  auto ids = registry_.expired(now_ms);
  for (uint64_t id : ids) end_lease(id, true, "expired");
  return ids;
}

void LeaseService::end_lease(uint64_t lease_id, bool journal, const char* why) {
  auto removed = registry_.remove_lease(lease_id);
  if (!removed) return;
  if (journal) {
    record_or_warn(journal::LeaseEnded{lease_id});
    lease_event(why, removed->lease, removed->endpoint, removed->mode);
  }
  UniqueFd sock;
  if (removed->mode == Mode::kReuseport) {
    sock = release_kept(member_sockets_, lease_id);
  } else if (removed->binding_empty) {
    sock = release_kept(binding_sockets_, removed->lease.binding);
  }
  // A copy may live on in a child of the holder: shut the listener down so the port is
  // really free (SO_REUSEADDR binds succeed) once the lease has ended.
  if (sock) {
    sys_.shutdown(sock.get(), SHUT_RDWR);
    rehold_if_reserved(removed->endpoint, std::move(sock));
  }
}

bool LeaseService::has_copy(const Lease& l) const {
  const Binding* b = registry_.find_binding(l.binding);
  if (b == nullptr) return false;
  return b->mode == Mode::kReuseport ? member_sockets_.count(l.id) != 0
                                     : binding_sockets_.count(b->id) != 0;
}

std::string LeaseService::current_comm(const Lease& l) const {
  auto s = sessions_.find(l.session);
  if (s == sessions_.end() || !pidfd_alive(s->second.pidfd)) return l.holder.comm;
  std::string comm = read_comm(l.holder.pid);
  // Re-checked after reading: a pid recycled in between must not lend us its name.
  return !comm.empty() && pidfd_alive(s->second.pidfd) ? comm : l.holder.comm;
}

void LeaseService::refresh_comms(const Endpoint& ep) {
  for (uint64_t bid : registry_.overlapping(ep)) {
    const Binding* b = registry_.find_binding(bid);
    if (b == nullptr) continue;
    for (uint64_t id : b->leases) {
      if (const Lease* l = registry_.find_lease(id)) registry_.set_comm(id, current_comm(*l));
    }
  }
}

Result<void> LeaseService::save_runtime_reservations() const {
  if (config_.state_dir.empty()) return {};
  return write_file_atomically(config_.state_dir, kReservationsFile,
                               to_state_toml(policy_.runtime_reservations()));
}

Result<std::string> LeaseService::reserve(Reservation r) {
  Policy next = policy_;
  std::string name = r.name;
  if (auto added = next.add_reservation(std::move(r)); !added) return added.error();
  std::swap(policy_, next);
  if (auto saved = save_runtime_reservations(); !saved) {
    std::swap(policy_, next);  // not persisted: not made
    return saved.error();
  }
  if (auto failures = sync_held(name); !failures.empty()) {
    // Could not hold it: take the reservation back so that nothing changed.
    std::swap(policy_, next);
    sync_held();
    (void)save_runtime_reservations();
    return make_error(failures.front().code, "cannot hold reservation " + name + ": " +
                                                 failures.front().message +
                                                 "; nothing was reserved");
  }
  apply_guard();
  Event added;
  added.kind = "reservation-added";
  added.name = name;
  daemon_event(std::move(added));
  return name;
}

Result<void> LeaseService::unreserve(std::string_view name) {
  Policy next = policy_;
  if (auto removed = next.remove_reservation(name); !removed) return removed.error();
  std::swap(policy_, next);
  if (auto saved = save_runtime_reservations(); !saved) {
    std::swap(policy_, next);
    return saved.error();
  }
  sync_held();
  apply_guard();
  Event removed;
  removed.kind = "reservation-removed";
  removed.name = std::string(name);
  daemon_event(std::move(removed));
  return {};
}

std::vector<std::string> LeaseService::replace_policy(Policy next) {
  policy_ = std::move(next);
  auto refused = leases_refused_by_policy();
  sync_held();
  apply_guard();
  Event reloaded;
  reloaded.kind = "policy-reloaded";
  reloaded.name = policy_.source;
  reloaded.count = refused.size();
  reloaded.reason = std::to_string(refused.size()) + " lease(s) kept that it would now refuse";
  daemon_event(std::move(reloaded));
  return refused;
}

std::vector<std::string> LeaseService::leases_refused_by_policy() const {
  std::vector<std::string> out;
  for (RefusedLease& r : refused_leases()) out.push_back(std::move(r.line));
  return out;
}

std::vector<LeaseService::RefusedLease> LeaseService::refused_leases() const {
  std::vector<RefusedLease> out;
  for (const Lease* l : registry_.all_leases()) {
    const Binding* b = registry_.find_binding(l->binding);
    if (b == nullptr) continue;
    Principal who;
    who.uid = l->holder.uid;
    who.gid = l->holder.gid;
    who.cgroup = l->holder.cgroup;
    if (auto s = sessions_.find(l->session); s != sessions_.end()) who = s->second.principal;
    // The lease itself is not counted against the limits it already satisfied.
    std::vector<HeldLease> held;
    Request req{b->endpoint.protocol, b->endpoint.address, b->endpoint.port, b->mode, false};
    Decision d = policy_.check(who, req, held);
    // Pool ports were granted by a pool, not a rule: judge them as the pool would.
    if (!d && !policy_.pools_at(b->endpoint.protocol, b->endpoint.port).empty()) {
      req.from_pool = true;
      d = policy_.check(who, req, held);
    }
    if (!d) {
      out.push_back(RefusedLease{
          l->id, l->session,
          "lease " + std::to_string(l->id) + " (" +
              format_endpoint(b->endpoint.protocol, b->endpoint.address, b->endpoint.port) +
              ", pid " + std::to_string(l->holder.pid) + " " + current_comm(*l) +
              "): " + d.reason});
    }
  }
  return out;
}

void LeaseService::apply_guard() {
  for (Notice& n : guard_.apply(policy_.guarded_ports(), policy_.reservations)) {
    notices_.push_back(std::move(n));
  }
}

}  // namespace portbroker::broker
