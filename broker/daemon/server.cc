#include "broker/daemon/server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "broker/daemon/server_internal.h"
#include "broker/os/control_socket.h"
#include "broker/os/peer.h"
#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"

namespace portbroker::broker {

namespace {

constexpr int kListenBacklog = 1024;
// A uid's requests off the loop at one time (who, check, naming an outside holder): with the
// thread pool's 4 threads, one uid's flood leaves room for others' scans.
constexpr size_t kMaxDeferredPerUid = 2;
// A part of a long reply aims at half a record: each is built in one turn of the scheduler,
// and half a record's items are about as long a turn as a cheap request's.
constexpr size_t kPartBudgetWords = ipc::kMaxRecordWords / 2;

rlim_t open_file_limit() {
  rlimit rl{};
  return ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
}

}  // namespace

std::string ServerConfig::journal_dir() const {
  if (!runtime_dir.empty()) return runtime_dir + "/journal";
  auto slash = socket_path.rfind('/');
  return (slash == std::string::npos || slash == 0 ? std::string("/")
                                                   : socket_path.substr(0, slash)) +
         "/journal";
}

// A restored lease's holder whose connection did not survive: its leases end when it exits.
struct Server::HolderWatch {
  Server* server = nullptr;
  OrphanSession orphan;
  uv_poll_t poll{};
};

Server::Server(uv_loop_t* loop, ServerConfig config, Policy policy)
    : loop_(loop),
      config_(std::move(config)),
      service_(config_.service_config(), std::move(policy),
               config_.sys != nullptr ? *config_.sys : SysCalls::real()),
      events_(config_.events),
      fd_store_(config_.fd_store) {}

Server::~Server() = default;

void Server::log_notices() {
  for (const Notice& n : service_.take_notices()) {
    if (n.level == Notice::kWarn) {
      spdlog::warn("{}", n.text);
    } else {
      spdlog::info("{}", n.text);
    }
  }
  publish_events();
}

Result<void> Server::start() {
  started_at_ms_ = unix_now_ms();
  bool have_control = false;
  Inheritance passed = take_over(take_inherited_fds(), have_control);
  if (!have_control) {
    auto stale = prepare_socket_path(config_.socket_path);
    if (!stale) return stale.error();
    if (*stale) {
      spdlog::info("removed stale socket {} of a daemon that is gone", config_.socket_path);
    }
    auto fd = listen_control_socket(config_.socket_path, kListenBacklog);
    if (!fd) return fd.error();
    listen_fd_ = std::move(fd).value();
    if (auto stored = fd_store_.store(listen_fd_.get(), kControlFdName); !stored) {
      spdlog::warn("{}", stored.error().message);
    }
  }
  socket_created_ = true;
  reserve_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  set_fd_share();
  if (auto restored = restore(std::move(passed)); !restored) return restored;

  uv_poll_init(loop_, &listen_poll_, listen_fd_.get());
  listen_poll_.data = this;
  uv_poll_start(&listen_poll_, UV_READABLE, &Server::on_listen_readable);
  uv_timer_init(loop_, &sweep_timer_);
  sweep_timer_.data = this;
  // Also the retry period of holds that failed.
  uint64_t every = std::clamp<uint64_t>(config_.first_request_timeout_ms / 4, 50, 2000);
  uv_timer_start(&sweep_timer_, &Server::on_sweep, every, every);
  uv_unref(reinterpret_cast<uv_handle_t*>(&sweep_timer_));
  uv_timer_init(loop_, &shutdown_timer_);
  shutdown_timer_.data = this;
  uv_timer_init(loop_, &upgrade_timer_);
  upgrade_timer_.data = this;
  uv_idle_init(loop_, &schedule_idle_);
  schedule_idle_.data = this;
  uv_prepare_init(loop_, &at_once_reset_);
  at_once_reset_.data = this;
  start_monitoring();
  listening_ = true;
  return {};
}

Inheritance Server::take_over(std::vector<NamedFd> inherited, bool& have_control) {
  Inheritance passed;
  size_t sessions = 0;
  for (NamedFd& nfd : inherited) {
    uint64_t session = 0;
    const FdKind kind = classify_fd_name(nfd.name, &session);
    if (kind == FdKind::kControl && !have_control) {
      have_control = true;
      listen_fd_ = std::move(nfd.fd);
    } else if (kind == FdKind::kSession) {
      add_session(std::move(nfd.fd), session);
      ++sessions;
    } else if (kind == FdKind::kHold) {
      passed.holds.push_back(std::move(nfd.fd));
    } else if (uint64_t cookie = socket_cookie(nfd.fd.get()); cookie != 0) {
      // A lease socket, known by its cookie whatever its name.
      passed.sockets.emplace(cookie, std::move(nfd.fd));
    }
  }
  if (!inherited.empty()) {
    spdlog::info("took over {} fd(s) from the previous daemon: {} session(s){}", inherited.size(),
                 sessions, have_control ? ", the control socket" : "");
  }
  return passed;
}

Result<void> Server::restore(Inheritance passed) {
  auto report = service_.start(std::move(passed));
  log_notices();
  if (!report) return report.error();
  for (const std::string& line : report->lines) spdlog::warn("restart: {}", line);
  if (report->restored + report->dropped > 0) {
    spdlog::info("restart: {} lease(s) restored ({} without the broker's copy), {} ended",
                 report->restored, report->without_copy, report->dropped);
  }
  for (OrphanSession& o : report->orphans) watch_orphan(std::move(o));
  next_session_ = std::max(next_session_, service_.next_session_id());
  return {};
}

void Server::search_new_holders() {
  for (auto& [id, s] : sessions_) {
    if (s->closing || s->searching || !s->pidfd || pidfd_alive(s->pidfd.get())) continue;
    auto* search = new HolderSearch;
    search->req.data = search;
    search->server = this;
    search->session = id;
    search->gone = s->holder.pid;
    search->conn.reset(SysCalls::real().dup_cloexec(s->conn.get()));
    if (!search->conn) {
      delete search;
      continue;
    }
    s->searching = true;
    ++deferred_in_flight_;
    int rc = uv_queue_work(
        loop_, &search->req,
        [](uv_work_t* req) {
          auto* w = static_cast<HolderSearch*>(req->data);
          if (auto found = unix_peer_processes(w->conn.get())) w->found = std::move(found).value();
        },
        [](uv_work_t* req, int) {
          std::unique_ptr<HolderSearch> w(static_cast<HolderSearch*>(req->data));
          --w->server->deferred_in_flight_;
          try {
            w->server->adopt_new_holder(*w);
          } catch (const std::exception& e) {
            spdlog::error("looking for a session's new holder failed: {}", e.what());
          }
        });
    if (rc != 0) {
      --deferred_in_flight_;
      s->searching = false;
      delete search;
    }
  }
}

void Server::adopt_new_holder(HolderSearch& search) {
  auto it = sessions_.find(search.session);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  s.searching = false;
  const pid_t self = ::getpid();
  for (const SocketOwner& owner : search.found) {
    if (owner.pid == self) continue;
    UniqueFd pidfd = open_process(owner.pid, process_start_time(owner.pid));
    if (!pidfd) continue;  // gone already
    s.holder.pid = owner.pid;
    s.holder.comm = owner.comm;
    s.holder.cgroup = read_cgroup(owner.pid);
    s.pidfd = std::move(pidfd);
    service_.rehome_session(s.id, s.holder, s.pidfd.get());
    spdlog::info("pid={} uid={} now holds session {} (pid {} exited)", owner.pid, s.holder.uid,
                 s.id, search.gone);
    return;
  }
}

void Server::watch_orphan(OrphanSession o) {
  auto w = std::make_unique<HolderWatch>();
  w->server = this;
  w->orphan = std::move(o);
  uv_poll_init(loop_, &w->poll, w->orphan.pidfd.get());
  w->poll.data = w.get();
  // A pidfd becomes readable when its process exits.
  uv_poll_start(&w->poll, UV_READABLE, [](uv_poll_t* handle, int, int) {
    auto* watch = static_cast<HolderWatch*>(handle->data);
    Server* self = watch->server;
    const uint64_t id = watch->orphan.session;
    auto ended = self->service_.end_session(id);
    self->log_notices();
    spdlog::info("pid={} uid={} exited; released {} restored lease(s), {} lingering",
                 watch->orphan.holder.pid, watch->orphan.holder.uid, ended.released,
                 ended.lingering);
    uv_poll_stop(handle);
    auto node = self->watches_.extract(id);
    HolderWatch* raw = node.mapped().release();
    uv_close(reinterpret_cast<uv_handle_t*>(&raw->poll),
             [](uv_handle_t* h) { delete static_cast<HolderWatch*>(h->data); });
  });
  watches_.emplace(w->orphan.session, std::move(w));
}

void Server::stop(bool revoke_all) {
  std::vector<Session*> all;
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  if (revoke_all) {
    service_.stop();
  } else {
    detaching_ = true;  // the fd store keeps the sessions for the next daemon
    service_.detach();
  }
  for (auto& [id, w] : watches_) {
    uv_poll_stop(&w->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&w.release()->poll),
             [](uv_handle_t* h) { delete static_cast<HolderWatch*>(h->data); });
  }
  watches_.clear();
  for (Session* s : all) close_session(*s);
  log_notices();
  if (listening_) {
    uv_poll_stop(&listen_poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(&listen_poll_), nullptr);
    uv_timer_stop(&sweep_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&sweep_timer_), nullptr);
    uv_timer_stop(&shutdown_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&shutdown_timer_), nullptr);
    uv_timer_stop(&upgrade_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&upgrade_timer_), nullptr);
    uv_idle_stop(&schedule_idle_);
    uv_close(reinterpret_cast<uv_handle_t*>(&schedule_idle_), nullptr);
    uv_prepare_stop(&at_once_reset_);
    uv_close(reinterpret_cast<uv_handle_t*>(&at_once_reset_), nullptr);
    served_at_once_.clear();
    uid_ring_.clear();
    uid_queues_.clear();
    stop_monitoring();
    listening_ = false;
  }
  listen_fd_.reset();
  reserve_fd_.reset();
  // Under a service manager's fd store the control socket lives on for the next daemon, so its
  // file must stay too.
  if (socket_created_ && !(detaching_ && fd_store_.enabled())) {
    ::unlink(config_.socket_path.c_str());
    socket_created_ = false;
  }
}

void Server::on_listen_readable(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<Server*>(handle->data);
  if (status < 0) {
    spdlog::error("control socket poll failed: {}", uv_strerror(status));
    return;
  }
  try {
    self->accept_pending();
  } catch (const std::exception& e) {  // e.g. bad_alloc: drop this wake-up, keep serving
    spdlog::error("accepting connections failed: {}", e.what());
  }
}

void Server::on_sweep(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  try {
    const uint64_t now = uv_now(self->loop_);
    std::vector<Session*> silent;
    for (auto& [id, s] : self->sessions_) {
      if (!s->spoke && now - s->connected_at >= self->config_.first_request_timeout_ms) {
        silent.push_back(s.get());
      }
    }
    for (Session* s : silent) {
      spdlog::info("pid={} uid={} closed: no request within {} ms", s->holder.pid, s->holder.uid,
                   self->config_.first_request_timeout_ms);
      self->close_session(*s);
    }
    for (uint64_t id : self->service_.expire(unix_now_ms())) {
      spdlog::info("lingering lease {} ended: its holder did not come back", id);
    }
    self->service_.retry_holds();
    self->search_new_holders();
    self->log_notices();
  } catch (const std::exception& e) {
    spdlog::error("sweep failed: {}", e.what());
  }
}

void Server::accept_pending() {
  for (int i = 0; i < 256; ++i) {
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      accept_one(UniqueFd(fd));
      continue;
    }
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) return;
    if (e == EINTR || e == ECONNABORTED) continue;
    if (e == EMFILE || e == ENFILE) {
      // Out of fds: accept with the reserve fd and refuse the connection, so the client reads
      // why instead of the listen queue filling and the loop spinning on readability.
      spdlog::warn("out of file descriptors ({}); refusing a new connection", std::strerror(e));
      reserve_fd_.reset();
      UniqueFd refused(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (refused) {
        refuse_connection(
            std::move(refused),
            make_error(ErrorCode::kResourceExhausted,
                       e == EMFILE ? "portbrokerd is out of file descriptors (its limit, "
                                     "RLIMIT_NOFILE, is " +
                                         std::to_string(open_file_limit()) + "); try again later"
                                   : "the system is out of file descriptors (fs.file-max); "
                                     "portbrokerd cannot take a connection now"));
      }
      reserve_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      return;
    }
    spdlog::error("accept on control socket failed: {}", std::strerror(e));
    return;
  }
}

void Server::accept_one(UniqueFd conn) { add_session(std::move(conn), 0); }

void Server::refuse_connection(UniqueFd conn, const Error& e) {
  // What the client sent is read (and dropped) first: a connection closed with a record unread
  // makes the client's next read fail with ECONNRESET, which would hide the error behind it.
  char sink[64];
  for (int i = 0; i < 16; ++i) {
    if (::recv(conn.get(), sink, sizeof(sink), MSG_DONTWAIT | MSG_TRUNC) <= 0) break;
  }
  kj::FixedArray<capnp::word, 256> scratch;
  std::memset(scratch.begin(), 0, sizeof(capnp::word) * scratch.size());
  Reply reply(scratch);
  reply.error(e);
  (void)ipc::send_message(conn.get(), reply.message, {}, true);
}

bool Server::may_log(uint32_t uid) {
  size_t suppressed = 0;
  if (!log_limiter_.allow(uid, uv_now(loop_), &suppressed)) return false;
  if (suppressed > 0) {
    spdlog::info("uid={}: {} more line(s) of this uid's bad input were not logged", uid,
                 suppressed);
  }
  return true;
}

void Server::set_fd_share() {
  // Every lease costs the daemon an fd (its copy of the socket), and so does every connection:
  // raise the soft limit as far as the hard one allows, then give no uid but root more than
  // half of what is left after a reserve for the daemon's own files and root's requests.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rlimit raised{rl.rlim_max, rl.rlim_max};
    if (rl.rlim_max != RLIM_INFINITY && ::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  const size_t limit = open_file_limit();
  fd_limit_ = limit;
  fd_share_ = std::max<size_t>(kMinFdShare, limit > kReservedFds ? (limit - kReservedFds) / 2 : 0);
}

std::optional<Error> Server::over_fd_share(uint32_t uid, size_t more) const {
  if (uid == 0) return std::nullopt;
  auto c = connections_per_uid_.find(uid);
  const size_t used =
      (c == connections_per_uid_.end() ? 0 : c->second) + service_.registry().leases_of_uid(uid);
  if (used + more <= fd_share_) return std::nullopt;
  return make_error(ErrorCode::kLimitExceeded,
                    "uid " + std::to_string(uid) + " already uses " + std::to_string(used) +
                        " of portbrokerd's file descriptors (connections and leases); one uid's "
                        "share is " +
                        std::to_string(fd_share_) + " of its limit of " +
                        std::to_string(fd_limit_));
}

void Server::add_session(UniqueFd conn, uint64_t id) {
  auto peer = read_peer_identity(conn.get());
  if (!peer) {
    spdlog::warn("dropping a connection: {}", peer.error().message);
    return;
  }
  const ucred cred{peer->pid, peer->uid, peer->gid};
  auto s = std::make_unique<Session>();
  s->server = this;
  s->id = id != 0 ? id : next_session_++;
  next_session_ = std::max(next_session_, s->id + 1);
  s->spoke = id != 0;  // a session passed on has spoken before
  s->conn = std::move(conn);
  s->pidfd = std::move(peer->pidfd);
  s->connected_at = uv_now(loop_);
  s->holder.pid = cred.pid;
  s->holder.uid = cred.uid;
  s->holder.gid = cred.gid;

  const UidLimits lim = service_.limits_for(cred.uid);
  size_t& conns = connections_per_uid_[cred.uid];
  std::optional<Error> over;
  if (conns >= lim.connections) {
    over = make_error(ErrorCode::kLimitExceeded, "uid " + std::to_string(cred.uid) +
                                                     " already has " + std::to_string(conns) +
                                                     " connections to portbrokerd (limit " +
                                                     std::to_string(lim.connections) + ")");
  } else if (auto share = over_fd_share(cred.uid, 1)) {
    over = std::move(share);
  }
  if (over) {
    if (may_log(cred.uid)) {
      spdlog::warn("pid={} uid={} connection refused: {}", cred.pid, cred.uid, over->message);
    }
    if (conns == 0) connections_per_uid_.erase(cred.uid);
    refuse_connection(std::move(s->conn), *over);
    return;
  }
  ++conns;

  s->holder.comm = read_comm(cred.pid);
  s->holder.cgroup = read_cgroup(cred.pid);
  if (s->pidfd && !pidfd_alive(s->pidfd.get())) {
    // The peer exited while we looked it up; what we read may belong to a recycled pid.
    s->holder.comm.clear();
    s->holder.cgroup.clear();
  }
  s->principal.uid = cred.uid;
  s->principal.gid = cred.gid;
  s->principal.cgroup = s->holder.cgroup;
  s->principal.groups = std::move(peer->groups);
  service_.open_session(s->id, s->holder, s->principal, s->pidfd.get());
  if (fd_store_.enabled()) {
    if (auto stored = fd_store_.store(s->conn.get(), session_fd_name(s->id)); !stored) {
      spdlog::warn("{}", stored.error().message);
    }
  }

  uv_poll_init(loop_, &s->poll, s->conn.get());
  s->poll.data = s.get();
  uv_poll_start(&s->poll, UV_READABLE | UV_DISCONNECT, &Server::on_session_event);
  spdlog::debug("pid={} uid={} connected (session {}, {})", cred.pid, cred.uid, s->id,
                s->holder.comm);
  sessions_.emplace(s->id, std::move(s));
}

void Server::on_session_event(uv_poll_t* handle, int status, int events) {
  auto* s = static_cast<Session*>(handle->data);
  Server* self = s->server;
  if (s->closing) return;
  if (status < 0) {
    self->close_session(*s);
    return;
  }
  try {
    if ((events & UV_WRITABLE) && s->subscriber) {
      self->flush_events(*s);
      if (s->closing) return;
    } else if (events & UV_WRITABLE) {
      self->flush_pending(*s);
      return;
    }
    if (s->deferred) {
      // Only a hang-up is watched while its reply is made off the loop: nobody waits for it.
      if (events & UV_DISCONNECT) self->close_session(*s);
      return;
    }
    if (events & (UV_READABLE | UV_DISCONNECT)) {
      if (self->may_serve_at_once(*s)) {
        self->serve_at_once(*s);
      } else {
        self->enqueue(*s);
      }
    }
  } catch (const std::exception& e) {
    // Only resource exhaustion gets here (requests catch their own errors): this client
    // loses its session, the daemon and everyone else carry on.
    spdlog::error("pid={} uid={} session failed: {}", s->holder.pid, s->holder.uid, e.what());
    self->close_session(*s);
  }
}

void Server::enqueue(Session& s) {
  if (s.closing || s.queued) return;
  uv_poll_stop(&s.poll);
  s.queued = true;
  UidQueue& q = uid_queues_[s.holder.uid];
  q.ready.push_back(s.id);
  ring_uid(s.holder.uid, q);
}

bool Server::may_serve_at_once(const Session& s) const {
  return listening_ && uid_ring_.empty() && uid_queues_.count(s.holder.uid) == 0 &&
         std::find(served_at_once_.begin(), served_at_once_.end(), s.holder.uid) ==
             served_at_once_.end() &&
         !s.queued && !s.deferred && !s.parts && s.pending.size() == 0 && !s.subscriber &&
         !s.subscribing;
}

void Server::on_at_once_reset(uv_prepare_t* handle) {
  auto* self = static_cast<Server*>(handle->data);
  self->served_at_once_.clear();
  uv_prepare_stop(handle);
}

void Server::serve_at_once(Session& s) {
  // Other sessions of this uid readable in the same turn wait for the scheduler's round.
  if (served_at_once_.empty()) uv_prepare_start(&at_once_reset_, &Server::on_at_once_reset);
  served_at_once_.push_back(s.holder.uid);  // may_serve_at_once: not there yet
  read_request(s);
  // A deferred reply, a reply waiting for room and a closed session each set what is polled.
  if (s.closing || s.deferred || s.pending.size() != 0) return;
  // Long replies and event streams go on through the scheduler, as any session does.
  if (s.parts || s.subscriber || s.subscribing) enqueue(s);
  // Otherwise the poll is still armed: a pipelined request shows as readable again.
}

void Server::ring_uid(uint32_t uid, UidQueue& q) {
  if (q.in_ring || q.ready.empty() || q.in_flight >= kMaxDeferredPerUid || !listening_) return;
  q.in_ring = true;
  uid_ring_.push_back(uid);
  if (uid_ring_.size() == 1) uv_idle_start(&schedule_idle_, &Server::on_schedule);
}

void Server::on_schedule(uv_idle_t* handle) {
  auto* self = static_cast<Server*>(handle->data);
  try {
    self->run_round();
  } catch (const std::exception& e) {  // bad_alloc: the next round tries again
    spdlog::error("serving requests failed: {}", e.what());
  }
  if (self->uid_ring_.empty()) uv_idle_stop(&self->schedule_idle_);
}

void Server::run_round() {
  // One unit of work for each uid that had work when the round began; those that still have
  // some go round again, after everyone else.
  for (size_t n = uid_ring_.size(); n > 0 && !uid_ring_.empty(); --n) {
    const uint32_t uid = uid_ring_.front();
    uid_ring_.pop_front();
    auto qit = uid_queues_.find(uid);
    if (qit == uid_queues_.end()) continue;
    // A reference stays valid as other uids come and go; in_ring stays set while this uid is
    // served, so that nothing forgets its queue meanwhile.
    UidQueue& q = qit->second;
    Session* s = nullptr;
    while (s == nullptr && !q.ready.empty()) {
      auto it = sessions_.find(q.ready.front());
      q.ready.pop_front();
      if (it != sessions_.end() && it->second->queued) s = it->second.get();
    }
    if (s != nullptr) {
      s->queued = false;
      try {
        serve(*s);
      } catch (const std::exception& e) {
        spdlog::error("pid={} uid={} session failed: {}", s->holder.pid, s->holder.uid, e.what());
        close_session(*s);
      }
      resume(*s);
    }
    q.in_ring = false;
    if (q.ready.empty() && q.in_flight == 0) {
      uid_queues_.erase(uid);
    } else {
      ring_uid(uid, q);
    }
  }
}

void Server::serve(Session& s) {
  if (s.closing || s.deferred || s.pending.size() != 0) return;
  if (s.parts) {
    send_next_part(s);
  } else {
    read_request(s);
  }
}

void Server::resume(Session& s) {
  // A reply made off the loop or waiting for room resumes the session from its callback.
  if (s.closing || s.deferred || s.pending.size() != 0) return;
  if (s.subscriber && s.drained) {
    flush_events(s);  // and polls for what the stream needs (room to write, a hang-up)
    return;
  }
  if (s.parts || !s.drained) {
    enqueue(s);
    return;
  }
  uv_poll_start(&s.poll, UV_READABLE | UV_DISCONNECT, &Server::on_session_event);
}

void Server::read_request(Session& s) {
  auto st = ipc::recv_record(s.conn.get(), recv_buf_, false, true);
  s.drained = st == ipc::RecvStatus::kWouldBlock;
  if (s.drained) return;
  s.spoke = true;
  if (st == ipc::RecvStatus::kEof || st == ipc::RecvStatus::kError || s.subscriber) {
    if (s.subscriber && st != ipc::RecvStatus::kEof && st != ipc::RecvStatus::kError) {
      spdlog::info("pid={} uid={} closed: sent a request on an events connection", s.holder.pid,
                   s.holder.uid);
    }
    close_session(s);
    return;
  }
  Reply reply(kj::arrayPtr(scratch_.data(), scratch_.size()));
  if (st != ipc::RecvStatus::kRecord && may_log(s.holder.uid)) {
    spdlog::info("pid={} uid={} sent a bad record: {}", s.holder.pid, s.holder.uid,
                 st == ipc::RecvStatus::kTruncated ? "larger than the limit"
                 : st == ipc::RecvStatus::kBadFds  ? "carrying fds"
                                                   : "not whole words");
  }
  switch (st) {
    case ipc::RecvStatus::kTruncated:
      reply.error(make_error(
          ErrorCode::kBadRequest,
          "record larger than " + std::to_string(ipc::kMaxRecordBytes) + " bytes refused"));
      break;
    case ipc::RecvStatus::kBadFds:
      reply.error(
          make_error(ErrorCode::kBadRequest, "records carrying file descriptors are refused"));
      break;
    case ipc::RecvStatus::kMisaligned:
      reply.error(make_error(
          ErrorCode::kBadRequest,
          "record of " + std::to_string(recv_buf_.bytes) + " bytes is not a Cap'n Proto message"));
      break;
    default:
      handle_record(s, reply);
      break;
  }
  if (s.deferred) return;  // its reply comes from on_deferred_done
  if (s.parts) {
    send_next_part(s);
    return;
  }
  if (send_reply(s, reply) && s.subscribing) begin_subscription(s);
}

void Server::send_next_part(Session& s) {
  Parts& p = *s.parts;
  const size_t budget = kPartBudgetWords;
  std::optional<Reply> part;
  for (;;) {
    const size_t n = std::min(p.guess, p.total - p.next);
    part.emplace(static_cast<unsigned>(kPartBudgetWords + kPartBudgetWords / 4));
    p.fill(part->root, p.next, p.next + n);
    const size_t words = capnp::computeSerializedSizeInWords(part->message);
    if (words > budget && n > 1) {
      p.guess = n / 2;
      continue;
    }
    p.next += n;
    // Aim the next part at 90% of the budget, judging by this one's items.
    if (n > 0) p.guess = std::max<size_t>(1, n * budget * 9 / 10 / std::max<size_t>(words, 1));
    break;
  }
  const bool more = p.next < p.total;
  part->root.setMore(more);
  if (!more) s.parts.reset();
  (void)send_reply(s, *part);
}

bool Server::send_reply(Session& s, Reply& reply) {
  int err = 0;
  capnp::word scratch[ipc::kFlattenScratchWords];
  kj::Array<capnp::word> heap;
  kj::ArrayPtr<const capnp::word> flat = ipc::flatten(reply.message, scratch, heap);
  if (ipc::send_record(s.conn.get(), flat, reply.fds, true, &err)) return true;
  if (err == EAGAIN || err == EWOULDBLOCK) {
    // The client is not reading. Keep the reply (and our own references to its sockets, so a
    // lease ending meanwhile cannot turn them into someone else's fds) and stop reading
    // until it drains: a slow client only ever slows itself.
    // A reply flattened into the stack scratch is flattened again onto the heap to be kept.
    s.pending = heap != nullptr ? std::move(heap) : capnp::messageToFlatArray(reply.message);
    for (int fd : reply.fds) {
      s.pending_fds.emplace_back(SysCalls::real().dup_cloexec(fd));
      if (!s.pending_fds.back()) {
        // Without our own reference the reply could carry someone else's socket later: give
        // up on this client (its session ends, and with it what the reply granted).
        spdlog::warn("pid={} uid={} reply dropped: {}", s.holder.pid, s.holder.uid,
                     std::strerror(errno));
        close_session(s);
        return false;
      }
    }
    uv_poll_start(&s.poll, UV_WRITABLE | UV_DISCONNECT, &Server::on_session_event);
    return false;
  }
  spdlog::debug("pid={} uid={} reply not delivered: {}", s.holder.pid, s.holder.uid,
                std::strerror(err));
  close_session(s);
  return false;
}

void Server::flush_pending(Session& s) {
  std::vector<int> fds;
  for (const auto& fd : s.pending_fds) fds.push_back(fd.get());
  int err = 0;
  if (!ipc::send_record(s.conn.get(), s.pending, fds, true, &err)) {
    if (err == EAGAIN || err == EWOULDBLOCK) return;
    close_session(s);
    return;
  }
  s.pending = nullptr;
  s.pending_fds.clear();
  s.drained = false;
  if (s.subscribing) begin_subscription(s);
  if (s.closing) return;
  enqueue(s);
}

void Server::close_session(Session& s) {
  if (s.closing) return;
  s.closing = true;
  s.queued = false;  // its uid's queue forgets it when it comes to it
  s.parts.reset();
  events_.unsubscribe(s.id);
  auto ended = service_.end_session(s.id);
  log_notices();
  if (fd_store_.enabled() && !detaching_) fd_store_.remove(session_fd_name(s.id));
  if (ended.released + ended.lingering > 0) {
    spdlog::info("pid={} uid={} session ended; released {} lease(s), {} lingering", s.holder.pid,
                 s.holder.uid, ended.released, ended.lingering);
  }
  if (auto it = connections_per_uid_.find(s.holder.uid);
      it != connections_per_uid_.end() && --it->second == 0) {
    connections_per_uid_.erase(it);
  }
  uv_poll_stop(&s.poll);
  auto node = sessions_.extract(s.id);
  Session* raw = node.mapped().release();
  uv_close(reinterpret_cast<uv_handle_t*>(&raw->poll),
           [](uv_handle_t* h) { delete static_cast<Session*>(h->data); });
}

}  // namespace portbroker::broker
