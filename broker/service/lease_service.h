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

#include "broker/core/policy.h"
#include "broker/core/registry.h"
#include "broker/os/syscalls.h"
#include "broker/service/guard.h"
#include "broker/service/notice.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

struct UidLimits {
  size_t connections = 64;  // open control connections per uid
  size_t leases = 1024;     // leases held per uid
};

struct ServiceConfig {
  std::string state_dir;  // runtime reservations and the guard's own entries persist here
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

class LeaseService {
 public:
  LeaseService(ServiceConfig config, Policy policy, SysCalls& sys = SysCalls::real());
  ~LeaseService();
  LeaseService(const LeaseService&) = delete;
  LeaseService& operator=(const LeaseService&) = delete;

  // Reads the host's IPv6 defaults, holds every held reservation and applies the guard.
  void start();
  // Ends every lease (lingering or not) and drops every held socket and guard entry.
  void stop();

  // Sessions: a control connection's identity. `pidfd` (borrowed; may be -1) pins the process.
  void open_session(uint64_t session, const Holder& holder, const Principal& principal, int pidfd);
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
  const Policy& policy() const { return policy_; }
  // The holder's command as it runs now (it may have exec'd since it connected).
  std::string current_comm(const Lease& l) const;
  // Leases the current policy would refuse, one line each.
  std::vector<std::string> leases_refused_by_policy() const;
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

 private:
  struct Session {
    Holder holder;
    Principal principal;
    int pidfd = -1;
  };
  struct Held {
    std::string reservation;
    std::vector<HeldSocket> sockets;
  };

  void notice(Notice::Level level, std::string text) {
    notices_.push_back(Notice{level, std::move(text)});
  }

  // acquire's steps, per requested socket.
  // `lingered_for`: on a reclaim, the holder the lease lingered for (a rollback gives it back).
  Result<Grant> acquire_one(const Session& s, uint64_t session, SocketSpec& spec, int64_t now_ms,
                            Holder& lingered_for);
  // `reclaiming`: the session's own lingering lease the spec takes back, not counted as held.
  Result<void> authorize(const Session& s, const SocketSpec& spec, bool from_pool,
                         uint64_t reclaiming = 0) const;
  Result<UniqueFd> allocate_from_pools(const Session& s, SocketSpec& spec, Endpoint& ep);
  std::vector<HeldLease> held_by(uint32_t uid, uint64_t except = 0) const;
  // The lingering lease of the session's own uid that `spec` would take back: taking it back
  // adds no lease to what the uid holds.
  std::optional<uint64_t> own_reclaimable(const Session& s, const SocketSpec& spec) const;
  void refresh_comms(const Endpoint& ep);
  // Ends one lease and closes (after shutdown, so a copy held elsewhere stops serving) the
  // socket that only it used.
  void end_lease(uint64_t lease_id);

  // Held reservations (held.cc).
  std::vector<Error> sync_held(const std::string& only = {}, bool from_sweep = false);
  Result<UniqueFd> bind_reserved(const SocketSpec& spec);
  Result<void> hold_port(const Reservation& r, Protocol p, uint16_t port);
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
  std::unordered_map<uint64_t, UniqueFd> binding_sockets_;
  std::unordered_map<uint64_t, UniqueFd> member_sockets_;
  std::unordered_map<std::string, size_t> pool_cursors_;
  std::unordered_map<uint32_t, Held> held_;                  // key: port_key()
  std::unordered_map<uint32_t, std::string> hold_failures_;  // why a held port is not held
  Guard guard_;
  bool dual_stack_default_ = true;
  bool ipv6_available_ = true;
  bool stopping_ = false;
  std::vector<Notice> notices_;
};

}  // namespace portbroker::broker
