// What the daemon reports, as plain values: leases, status, reservations, who and check
// results. The client library returns them; ipc's codec carries them over the wire both ways.
#pragma once

#include <cstdint>
#include <optional>
#include <portbroker/result.hpp>
#include <portbroker/spec.hpp>
#include <string>
#include <vector>

namespace portbroker {

struct LeaseInfo {
  uint64_t id = 0;
  std::string name;
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  Mode mode = Mode::kExclusive;
  Holder holder;
  uint64_t session = 0;
  int64_t created_at_ms = 0;    // unix time
  std::string state;            // "active", or "lingering": its session ended, it waits
  uint32_t linger_s = 0;        // asked with linger=SECONDS
  int64_t linger_until_ms = 0;  // while lingering: when it ends unless taken back
  // Only on a lease this client acquired with linger: lets another uid take it back
  // (`token=` in a spec); the holder's own uid needs none.
  std::string token;
  // Restored after a restart without the broker's copy of its socket (the copy could not be
  // taken back from the holder): it cannot linger or take new shared members until it ends.
  bool no_copy = false;
};

struct DaemonStatus {
  std::string version;
  int pid = 0;
  int64_t started_at_ms = 0;
  uint32_t sessions = 0;
  uint32_t leases = 0;
  uint16_t pool_low = 0;
  uint16_t pool_high = 0;
  uint32_t open_fds = 0;
  std::string socket_path;
};

// A port reservation for a named service: from the policy file or `portbroker reserve`.
struct ReservationInfo {
  std::string name;
  std::string target;  // "PROTO:ADDR:PORT[-PORT]", as the daemon spells it
  bool tcp = false;
  bool udp = false;
  std::optional<IpAddress> address;  // none: any address
  uint16_t port_first = 0;
  uint16_t port_last = 0;
  std::vector<std::string> users;   // as requested (names or numeric ids); empty in replies
  std::vector<std::string> groups;  // likewise
  bool hold = false;                // the daemon binds and keeps the port(s)
  bool no_listen = false;           // held TCP sockets bound, never listening
  std::string origin;               // replies: "FILE:LINE" or the runtime origin
  std::string principals;           // replies: who may lease it, for people
};

// A socket on a port held by a process outside the broker.
struct OutsideHolder {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  std::string state;  // "listen", "bound", ...
  int pid = 0;        // 0: no process found (e.g. it lives in another namespace)
  uint32_t uid = 0;
  std::string comm;
};

// Everything the daemon knows about one port: `portbroker who`.
struct WhoReport {
  Protocol protocol = Protocol::kTcp;
  uint16_t port = 0;
  std::vector<LeaseInfo> leases;
  std::vector<OutsideHolder> outside;
  std::vector<ReservationInfo> reservations;
  std::vector<std::string> pools;   // names of the pools containing the port
  bool in_ephemeral_range = false;  // inside net.ipv4.ip_local_port_range
  bool guarded = false;             // listed in net.ipv4.ip_local_reserved_ports
  bool held = false;                // the daemon holds the port for a reservation
};

// Something an admin should know about before a restart: `portbroker check`.
struct Problem {
  std::string kind;  // "held-outside", "unprotected", "policy-lint", "lease-refused", ...
  std::string message;
};

struct ReloadReport {
  std::string source;  // the policy file, or "<embedded default>"
  // Leases the new policy would refuse: kept, not killed, one line each.
  std::vector<std::string> refused_leases;
};

// Something that happened in the daemon: `portbroker events`. Lease events (event_is_about_lease)
// carry the lease and its holder (pid, uid, comm); a refusal carries who asked instead.
struct Event {
  uint64_t seq = 0;     // one more than the event the daemon published before it
  int64_t time_ms = 0;  // unix time
  // acquired, reclaimed, released, revoked, holder-exited, lingering, expired, refused,
  // reservation-added, reservation-removed, reservation-held, hold-failed, policy-reloaded,
  // daemon-started; and lost (this subscriber missed `count` events).
  std::string kind;
  uint64_t lease = 0;
  std::string name;      // the lease's or the reservation's name
  std::string endpoint;  // "tcp 127.0.0.1:8080"; a reservation's target
  uint16_t port = 0;
  std::string mode;
  int pid = 0;
  uint32_t uid = 0;
  std::string comm;
  ErrorCode code = ErrorCode::kOk;  // refused, hold-failed
  std::string reason;
  std::string conflicts_with;  // refused: the holder of what it collided with
  uint64_t count = 0;          // daemon-started: leases restored; lost: events not delivered
};

// Whether an event is about one uid's lease or request (a subscriber other than root sees only
// those of its own uid); the others are about the daemon as a whole.
bool event_is_about_lease(const Event& e);

}  // namespace portbroker
