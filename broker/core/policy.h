// Who may lease which port: the policy file (rules, reservations, dynamic pools, limits), the
// decision for one request, and the runtime reservations' state file.
//
// Pure by design (DESIGN.md): no syscalls, no logging, no libuv, so it is table-tested and
// fuzzable. User and group names reach it only through a NameResolver; the daemon passes
// system_name_resolver() (broker/os/names.h), tests pass a fixed table.
//
// Semantics, in the order Policy::check() applies them:
//  1. [limits] max_leases_per_uid caps the leases one uid holds, whatever granted them.
//  2. Reservations: a request whose endpoint overlaps a reservation is refused unless the
//     caller is among the reservation's principals and asks in one of its modes; if it is,
//     the reservation itself grants the port (no rule needed). Reservations bind root too: a
//     reservation is an explicit "this port is for that service" and a root-run service is the
//     likeliest one to take it by mistake. List root (users = [0]) to let root lease it.
//  3. Unrestricted root ([daemon] root_unrestricted, true by default) is allowed everything
//     else, without limits, as the embedded default promises. Set it to false and root needs
//     rules like anyone else.
//  4. Port 0 / pool picks: pools grant (pools_for()); rules do not apply.
//  5. Rules only ever grant; order does not matter; a request is allowed when at least one
//     rule covering it allows its mode and its max_leases is not reached. Nothing else is
//     allowed (deny by default).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

// Port ranges and their grammar belong to the vocabulary the client shares (spec.hpp); the
// broker has always spelled them broker::PortRange.
using portbroker::parse_port_range;
using portbroker::PortRange;

// Sorted, with overlapping and adjacent ranges merged: the one spelling of a set of ports.
std::vector<PortRange> normalize_ports(std::vector<PortRange> ranges);

// The caller, as the kernel attests it: SO_PEERCRED (uid, gid), SO_PEERGROUPS
// (supplementary groups) and /proc/PID/cgroup (the cgroup v2 path, "0::" stripped).
struct Principal {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary; may be empty
  std::string cgroup;            // e.g. "/system.slice/nginx.service"; empty when unknown

  std::string describe() const;  // "uid 1000": how messages name the caller
};

// Turns user and group names into ids. Kept behind an interface so that parsing stays pure
// and tests do not depend on /etc/passwd.
class NameResolver {
 public:
  virtual ~NameResolver() = default;
  virtual std::optional<uint32_t> uid_of(std::string_view user) const = 0;
  virtual std::optional<uint32_t> gid_of(std::string_view group) const = 0;
};

// Where a rule, reservation or pool was defined: "FILE:LINE", or just a label when line is 0
// ("<embedded default>", "portbroker reserve").
struct Origin {
  std::string file;
  uint32_t line = 0;
  std::string to_string() const;
};

// Who a rule, reservation or pool is for: its users, groups and cgroups keys. A caller
// matches when ANY entry matches (entries are alternatives, not conditions).
struct Principals {
  struct Id {
    uint32_t id = 0;
    std::string name;  // as written in the file; empty when given as a number
  };
  bool anyone = false;     // users = ["*"]
  std::vector<Id> users;   // the caller's uid
  std::vector<Id> groups;  // the caller's primary gid or any supplementary group
  // fnmatch(3) globs with FNM_PATHNAME ('*' stays within one path component), matched against
  // the caller's cgroup and each of its ancestors, so "/system.slice/nginx.service" also
  // covers the unit's sub-cgroups and "/machine.slice/libpod-*.scope" names every podman
  // container.
  std::vector<std::string> cgroups;

  bool matches(const Principal& who) const;
  bool empty() const { return !anyone && users.empty() && groups.empty() && cgroups.empty(); }
  std::string to_string() const;  // "user alice, uid 1000, group web, cgroup /x/*"; "nobody"
};

struct ProtocolSet {
  bool tcp = true;
  bool udp = true;
  bool has(Protocol p) const { return p == Protocol::kUdp ? udp : tcp; }
  bool overlaps(const ProtocolSet& o) const { return (tcp && o.tcp) || (udp && o.udp); }
  std::string to_string() const;  // "tcp", "udp", "tcp/udp"
};

struct ModeSet {
  bool exclusive = true;
  bool shared = true;
  bool reuseport = true;
  bool has(Mode m) const;
  std::string to_string() const;  // "exclusive, shared"
};

// Rules grant; see the file comment for how they combine.
struct Rule {
  std::string name;  // from the file, else "#N" (1-based position)
  Origin origin;
  Principals principals;
  std::vector<PortRange> ports;
  ProtocolSet protocols;
  // Empty: any address. Otherwise only these exact addresses: granting 0.0.0.0 grants the
  // IPv4 wildcard, not every IPv4 address.
  std::vector<IpAddress> addresses;
  ModeSet modes;
  // Per uid: how many leases on endpoints this rule covers one uid may hold at once.
  std::optional<uint32_t> max_leases;
};

struct Reservation {
  std::string name;  // unique among all reservations, file and runtime
  Origin origin;
  bool runtime = false;  // added by `portbroker reserve`, persisted in the state file
  ProtocolSet protocols;
  // Empty: any address. A reservation covers every request that could collide with it: the
  // same address, or a wildcard on either side (0.0.0.0 covers IPv4, :: covers both).
  std::vector<IpAddress> addresses;
  std::vector<PortRange> ports;
  Principals principals;  // may be empty: nobody may lease it (a held one just blocks the port)
  ModeSet modes;
  // The daemon binds the port(s) at start and keeps them; the first entitled lease gets that
  // very socket (Decision::reservation names it).
  bool hold = false;
  // With hold: TCP sockets stay bound but never listen (`listen = false`, `reserve --hold
  // --no-listen`), for ports a runtime publishes by DNAT (CNI portmap, hostPort): nobody else
  // can bind the port and no connection is ever accepted on the host; an entitled lease still
  // receives the very socket, listening. UDP holds are bound either way.
  bool listen = true;
};

// `reserve --no-listen`: only a held reservation can be kept from listening.
Result<void> set_no_listen(Reservation& r);

// [[share]]: a port group several principals may join together, e.g. an app and its sidecar
// (or two containers of one service) running as different uids. Joining a shared or reuseport
// group that another uid created is allowed when the joiner and the group's creator are both
// among the share's principals and the share covers the endpoint in that mode; without a
// share only the creating uid (or root) joins. A share also grants its principals the ports
// it covers in its modes, as a rule would.
struct Share {
  std::string name;  // required: refusals name it
  Origin origin;
  Principals principals;
  std::vector<PortRange> ports;
  ProtocolSet protocols;
  std::vector<IpAddress> addresses;  // empty: any address
  ModeSet modes{false, true, true};  // shared and/or reuseport, never exclusive
};

// A named range for port-0 requests.
struct Pool {
  std::string name;
  Origin origin;
  std::vector<PortRange> ports;
  ProtocolSet protocols;
  Principals principals;
};

struct Limits {
  uint32_t max_connections_per_uid = 64;  // enforced by the server at accept
  uint32_t max_leases_per_uid = 256;      // enforced by check()
};

struct DaemonSettings {
  bool root_unrestricted = true;  // see the file comment
  bool ephemeral_guard = true;    // add reservations and pools to ip_local_reserved_ports
};

struct Request {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;  // 0: "may this caller get a pool port at all"
  Mode mode = Mode::kExclusive;
  // The daemon picked `port` from pools_for(): pools grant it, rules do not, and reserved
  // ports are never handed out this way (a reservation is for a named service).
  bool from_pool = false;
};

// A lease the caller's uid already holds (all of them, whichever session); check() counts them
// against [limits] and against each rule's max_leases.
struct HeldLease {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
};

struct Decision {
  bool allowed = false;
  // kOk when allowed; kLimitExceeded when a lease count decided; else kPermissionDenied.
  ErrorCode code = ErrorCode::kPermissionDenied;
  // Names what decided, for the client's error and the log: "port 80 is reserved for 'web'
  // (reservation web in /etc/portbroker/portbroker.toml:12); uid 1000 is not among its
  // principals".
  std::string reason;
  // The reservation that decided, allowed or refused; empty when none did. On an allowed held
  // reservation the daemon hands over the held socket.
  std::string reservation;
  // The pool that granted a from_pool / port-0 request; empty otherwise.
  std::string pool;

  explicit operator bool() const { return allowed; }
};

struct Policy {
  std::string source;  // the file name, or "<embedded default>"
  DaemonSettings daemon;
  Limits limits;
  // [events]: who besides root sees every uid's events (`portbroker events`); anyone else sees
  // only those about its own uid's leases.
  Principals event_readers;
  std::vector<Rule> rules;
  std::vector<Reservation> reservations;  // file ones first, then runtime ones
  std::vector<Pool> pools;                // never empty after parse: "default" is added
  std::vector<Share> shares;

  Decision check(const Principal& who, const Request& req, std::span<const HeldLease> held) const;

  // May `joiner` (not root, not the group's creator) join the shared or reuseport group that
  // `creator` created on req's endpoint in req.mode? Allowed by a [[share]] covering it whose
  // principals include both; a refusal names the share that covers the endpoint, or says that
  // none does.
  Decision may_join(const Principal& joiner, const Principal& creator, const Request& req) const;

  // The pools a port-0 request may draw from, in file order (unrestricted root: all of them).
  std::vector<const Pool*> pools_for(const Principal& who, Protocol p) const;

  // For `portbroker who`: what the policy says about a port, whatever the address.
  std::vector<const Reservation*> reservations_at(Protocol p, uint16_t port) const;
  std::vector<const Pool*> pools_at(Protocol p, uint16_t port) const;

  // Every port of every reservation and pool, sorted and merged: what the ephemeral-port guard
  // keeps in ip_local_reserved_ports. Empty when [daemon] ephemeral_guard is false.
  std::vector<PortRange> guarded_ports() const;

  // Overlapping or contradictory definitions, one line each naming both sides and their
  // origins; empty when there is nothing to say. For `portbroker check`.
  std::vector<std::string> lint() const;

  // Runtime reservations. add refuses a duplicate name (kConflict) and a reservation that
  // overlaps an existing one (kConflict, naming it); remove refuses file reservations
  // (kPermissionDenied: edit the file) and unknown names (kNotFound).
  Result<void> add_reservation(Reservation r);
  Result<void> remove_reservation(std::string_view name);
  std::vector<Reservation> runtime_reservations() const;
};

// Parses a policy file. Every error is "FILE:LINE:COLUMN: problem", and the failure's message
// lists all of the file's errors, one a line, in file order; unknown keys are errors
// (with a suggestion when a known key is close) so typos never silently widen or narrow a
// grant. Names are resolved now: an unknown user or group is an error.
Result<Policy> parse_policy(std::string_view toml_text, std::string_view file_name,
                            const NameResolver& names);

// What serves when there is no policy file: root unrestricted; everyone may lease ports
// 1024-65535 (any protocol, address, mode); pool "default" 20000-29999 for everyone.
Policy embedded_default_policy();

// `portbroker reserve NAME TARGET [--user U]... [--group G]... [--hold]`, TARGET as
// ReservationTarget::parse reads it; users and groups are names or numeric ids. The result has
// runtime = true and an origin of "portbroker reserve"; pass it to Policy::add_reservation.
Result<Reservation> make_runtime_reservation(std::string_view name, std::string_view target,
                                             std::span<const std::string> users,
                                             std::span<const std::string> groups, bool hold,
                                             const NameResolver& names);

// The runtime reservations' state file (TOML, `version = 1` plus [[reservation]] tables as in
// the policy file). Ids are written as numbers so that reading it back never depends on name
// resolution. Writing it crash-safely (temp file, fsync, rename) is the caller's job.
std::string to_state_toml(std::span<const Reservation> runtime);
Result<std::vector<Reservation>> parse_state(std::string_view toml_text,
                                             std::string_view file_name);

}  // namespace portbroker::broker
