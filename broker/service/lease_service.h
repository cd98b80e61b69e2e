// LeaseService: the one owner of lease state. It holds the registry AND every socket the broker
// keeps (exclusive and shared bindings, reuseport members, held reservations), the pool
// cursors, the policy in force and the sessions' identities. Every change of lease state goes
// through it; it returns outcomes and logs nothing (the daemon logs, see take_notices).
//
// Single-threaded: the daemon calls it from its loop only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/core/journal.h"
#include "broker/core/policy.h"
#include "broker/core/registry.h"
#include "broker/os/handover.h"
#include "broker/os/journal_file.h"
#include "broker/os/socket_factory.h"
#include "broker/os/syscalls.h"
#include "broker/service/guard.h"
#include "broker/service/notice.h"
#include "portbroker/fd.hpp"
#include "portbroker/info.hpp"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

struct UidLimits {
  size_t connections = 64;  // open control connections per uid
  size_t leases = 1024;     // leases held per uid
};

struct ServiceConfig {
  std::string state_dir;  // runtime reservations and the guard's own entries persist here
  // The lease journal's directory ("" for none: nothing survives the daemon). Under /run.
  std::string journal_dir;
  bool fd_store = false;  // keep every socket in the service manager's fd store
  std::optional<size_t> max_connections_per_uid;  // override the policy's [limits]
  std::optional<size_t> max_leases_per_uid;
  UidLimits root_limits{4096, 65536};  // root, generous but bounded
};

// A socket the daemon binds and keeps so that nothing outside the broker can take a reserved
// port (see held.cc).
struct HeldSocket {
  IpAddress address;
  bool v6only = false;
  UniqueFd fd;
  bool parked = false;  // TCP: shut down (bound, not listening) while leased elsewhere
  // TCP, `listen = false` reservations: bound, never listening, SO_REUSEADDR off (so no other
  // bind of the port succeeds, with or without it) until a lease takes it.
  bool unlistened = false;
};

// One granted socket of an acquire. `fd` is the service's own copy: valid until the lease
// ends; the daemon sends it (the kernel duplicates it into the client).
struct Grant {
  uint64_t lease = 0;
  int fd = -1;
  bool reclaimed = false;         // a lingering lease taken back, not a new one
  int64_t lingered_until_ms = 0;  // reclaimed: when it would have ended
};

struct AcquireOutcome {
  std::vector<Grant> granted;  // one per requested socket, in order, when it succeeded
  std::optional<Error> error;  // else why, and nothing was leased
  size_t failed_index = 0;     // which requested socket failed
  bool whole_request = false;  // the error is about the request as a whole (e.g. a limit)
};

// What a previous daemon left that this one can take over (see LeaseService::start).
struct Inheritance {
  // Sockets passed on (fd store, upgrade), by SO_COOKIE; what is not claimed is closed.
  std::unordered_map<uint64_t, UniqueFd> sockets;
  // Held-reservation sockets passed on.
  std::vector<UniqueFd> holds;
};

// A restored lease's session whose connection did not survive the restart: it lasts as long
// as its holder, which the daemon watches through `pidfd` (the daemon owns it from now on).
struct OrphanSession {
  uint64_t session = 0;
  Holder holder;
  UniqueFd pidfd;
};

struct RestoreReport {
  size_t restored = 0;      // leases back as they were
  size_t without_copy = 0;  // restored, but the broker could not take its copy back
  size_t dropped = 0;       // their holder is gone (or their lingering socket is lost)
  std::vector<OrphanSession> orphans;
  std::vector<std::string> lines;  // one per dropped or degraded lease, for the log
};

class LeaseService {
 public:
  LeaseService(ServiceConfig config, Policy policy, SysCalls& sys = SysCalls::real());
  ~LeaseService();
  LeaseService(const LeaseService&) = delete;
  LeaseService& operator=(const LeaseService&) = delete;

  // Reads the host's IPv6 defaults, opens the journal and takes over the leases it records
  // (sockets from `inherited`, else from their live holders), then holds every held
  // reservation and applies the guard. Sessions whose connections survived must be opened
  // first. Fails only when the journal cannot be opened.
  Result<RestoreReport> start(Inheritance inherited = {});
  // The first session id a new connection may take (ids of a previous daemon stay unique).
  uint64_t next_session_id() const;
  // Revokes every lease (lingering or not: each socket is shut down) and drops every held
  // socket and guard entry: `portbroker shutdown --revoke-all`.
  void stop();
  // Stopping is not revoking: closes the service's own copies and nothing else, so every
  // holder's socket keeps serving; the guard's entries stay for the next daemon.
  void detach();

  // Sessions: a control connection's identity. `pidfd` (borrowed; may be -1) pins the process.
  void open_session(uint64_t session, const Holder& holder, const Principal& principal, int pidfd);
  // The sockets the daemon must keep across its own restarts, for an upgrade in place: every
  // copy it holds, named for the next daemon (see FdKind).
  std::vector<std::pair<int, std::string>> handover_fds() const;
  struct SessionEnd {
    size_t released = 0;
    size_t lingering = 0;
  };
  // Its leases end, or linger when they asked to.
  SessionEnd end_session(uint64_t session);

  // All or nothing: either every spec is granted or nothing changed. A spec asking for port 0
  // comes back with the port chosen.
  AcquireOutcome acquire(uint64_t session, std::vector<SocketSpec>& specs);
  // Ends a lease: the caller's own session, its uid's, or (uid 0) anyone's. Returns whether it
  // was a revoke (another session's lease).
  Result<bool> release(uint64_t session, uint64_t lease_id);
  // Lingering leases whose time is up: ended; returns their ids.
  std::vector<uint64_t> expire(int64_t now_ms);
  // Retries held ports that could not be held (the sweep timer).
  void retry_holds();

  // Administration. Each either takes effect (and is persisted) or changes nothing.
  Result<std::string> reserve(Reservation r);
  Result<void> unreserve(std::string_view name);
  // A new policy (reload): every lease is kept; returns the leases it would refuse, one line
  // each.
  std::vector<std::string> replace_policy(Policy next);
  Result<void> save_runtime_reservations() const;

  // Reading.
  const Registry& registry() const { return registry_; }
  // Whether the broker keeps its own copy of the lease's socket (a lease restored after a
  // restart whose copy could not be taken back from its holder has none).
  bool has_copy(const Lease& l) const;
  const Policy& policy() const { return policy_; }
  // The holder's command as it runs now (it may have exec'd since it connected).
  std::string current_comm(const Lease& l) const;
  // Leases the current policy would refuse, one line each.
  std::vector<std::string> leases_refused_by_policy() const;
  // The same, with the lease and session each line is about. A walk over every lease: a
  // caller that asks often keeps it until the policy changes (a lease granted since was
  // allowed by the policy in force, so only ended or re-held leases drop out).
  struct RefusedLease {
    uint64_t lease = 0;
    uint64_t session = 0;
    std::string line;
  };
  std::vector<RefusedLease> refused_leases() const;
  // Whether the port is held now (a held socket, not parked).
  bool port_held(Protocol p, uint16_t port) const;
  // Held ports that could not be held: reservation name and why.
  struct HoldFailure {
    Protocol protocol;
    uint16_t port;
    std::string reservation;
    std::string why;
  };
  std::vector<HoldFailure> hold_failures() const;
  UidLimits limits_for(uint32_t uid) const;
  size_t session_count() const { return sessions_.size(); }

  std::vector<Notice> take_notices() { return std::exchange(notices_, {}); }
  // What happened since the last call, in order, for `portbroker events` and the metrics. The
  // daemon numbers and publishes them (seq is 0 here).
  std::vector<Event> take_events() { return std::exchange(events_, {}); }
  // The same into `into` (emptied first), keeping both vectors' storage for the next round.
  void take_events(std::vector<Event>& into) {
    into.clear();
    into.swap(events_);
  }

  // For the metrics.
  struct Gauges {
    size_t held_ports = 0;     // ports held now for held reservations
    size_t hold_failures = 0;  // held ports that could not be held
    size_t guard_entries = 0;  // port ranges the daemon added to ip_local_reserved_ports
    size_t journal_bytes = 0;  // the journal's log since its last compaction
  };
  Gauges gauges() const;

  // The process that opened `session` exited, leaving the connection to `holder` (pinned by
  // `pidfd`, borrowed): the session's leases are now that process's. Its uid and gid stay
  // the connecting process's (SO_PEERCRED), and so does what the session may do.
  void rehome_session(uint64_t session, const Holder& holder, int pidfd);

 private:
  struct Session {
    Holder holder;
    Principal principal;
    int pidfd = -1;
    uint64_t start_time = 0;  // the holder's, for the journal
  };
  // The broker's copy of a socket, known by its SO_COOKIE in the journal and the fd store.
  struct KeptSocket {
    UniqueFd fd;
    uint64_t cookie = 0;
  };
  struct Held {
    std::string reservation;
    std::vector<HeldSocket> sockets;
  };

  void notice(Notice::Level level, std::string text) {
    notices_.push_back(Notice{level, std::move(text)});
  }
  // An event about lease `id` (still in the registry) and its holder.
  void lease_event(const char* kind, uint64_t id);
  void lease_event(const char* kind, const Lease& l, const Endpoint& ep, Mode mode);
  void daemon_event(Event e);
  // A refused acquire: who asked, why, and whom it collided with.
  void refusal_event(const Session& s, const SocketSpec* spec, const Error& e);

  // acquire's steps, per requested socket.
  // `lingered_for`: on a reclaim, the holder the lease lingered for (a rollback gives it back).
  Result<Grant> acquire_one(const Session& s, uint64_t session, SocketSpec& spec, int64_t now_ms,
                            Holder& lingered_for);
  // `reclaiming`: the session's own lingering lease the spec takes back, not counted as held.
  Result<void> authorize(const Session& s, const SocketSpec& spec, bool from_pool,
                         uint64_t reclaiming = 0) const;
  // Whether the session's uid may join `b`, a group another uid created ([[share]]).
  Result<void> share_allows(const Session& s, const SocketSpec& spec, const Binding& b) const;
  // Whom the kernel sees as the owner of a new member of `b`: its owner uid, so that members
  // of a group shared across uids land in one SO_REUSEPORT group.
  OwnerIds group_owner(const Binding& b, const Holder& joiner) const;
  Result<UniqueFd> allocate_from_pools(const Session& s, SocketSpec& spec, Endpoint& ep);
  std::vector<HeldLease> held_by(uint32_t uid, uint64_t except = 0) const;
  // The lingering lease of the session's own uid that `spec` would take back: taking it back
  // adds no lease to what the uid holds.
  std::optional<uint64_t> own_reclaimable(const Session& s, const SocketSpec& spec) const;
  void refresh_comms(const Endpoint& ep);
  // Ends one lease and closes (after shutdown, so a copy held elsewhere stops serving) the
  // socket that only it used. `journal` false: the lease was never recorded (and nobody heard
  // of it: no event). `why` is the event's kind.
  void end_lease(uint64_t lease_id, bool journal = true, const char* why = "released");
  // Keeps the broker's copy of a socket (and puts it in the fd store).
  int keep(std::unordered_map<uint64_t, KeptSocket>& table, uint64_t key, UniqueFd fd);
  UniqueFd release_kept(std::unordered_map<uint64_t, KeptSocket>& table, uint64_t key);
  // The journal: a record before the change is acknowledged. Without a journal, always ok.
  Result<void> record(const journal::Record& r);
  void record_or_warn(const journal::Record& r);
  void compact_if_due();
  void roll_back(std::vector<Grant>& granted, std::vector<Holder>& lingered_for);
  journal::Record granted_record(uint64_t lease, const Session& s) const;
  void restore_leases(const journal::JournalState& st, Inheritance& inherited,
                      RestoreReport& report);
  void adopt_holds(std::vector<UniqueFd> holds);

  // Held reservations (held.cc).
  // Holds every port of every held reservation (or only `only`'s) that is neither held nor
  // leased; returns what could not be held. Also runs from the sweep, so a hold that failed
  // (the port was taken outside) is retried until it succeeds.
  std::vector<Error> sync_held(const std::string& only = {}, bool from_sweep = false);
  void drop_stale_holds();
  // Held sockets live in the fd store too (FDPOLL=0: a parked one is not listening), so that a
  // held port stays held through a restart under systemd; each leaves it as it leaves held_.
  void store_hold(int fd);
  void unstore_hold(const HeldSocket& h);
  void hold_one_port(const Reservation& r, uint16_t port, std::vector<Error>& failures);
  // A socket of its own is created as `owner`'s; a held socket handed over stays the daemon's.
  Result<UniqueFd> bind_reserved(const SocketSpec& spec, OwnerIds owner);
  Result<void> hold_port(const Reservation& r, Protocol p, uint16_t port);
  Result<UniqueFd> make_held_socket(const Reservation& r, const SocketSpec& spec);
  bool any_parked() const;
  void rehold_if_reserved(const Endpoint& ep, UniqueFd old);
  std::vector<HeldSocket> hold_addresses(const Reservation& r) const;
  void unpark(Held& entry);
  void apply_guard();

  ServiceConfig config_;
  Policy policy_;
  SysCalls& sys_;
  Registry registry_;
  std::unordered_map<uint64_t, Session> sessions_;
  // The broker's own copy of every socket it hands out: per binding for exclusive and
  // shared, per lease for reuseport members (each has its own socket in the group).
  std::unordered_map<uint64_t, KeptSocket> binding_sockets_;
  std::unordered_map<uint64_t, KeptSocket> member_sockets_;
  std::unordered_map<std::string, size_t> pool_cursors_;
  std::unordered_map<uint32_t, Held> held_;                  // key: port_key()
  std::unordered_map<uint32_t, std::string> hold_failures_;  // why a held port is not held
  Guard guard_;
  std::optional<JournalFile> journal_;
  FdStore fd_store_;
  bool dual_stack_default_ = true;
  bool ipv6_available_ = true;
  bool stopping_ = false;
  std::vector<Notice> notices_;
  std::vector<Event> events_;
};

}  // namespace portbroker::broker
