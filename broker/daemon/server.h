// The daemon's event-loop side: the control socket, sessions (connections), flow control, the
// sweep timer and request dispatch between the wire and the LeaseService, which owns every lease
// and socket. Single-threaded on a libuv loop: whatever could block (the /proc and sock_diag
// scans of who, check and refusals) runs on libuv's thread pool.
//
// Fairness is per uid, not per connection: a session with something to read waits in its uid's
// queue, and each round of the scheduler serves one unit of work (one request, or one part of a
// long reply) to each uid with work, so a uid with 60 connections gets one uid's share. A uid
// has at most kMaxDeferredPerUid requests off the loop at a time; long replies are built and
// sent one record at a time, each in its own turn.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/daemon/events.h"
#include "broker/daemon/log_limit.h"
#include "broker/daemon/metrics.h"
#include "broker/service/lease_service.h"
#include "broker/service/policy_source.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

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
  // The lease journal lives in <runtime_dir>/journal; "" means the control socket's directory.
  std::string runtime_dir;
  bool journal = true;
  bool fd_store = false;  // keep sockets and sessions in the service manager's fd store
  // Events and metrics (monitor.cc).
  EventHub::Limits events;
  std::string metrics_textfile;  // "": none
  uint64_t metrics_interval_ms = 5000;
  // The lease sockets' system calls; null means the real ones (tests/fuzz injects faults).
  SysCalls* sys = nullptr;

  PolicySource policy_source() const { return PolicySource{config_path, state_dir, pool}; }
  std::string journal_dir() const;
  ServiceConfig service_config() const {
    return ServiceConfig{state_dir,          journal ? journal_dir() : std::string(),
                         fd_store,           max_connections_per_uid,
                         max_leases_per_uid, root_limits};
  }
};

class Server {
 public:
  Server(uv_loop_t* loop, ServerConfig config, Policy policy);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the control socket (see prepare_socket_path) and starts accepting.
  Result<void> start();
  // Closes every session and the control socket and removes its file; the loop then runs out
  // of handles and returns. Holders keep their sockets unless `revoke_all` (then every lease
  // is revoked first).
  void stop(bool revoke_all = false);
  // Called (on the loop, after the reply went out) when an admin asks the daemon to stop.
  std::function<void(bool revoke_all)> on_shutdown_request;

  // Re-executes the daemon binary in place (`portbroker upgrade`, SIGUSR2), handing the next
  // one the control socket, every session's connection and every socket it keeps, so that no
  // listener closes and no client notices. Waits for replies in flight first. Returns only on
  // failure, with nothing changed.
  Result<void> upgrade();
  void request_upgrade();

  // Re-reads the policy (SIGHUP, `portbroker reload`). Keeps every lease; returns the ones
  // the new policy would refuse. On an invalid file the old policy stays in force.
  Result<std::vector<std::string>> reload();

  size_t session_count() const { return sessions_.size(); }

 private:
  struct Session;
  struct Reply;
  struct Deferred;
  struct Parts;

  // A uid's sessions with work waiting, in the order they got it.
  struct UidQueue {
    std::deque<uint64_t> ready;
    size_t in_flight = 0;  // its requests being worked on off the loop
    bool in_ring = false;
  };

  static void on_listen_readable(uv_poll_t* handle, int status, int events);
  static void on_session_event(uv_poll_t* handle, int status, int events);
  static void on_sweep(uv_timer_t* t);

  void accept_pending();
  void accept_one(UniqueFd conn);
  // One error record, then the connection closes (a limit, out of fds).
  static void refuse_connection(UniqueFd conn, const Error& e);
  // The most fds (connections and leases) one uid other than root may cost the daemon.
  void set_fd_share();
  // Why `more` fds for `uid` would exceed its share, if they would.
  std::optional<Error> over_fd_share(uint32_t uid, size_t more) const;
  // Whether a line `uid` caused may be logged now (see LogLimiter); says once how many were
  // suppressed before it.
  bool may_log(uint32_t uid);
  // A connection: a new one (id 0: the next id), or one a previous daemon passed on.
  void add_session(UniqueFd conn, uint64_t id);
  // What a previous daemon passed on: the control socket and sessions are taken here, the
  // rest is for the LeaseService (restore).
  Inheritance take_over(std::vector<NamedFd> inherited, bool& have_control);
  Result<void> restore(Inheritance passed);
  struct HolderWatch;
  struct HolderSearch;
  // Sessions whose process exited while their connection lives on (in a child it forked):
  // find who holds them now, off the loop.
  void search_new_holders();
  void adopt_new_holder(HolderSearch& search);
  void watch_orphan(OrphanSession o);
  static void on_upgrade_timer(uv_timer_t* t);
  // Scheduling: `enqueue` puts a session with work in its uid's queue (it is not polled
  // meanwhile); each round serves one unit per uid.
  void enqueue(Session& s);
  // With nothing queued for anyone, a plain request is served from its poll callback, its
  // poll left armed: libuv's uv_poll_stop + uv_poll_start cost two epoll_ctl calls, and the
  // scheduler's round an extra epoll_wait and a read that finds nothing.
  bool may_serve_at_once(const Session& s) const;
  void serve_at_once(Session& s);
  static void on_at_once_reset(uv_prepare_t* handle);
  static void on_schedule(uv_idle_t* handle);
  void run_round();
  void ring_uid(uint32_t uid, UidQueue& q);
  void serve(Session& s);
  void read_request(Session& s);
  // The next part of a long reply (Session::parts), sent.
  void send_next_part(Session& s);
  // After a unit of work: back in the queue while it has more, else polled again.
  void resume(Session& s);
  void flush_pending(Session& s);
  bool send_reply(Session& s, Reply& reply);
  void handle_record(Session& s, Reply& reply);
  void close_session(Session& s);
  void log_notices();

  // Events and metrics (monitor.cc).
  void start_monitoring();
  void stop_monitoring();
  // Numbers and sends what the LeaseService reported; counts it in the metrics.
  void publish_events();
  void do_events(Session& s, wire::EventsRequest::Reader r, Reply& reply);
  void do_metrics(Reply& reply);
  // The `subscribed` reply is out: the session streams events from now on.
  void begin_subscription(Session& s);
  void flush_events(Session& s);
  void on_subscriber_flow(uint64_t session, EventHub::Flow flow);
  std::string render_metrics() const;
  void write_metrics_textfile();
  static void on_metrics_timer(uv_timer_t* t);

  // Requests (dispatch.cc, diag.cc).
  void do_acquire(Session& s, capnp::List<wire::SocketRequest>::Reader list, Reply& reply);
  void do_release(Session& s, uint64_t lease_id, Reply& reply);
  void do_list(Session& s);
  void do_status(Reply& reply);
  void do_reserve(Session& s, wire::Reservation::Reader r, Reply& reply);
  void do_unreserve(Session& s, std::string_view name, Reply& reply);
  void do_reservations(Session& s);
  void do_reload(Session& s, Reply& reply);
  void do_who(Session& s, wire::WhoRequest::Reader r, Reply& reply);
  void do_check(Session& s, Reply& reply);
  void do_shutdown(Session& s, wire::ShutdownRequest::Reader r, Reply& reply);
  void do_upgrade(Session& s, Reply& reply);
  bool require_root(const Session& s, const char* what, Reply& reply);
  // Replies to a refused acquire, naming who holds the port outside the broker (a scan: off
  // the loop) when that is why.
  void refuse_acquire(Session& s, const SocketSpec& spec, size_t index, size_t count,
                      const Error& e, Reply& reply);

  // Work off the loop (diag.cc): `work` runs on libuv's thread pool and must touch no state of
  // the daemon; `done` then runs on the loop and fills the reply, sent to the session if it is
  // still there. The session reads no further request meanwhile, so replies stay in order.
  // `done` fills the reply, or sets the session's parts for a long one.
  void defer(Session& s, std::function<void()> work, std::function<void(Session&, Reply&)> done);
  static void on_deferred_work(uv_work_t* req);
  static void on_deferred_done(uv_work_t* req, int status);

  uv_loop_t* loop_;
  ServerConfig config_;
  LeaseService service_;
  UniqueFd listen_fd_;
  UniqueFd reserve_fd_;  // closed to accept-and-drop a connection when out of fds
  uv_poll_t listen_poll_{};
  // Closes connections that never send a request (first_request_timeout_ms), ends lingering
  // leases whose time is up and retries holds that failed.
  uv_timer_t sweep_timer_{};
  uv_timer_t shutdown_timer_{};  // runs on_shutdown_request once the reply is sent
  uv_timer_t upgrade_timer_{};   // runs upgrade() once nothing is in flight
  EventHub events_;
  std::vector<Event> event_buffer_;  // publish_events' storage, kept between rounds
  Metrics metrics_;
  uv_timer_t metrics_timer_{};       // rewrites the textfile every metrics_interval_ms
  uv_timer_t metrics_soon_timer_{};  // and shortly after a change
  bool metrics_soon_ = false;
  size_t deferred_in_flight_ = 0;
  FdStore fd_store_;
  std::unordered_map<uint64_t, std::unique_ptr<HolderWatch>> watches_;
  bool shutdown_revoke_all_ = false;
  bool listening_ = false;
  bool detaching_ = false;
  bool socket_created_ = false;
  int64_t started_at_ms_ = 0;

  uint64_t next_session_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::unordered_map<uint32_t, size_t> connections_per_uid_;
  // Fds kept out of any one uid's share: the daemon's own files, and room for root.
  static constexpr size_t kReservedFds = 32;
  static constexpr size_t kMinFdShare = 8;
  size_t fd_limit_ = 1024;
  size_t fd_share_ = (1024 - kReservedFds) / 2;
  LogLimiter log_limiter_{10, 60'000};  // per uid: 10 lines a minute
  // `check`'s leases the policy would refuse, kept until the policy changes (reload, reserve,
  // unreserve): computing them walks every lease on the loop.
  uint64_t policy_generation_ = 1;
  uint64_t refused_generation_ = 0;
  std::vector<LeaseService::RefusedLease> refused_;
  std::vector<std::string> refused_lines();
  std::unordered_map<uint32_t, UidQueue> uid_queues_;
  std::deque<uint32_t> uid_ring_;  // uids with work, served in turn
  uv_idle_t schedule_idle_{};      // active while any uid has work
  // Uids served at once (may_serve_at_once) in this turn of the loop: at most one request
  // each, as in a round. at_once_reset_ empties the list before the loop next polls. A list
  // (usually of one): a set allocated and freed a node per request.
  std::vector<uint32_t> served_at_once_;
  uv_prepare_t at_once_reset_{};

  ipc::RecvBuffer recv_buf_;
  // The first segment of every reply; MallocMessageBuilder zeroes what it used when done.
  std::vector<capnp::word> scratch_ = std::vector<capnp::word>(1024);
};

}  // namespace portbroker::broker
