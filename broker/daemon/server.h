// The daemon's event loop side: the control socket, sessions, request dispatch, and the
// sockets behind every lease. Single-threaded on a libuv loop; nothing here blocks.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/core/policy.h"
#include "broker/core/registry.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

struct UidLimits {
  size_t connections = 64;  // open control connections per uid
  size_t leases = 1024;     // leases held per uid
};

struct ServerConfig {
  std::string socket_path;
  std::string config_path;  // the policy file; when it does not exist the embedded default serves
  std::string state_dir;    // runtime reservations persist here
  std::optional<PortRange> pool;  // --pool: replaces the ports of the pool named "default"
  std::optional<size_t> max_connections_per_uid;  // override the policy's [limits]
  std::optional<size_t> max_leases_per_uid;
  UidLimits root_limits{4096, 65536};  // root, generous but bounded
  // A connection must send its first request this soon: a client that connects and says
  // nothing would otherwise hold one of its uid's connection slots for ever.
  uint64_t first_request_timeout_ms = 30'000;
};

// Reads the policy file (or the embedded default when `path` does not exist), applies the
// command line's overrides and adds the runtime reservations from `state_dir`.
Result<Policy> load_policy(const ServerConfig& config);

class Server {
 public:
  struct HeldSocket {
    IpAddress address;
    bool v6only = false;
    UniqueFd fd;
    bool parked = false;  // TCP: shut down (bound, not listening) while leased elsewhere
  };
  struct Held {
    std::string reservation;
    std::vector<HeldSocket> sockets;
  };

  Server(uv_loop_t* loop, ServerConfig config, Policy policy);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the control socket (see prepare_socket_path) and starts accepting.
  Result<void> start();
  // Ends every session (releasing its leases), closes the control socket and removes its
  // file. The loop then runs out of handles and returns.
  void stop();

  // Re-reads the policy (SIGHUP, `portbroker reload`). Keeps every lease; returns the ones
  // the new policy would refuse. On an invalid file the old policy stays in force.
  Result<std::vector<std::string>> reload();

  size_t session_count() const { return sessions_.size(); }
  const Registry& registry() const { return registry_; }

 private:
  struct Session;
  struct Reply;

  static void on_listen_readable(uv_poll_t* handle, int status, int events);
  static void on_session_event(uv_poll_t* handle, int status, int events);

  void accept_pending();
  void accept_one(UniqueFd conn);
  void read_requests(Session& s);
  void flush_pending(Session& s);
  bool send_reply(Session& s, Reply& reply);
  void handle_record(Session& s, Reply& reply);
  void close_session(Session& s);

  void do_acquire(Session& s, capnp::List<wire::SocketRequest>::Reader list, Reply& reply);
  void do_release(Session& s, uint64_t lease_id, Reply& reply);
  void do_list(Reply& reply);
  void do_status(Reply& reply);
  void do_reserve(Session& s, wire::Reservation::Reader r, Reply& reply);
  void do_unreserve(Session& s, std::string_view name, Reply& reply);
  void do_reservations(Reply& reply);
  void do_reload(Session& s, Reply& reply);
  void do_who(Session& s, wire::WhoRequest::Reader r, Reply& reply);
  void do_check(const Session& s, Reply& reply);
  bool require_root(const Session& s, const char* what, Reply& reply);

  std::vector<HeldLease> held_by(uint32_t uid) const;
  // ": held by pid 77 (nginx, uid 0)": who outside the broker has the port bound, if visible.
  std::string outside_holders_text(Protocol p, uint16_t port, uint32_t viewer_uid) const;
  std::string current_comm(const Lease& l) const;
  void refresh_comms(const Endpoint& ep);
  // Asks the policy; on success names the reservation that granted, if any.
  Result<void> authorize(const Session& s, const SocketSpec& spec, bool from_pool,
                         std::string* reservation) const;
  Result<UniqueFd> allocate_from_pools(const Session& s, SocketSpec& spec, Endpoint& ep);
  // Leases the current policy would refuse, one line each.
  std::vector<std::string> leases_refused_by_policy() const;
  Result<void> save_runtime_reservations() const;

  // Held reservations: sockets the daemon binds and keeps so nothing outside the broker can
  // take the port (admin.cc).
  // Holds every port of every held reservation (or only `only`'s) that is neither held nor
  // leased; returns what could not be held. Also runs from the sweep timer, so a hold that
  // failed (the port was taken outside) is retried until it succeeds.
  std::vector<Error> sync_held(const std::string& only = {}, bool from_sweep = false);
  // A socket for a lease of a reserved port: the held socket itself when it fits the request,
  // else a new one (a held TCP socket then parks: bound, not listening).
  Result<UniqueFd> bind_reserved(const SocketSpec& spec);
  // Binds what is missing of a held port's sockets.
  Result<void> hold_port(const Reservation& r, Protocol p, uint16_t port);
  bool any_parked() const {
    for (const auto& [key, entry] : held_) {
      for (const auto& h : entry.sockets) {
        if (h.parked) return true;
      }
    }
    return false;
  }
  void rehold_if_reserved(const Endpoint& ep, UniqueFd old);
  std::vector<HeldSocket> hold_addresses(const Reservation& r) const;
  static void unpark(Held& entry);
  void apply_guard();
  void remove_guard();

  // Ends one lease and closes (after shutdown, so a copy held elsewhere stops serving) the
  // socket that only it used.
  void end_lease(uint64_t lease_id);
  UidLimits limits_for(uint32_t uid) const {
    if (uid == 0) return config_.root_limits;
    return UidLimits{
        config_.max_connections_per_uid.value_or(policy_.limits.max_connections_per_uid),
        config_.max_leases_per_uid.value_or(policy_.limits.max_leases_per_uid)};
  }

  uv_loop_t* loop_;
  ServerConfig config_;
  Registry registry_;
  UniqueFd listen_fd_;
  UniqueFd reserve_fd_;  // closed to accept-and-drop a connection when out of fds
  uv_poll_t listen_poll_{};
  // Closes connections that never send a request (first_request_timeout_ms).
  uv_timer_t sweep_timer_{};
  static void on_sweep(uv_timer_t* t);
  bool listening_ = false;
  bool stopping_ = false;  // sessions closed by stop() end their leases, lingering or not
  bool socket_created_ = false;
  bool dual_stack_default_ = true;
  int64_t started_at_ms_ = 0;

  uint64_t next_session_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::unordered_map<uint32_t, size_t> connections_per_uid_;
  // The broker's own copy of every socket it hands out: per binding for exclusive and
  // shared, per lease for reuseport members (each has its own socket in the group).
  std::unordered_map<uint64_t, UniqueFd> binding_sockets_;
  std::unordered_map<uint64_t, UniqueFd> member_sockets_;
  std::unordered_map<std::string, size_t> pool_cursors_;
  Policy policy_;

  std::unordered_map<uint32_t, Held> held_;                  // key: protocol << 16 | port
  std::unordered_map<uint32_t, std::string> hold_failures_;  // why a held port is not held
  bool ipv6_available_ = true;
  std::vector<PortRange> guard_added_;  // what we put into ip_local_reserved_ports
  bool guard_state_loaded_ = false;

  ipc::RecvBuffer recv_buf_;
  // The first segment of every reply; MallocMessageBuilder zeroes what it used when done.
  std::vector<capnp::word> scratch_ = std::vector<capnp::word>(1024);
};

// Creates the socket's directory if needed and refuses unsafe ones (a symlink, a directory
// others may write to without the sticky bit, one owned by another user); refuses a symlink
// or non-socket at `path`; removes the socket file of a dead daemon; refuses to start when a
// live daemon answers there.
Result<void> prepare_socket_path(const std::string& path);

int64_t unix_now_ms();
// 32 random hex digits.
std::string new_token();

}  // namespace portbroker::broker
