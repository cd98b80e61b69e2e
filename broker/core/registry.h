// The lease registry: who holds which port, in which mode. Pure bookkeeping (no syscalls,
// no sockets, no logging) so that conflict rules are unit-tested and fuzzable in isolation;
// the server keeps the sockets themselves, keyed by the ids handed out here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker {

struct Endpoint {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  // Only meaningful for IPv6 wildcards: whether the socket also covers IPv4.
  bool dual_stack = false;
};

// One bound endpoint held by the broker: an exclusive or shared socket, or a reuseport group.
struct Binding {
  uint64_t id = 0;
  Endpoint endpoint;
  Mode mode = Mode::kExclusive;
  SocketOptions options;
  // The uid that created it: only it (or root) may join, unless a JoinCheck (policy [[share]])
  // lets another uid join. Its sockets are all created as this uid's (the kernel's
  // SO_REUSEPORT group is per uid).
  uint32_t owner_uid = 0;
  std::vector<uint64_t> leases;
};

struct Lease {
  uint64_t id = 0;
  uint64_t binding = 0;
  std::string name;
  uint64_t session = 0;
  Holder holder;
  int64_t created_ms = 0;
  uint32_t linger_s = 0;           // kept this long after its session ends without a release
  std::string token;               // lets another uid reclaim it while it lingers
  int64_t lingering_until_ms = 0;  // non-zero: no session holds it; it ends then

  bool lingering() const { return lingering_until_ms != 0; }
};

// What an acquire of one endpoint would do.
struct Plan {
  enum Kind { kCreate, kJoin } kind = kCreate;
  uint64_t binding = 0;  // for kJoin
};

// The key of a protocol's port in the broker's tables.
constexpr uint32_t port_key(Protocol p, uint16_t port) {
  return (static_cast<uint32_t>(p) << 16) | port;
}
constexpr Protocol port_key_protocol(uint32_t key) { return static_cast<Protocol>(key >> 16); }
constexpr uint16_t port_key_port(uint32_t key) { return static_cast<uint16_t>(key & 0xffff); }

bool options_equal(const SocketOptions& a, const SocketOptions& b);
// Whether two endpoints of the same protocol and port would collide in the kernel.
bool endpoints_overlap(const Endpoint& a, const Endpoint& b);

// Asked when a uid other than a group's owner (and not root) would join it: ok, or why not
// (appended to the conflict message that names the holder).
using JoinCheck = std::function<Result<void>(const Binding&)>;

class Registry {
 public:
  // Decides whether `who` may hold `ep` in `mode`: a new binding, joining an existing shared
  // or reuseport one, or a kConflict error that names the holder. Another uid joins only when
  // `may_join` says so.
  Result<Plan> plan(const Endpoint& ep, Mode mode, const SocketOptions& options,
                    uint32_t requester_uid, const JoinCheck& may_join = {}) const;
  // Whether any binding overlaps `ep` (used to skip ports when allocating from a pool).
  bool in_use(const Endpoint& ep) const;

  uint64_t add_binding(const Endpoint& ep, Mode mode, const SocketOptions& options,
                       uint32_t owner_uid);
  uint64_t add_lease(uint64_t binding, std::string name, uint64_t session, Holder holder,
                     int64_t created_ms, uint32_t linger_s = 0, std::string token = {});

  // Rebuilding the registry of a previous daemon (from its journal) with the same ids: a
  // binding first (its `leases` empty), then its leases in the order they were granted.
  void restore_binding(Binding b);
  void restore_lease(Lease l);
  uint64_t next_id() const { return next_id_; }
  void set_next_id(uint64_t next) { next_id_ = std::max(next_id_, next); }

  // Its session ended without a release: the lease outlives it until `until_ms`.
  void set_lingering(uint64_t lease_id, int64_t until_ms);
  // A lingering lease on exactly `ep` in `mode` that `uid` (its holder's uid) or `token`
  // may take back.
  std::optional<uint64_t> find_reclaimable(const Endpoint& ep, Mode mode, uint32_t uid,
                                           const std::string& token) const;
  // Gives a lingering lease to a new session and holder.
  void reclaim(uint64_t lease_id, uint64_t session, Holder holder);
  // Undoes reclaim() (the acquire that reclaimed it failed): the lease lingers again until
  // `until_ms` for `holder`, the one it lingered for, so that uid can still take it back.
  void unreclaim(uint64_t lease_id, Holder holder, int64_t until_ms);
  // Lingering leases whose time is up at `now_ms`.
  std::vector<uint64_t> expired(int64_t now_ms) const;

  struct Removed {
    Lease lease;
    Mode mode = Mode::kExclusive;
    Endpoint endpoint;
    bool binding_empty = false;  // the binding was removed with its last lease
  };
  // Removes one lease (and its binding when it was the last member).
  std::optional<Removed> remove_lease(uint64_t lease_id);

  // Bindings that overlap `ep` (what plan() would name in a conflict).
  std::vector<uint64_t> overlapping(const Endpoint& ep) const;
  // The session's holder is now another process (the first exited, leaving the connection to
  // a child): the lease is that process's.
  void rehome(uint64_t lease_id, Holder holder);
  // A holder may exec (portbroker exec does): lets the server keep the shown command current.
  void set_comm(uint64_t lease_id, const std::string& comm);

  const Lease* find_lease(uint64_t id) const;
  const Binding* find_binding(uint64_t id) const;
  std::vector<uint64_t> leases_of_session(uint64_t session) const;
  size_t leases_of_uid(uint32_t uid) const;
  const std::vector<uint64_t>& lease_ids_of_uid(uint32_t uid) const;
  size_t lease_count() const { return leases_.size(); }
  size_t binding_count() const { return bindings_.size(); }
  // Every lease, ordered by id.
  std::vector<const Lease*> all_leases() const;

  // "tcp 0.0.0.0:8080 is leased exclusively by pid 4242 (myserver, uid 1000) since 12:00:03"
  std::string describe_holder(const Binding& b) const;

 private:
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Binding> bindings_;
  std::unordered_map<uint64_t, Lease> leases_;
  std::unordered_map<uint32_t, std::vector<uint64_t>> by_port_;  // port_key -> bindings
  std::unordered_map<uint64_t, std::vector<uint64_t>> by_session_;
  std::unordered_map<uint32_t, std::vector<uint64_t>> by_uid_;
  std::vector<uint64_t> lingering_;

  void change_holder(Lease& l, Holder holder);
};

// Local wall-clock time of day, "HH:MM:SS", for messages.
std::string format_time_of_day(int64_t unix_ms);

}  // namespace portbroker::broker
