// The daemon's event loop side: the control socket, sessions, request dispatch, and the
// sockets behind every lease. Single-threaded on a libuv loop; nothing here blocks.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/registry.h"
#include "ipc/fd.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/result.hpp"

namespace portbroker::broker {

struct Limits {
  size_t connections = 64;  // open control connections per uid
  size_t leases = 1024;     // leases held per uid
};

struct ServerConfig {
  std::string socket_path;
  uint16_t pool_low = 20000;
  uint16_t pool_high = 29999;
  Limits user_limits;               // every uid but root
  Limits root_limits{4096, 65536};  // root, generous but bounded
};

class Server {
 public:
  Server(uv_loop_t* loop, ServerConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the control socket (see prepare_socket_path) and starts accepting.
  Result<void> start();
  // Ends every session (releasing its leases), closes the control socket and removes its
  // file. The loop then runs out of handles and returns.
  void stop();

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

  // Ends one lease and closes (after shutdown, so a copy held elsewhere stops serving) the
  // socket that only it used.
  void end_lease(uint64_t lease_id);
  const Limits& limits_for(uint32_t uid) const {
    return uid == 0 ? config_.root_limits : config_.user_limits;
  }

  uv_loop_t* loop_;
  ServerConfig config_;
  Registry registry_;
  UniqueFd listen_fd_;
  UniqueFd reserve_fd_;  // closed to accept-and-drop a connection when out of fds
  uv_poll_t listen_poll_{};
  bool listening_ = false;
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
  uint16_t pool_cursor_[2] = {0, 0};  // per protocol

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

}  // namespace portbroker::broker
