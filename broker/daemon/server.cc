#include "broker/daemon/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "broker/daemon/server_internal.h"
#include "broker/os/socket_factory.h"
#include "broker/os/sysctl.h"
#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace portbroker::broker {

namespace {

// Fairness between busy clients: a client that answers quickly would otherwise be served again
// and again in one wake-up while the others wait (4 keeps the throughput of larger batches).
constexpr int kMaxRecordsPerWakeup = 4;
constexpr int kListenBacklog = 1024;

// The unified-hierarchy path ("0::/system.slice/foo.service"), else the first line's path.
std::string read_cgroup(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  std::string line, first;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
    if (first.empty()) {
      auto pos = line.find(':', line.find(':') + 1);
      if (pos != std::string::npos) first = line.substr(pos + 1);
    }
  }
  return first;
}

bool is_bound(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  return ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port != 0
                                 : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port != 0;
}

int count_open_fds() {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n > 0 ? n - 1 : 0;  // the iterator's own directory fd
}

}  // namespace

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

bool pidfd_alive(int pidfd) {
  return pidfd >= 0 && ::syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) == 0;
}

std::string new_token() {
  uint8_t bytes[16] = {};
  if (::getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
    // Not fatal: the holder's own uid reclaims without a token.
    return {};
  }
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

int64_t unix_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

Server::Server(uv_loop_t* loop, ServerConfig config, Policy policy)
    : loop_(loop), config_(std::move(config)), policy_(std::move(policy)) {}

Server::~Server() = default;

Result<void> prepare_socket_path(const std::string& path) {
  namespace fs = std::filesystem;
  sockaddr_un probe{};
  if (path.empty() || path.size() >= sizeof(probe.sun_path)) {
    return make_error(ErrorCode::kBadRequest,
                      "socket path '" + path + "' is empty or longer than " +
                          std::to_string(sizeof(probe.sun_path) - 1) + " bytes");
  }
  if (path.front() != '/') {
    return make_error(ErrorCode::kBadRequest, "socket path '" + path + "' must be absolute");
  }
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = "/";
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return make_error(ErrorCode::kInternal,
                        "cannot inspect " + dir + ": " + std::strerror(errno));
    }
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::kInternal, "cannot create " + dir + ": " + ec.message());
    ::chmod(dir.c_str(), 0755);
    if (::lstat(dir.c_str(), &st) != 0) {
      return make_error(ErrorCode::kInternal,
                        "cannot inspect " + dir + ": " + std::strerror(errno));
    }
  }
  if (S_ISLNK(st.st_mode)) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + dir + ": it is a symbolic link");
  }
  if (!S_ISDIR(st.st_mode)) {
    return make_error(ErrorCode::kBadRequest, dir + " is not a directory");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return make_error(
        ErrorCode::kPermissionDenied,
        "refusing to use " + dir + ": it belongs to uid " + std::to_string(st.st_uid));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + dir + ": others may write to it (and no sticky bit)");
  }

  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return make_error(ErrorCode::kInternal, "cannot inspect " + path + ": " + std::strerror(errno));
  }
  if (S_ISLNK(st.st_mode)) {
    return make_error(ErrorCode::kPermissionDenied,
                      "refusing to use " + path + ": it is a symbolic link (planted?); remove it");
  }
  if (!S_ISSOCK(st.st_mode)) {
    return make_error(ErrorCode::kBadRequest, path + " exists and is not a socket; remove it");
  }
  auto probe_fd = ipc::connect_to(path);
  if (probe_fd) {
    ucred cred{};
    socklen_t len = sizeof(cred);
    std::string who;
    if (::getsockopt(probe_fd->get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      who = " (pid " + std::to_string(cred.pid) + ")";
    }
    return make_error(ErrorCode::kConflict,
                      "another portbrokerd" + who + " is already serving at " + path);
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return make_error(ErrorCode::kInternal,
                      "cannot remove stale socket " + path + ": " + std::strerror(errno));
  }
  spdlog::info("removed stale socket {} of a daemon that is gone", path);
  return {};
}

Result<void> Server::start() {
  started_at_ms_ = unix_now_ms();
  dual_stack_default_ = !read_bindv6only();
  ipv6_available_ = UniqueFd(::socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0)).valid();
  if (auto r = prepare_socket_path(config_.socket_path); !r) return r;

  auto fd = ipc::make_seqpacket_socket(true);
  if (!fd) return fd.error();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, config_.socket_path.data(), config_.socket_path.size());
  if (::bind(fd->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return make_error(ErrorCode::kInternal,
                      "cannot bind " + config_.socket_path + ": " + std::strerror(errno));
  }
  socket_created_ = true;
  // Anyone may connect: what a caller may do is decided by policy on its kernel identity.
  if (::chmod(config_.socket_path.c_str(), 0666) != 0 || ::listen(fd->get(), kListenBacklog) != 0) {
    return make_error(ErrorCode::kInternal,
                      "cannot listen on " + config_.socket_path + ": " + std::strerror(errno));
  }
  listen_fd_ = std::move(fd).value();
  reserve_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));

  uv_poll_init(loop_, &listen_poll_, listen_fd_.get());
  listen_poll_.data = this;
  uv_poll_start(&listen_poll_, UV_READABLE, &Server::on_listen_readable);
  uv_timer_init(loop_, &sweep_timer_);
  sweep_timer_.data = this;
  // Also the retry period of holds that failed.
  uint64_t every = std::clamp<uint64_t>(config_.first_request_timeout_ms / 4, 50, 2000);
  uv_timer_start(&sweep_timer_, &Server::on_sweep, every, every);
  uv_unref(reinterpret_cast<uv_handle_t*>(&sweep_timer_));
  listening_ = true;
  sync_held();
  apply_guard();
  return {};
}

void Server::stop() {
  stopping_ = true;
  for (uint64_t id : registry_.expired(INT64_MAX)) end_lease(id);  // every lingering lease
  std::vector<Session*> all;
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  for (Session* s : all) close_session(*s);
  if (listening_) {
    uv_poll_stop(&listen_poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(&listen_poll_), nullptr);
    uv_timer_stop(&sweep_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(&sweep_timer_), nullptr);
    listening_ = false;
  }
  listen_fd_.reset();
  reserve_fd_.reset();
  held_.clear();
  remove_guard();
  if (socket_created_) {
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
  for (uint64_t id : self->registry_.expired(unix_now_ms())) {
    spdlog::info("lingering lease {} ended: its holder did not come back", id);
    self->end_lease(id);
  }
  if (!self->hold_failures_.empty() || self->any_parked()) (void)self->sync_held({}, true);
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
      // Out of fds: accept with the reserve fd and drop the connection, so the client sees a
      // hang-up instead of the listen queue filling and the loop spinning on readability.
      spdlog::warn("out of file descriptors ({}); dropping a new connection", std::strerror(e));
      reserve_fd_.reset();
      UniqueFd dropped(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      dropped.reset();
      reserve_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      return;
    }
    spdlog::error("accept on control socket failed: {}", std::strerror(e));
    return;
  }
}

void Server::accept_one(UniqueFd conn) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    spdlog::warn("dropping a connection with no peer credentials: {}", std::strerror(errno));
    return;
  }
  int pidfd = -1;
  len = sizeof(pidfd);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    // Older kernels: open the pid, then make sure it is still the peer (not a recycled pid).
    pidfd = static_cast<int>(::syscall(SYS_pidfd_open, cred.pid, 0));
    ucred again{};
    len = sizeof(again);
    if (pidfd >= 0 && (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &again, &len) != 0 ||
                       again.pid != cred.pid)) {
      ::close(pidfd);
      pidfd = -1;
    }
  }
  auto s = std::make_unique<Session>();
  s->server = this;
  s->id = next_session_++;
  s->conn = std::move(conn);
  s->pidfd.reset(pidfd);
  if (pidfd >= 0) ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  s->connected_at = uv_now(loop_);
  s->holder.pid = cred.pid;
  s->holder.uid = cred.uid;
  s->holder.gid = cred.gid;

  const UidLimits lim = limits_for(cred.uid);
  size_t& conns = connections_per_uid_[cred.uid];
  if (conns >= lim.connections) {
    spdlog::warn("pid={} uid={} refused: {} connections open (limit {})", cred.pid, cred.uid, conns,
                 lim.connections);
    kj::FixedArray<capnp::word, 256> scratch;
    std::memset(scratch.begin(), 0, sizeof(capnp::word) * scratch.size());
    Reply reply(scratch);
    reply.error(make_error(ErrorCode::kLimitExceeded, "uid " + std::to_string(cred.uid) +
                                                          " already has " + std::to_string(conns) +
                                                          " connections to portbrokerd (limit " +
                                                          std::to_string(lim.connections) + ")"));
    (void)ipc::send_message(s->conn.get(), reply.message, {}, true);
    if (conns == 0) connections_per_uid_.erase(cred.uid);
    return;
  }
  ++conns;

  std::string proc = "/proc/" + std::to_string(cred.pid);
  s->holder.comm = read_first_line(proc + "/comm");
  s->holder.cgroup = read_cgroup(cred.pid);
  if (s->pidfd && !pidfd_alive(s->pidfd.get())) {
    // The peer exited while we looked it up; what we read may belong to a recycled pid.
    s->holder.comm.clear();
    s->holder.cgroup.clear();
  }
  s->principal.uid = cred.uid;
  s->principal.gid = cred.gid;
  s->principal.cgroup = s->holder.cgroup;
  gid_t groups[256];
  socklen_t glen = sizeof(groups);
  if (::getsockopt(s->conn.get(), SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0) {
    s->principal.groups.assign(groups, groups + glen / sizeof(gid_t));
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
    if (events & UV_WRITABLE) {
      self->flush_pending(*s);
      if (s->closing || s->pending.size() != 0) return;
    }
    if (events & (UV_READABLE | UV_DISCONNECT)) self->read_requests(*s);
  } catch (const std::exception& e) {
    // Only resource exhaustion gets here (requests catch their own errors): this client
    // loses its session, the daemon and everyone else carry on.
    spdlog::error("pid={} uid={} session failed: {}", s->holder.pid, s->holder.uid, e.what());
    self->close_session(*s);
  }
}

void Server::read_requests(Session& s) {
  for (int i = 0; i < kMaxRecordsPerWakeup && !s.closing && (s.pending.size() == 0); ++i) {
    auto st = ipc::recv_record(s.conn.get(), recv_buf_, false, true);
    if (st == ipc::RecvStatus::kWouldBlock) return;
    s.spoke = true;
    if (st == ipc::RecvStatus::kEof || st == ipc::RecvStatus::kError) {
      close_session(s);
      return;
    }
    Reply reply(kj::arrayPtr(scratch_.data(), scratch_.size()));
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
        reply.error(make_error(ErrorCode::kBadRequest, "record of " +
                                                           std::to_string(recv_buf_.bytes) +
                                                           " bytes is not a Cap'n Proto message"));
        break;
      default:
        handle_record(s, reply);
        break;
    }
    if (!send_reply(s, reply)) return;
  }
}

bool Server::send_reply(Session& s, Reply& reply) {
  int err = 0;
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(reply.message);
  if (ipc::send_record(s.conn.get(), flat, reply.fds, true, &err)) return true;
  if (err == EAGAIN || err == EWOULDBLOCK) {
    // The client is not reading. Keep the reply (and our own references to its sockets, so a
    // lease ending meanwhile cannot turn them into someone else's fds) and stop reading
    // until it drains: a slow client only ever slows itself.
    s.pending = std::move(flat);
    for (int fd : reply.fds) {
      s.pending_fds.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
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
  uv_poll_start(&s.poll, UV_READABLE | UV_DISCONNECT, &Server::on_session_event);
}

void Server::handle_record(Session& s, Reply& reply) {
  try {
    capnp::FlatArrayMessageReader reader(recv_buf_.record(), ipc::reader_options());
    auto req = reader.getRoot<wire::Request>();
    if (req.getVersion() != wire::PROTOCOL_VERSION) {
      reply.error(make_error(ErrorCode::kUnsupportedVersion,
                             "protocol version " + std::to_string(req.getVersion()) +
                                 " is not supported; this daemon speaks version " +
                                 std::to_string(wire::PROTOCOL_VERSION)));
      return;
    }
    switch (req.which()) {
      case wire::Request::ACQUIRE:
        do_acquire(s, req.getAcquire(), reply);
        return;
      case wire::Request::RELEASE:
        do_release(s, req.getRelease(), reply);
        return;
      case wire::Request::LIST:
        do_list(reply);
        return;
      case wire::Request::STATUS:
        do_status(reply);
        return;
      case wire::Request::RESERVE:
        do_reserve(s, req.getReserve(), reply);
        return;
      case wire::Request::UNRESERVE: {
        auto name = req.getUnreserve();
        do_unreserve(s, std::string_view(name.cStr(), name.size()), reply);
        return;
      }
      case wire::Request::RESERVATIONS:
        do_reservations(reply);
        return;
      case wire::Request::RELOAD:
        do_reload(s, reply);
        return;
      case wire::Request::WHO:
        do_who(s, req.getWho(), reply);
        return;
      case wire::Request::CHECK:
        do_check(s, reply);
        return;
    }
    reply.error(make_error(ErrorCode::kUnknownRequest,
                           "unknown request kind " + std::to_string(static_cast<int>(req.which())) +
                               " (client newer than daemon?)"));
  } catch (const kj::Exception& e) {
    spdlog::info("pid={} uid={} sent a malformed request: {}", s.holder.pid, s.holder.uid,
                 e.getDescription().cStr());
    reply.root = reply.message.initRoot<wire::Reply>();
    reply.error(make_error(ErrorCode::kBadRequest,
                           std::string("malformed request: ") + e.getDescription().cStr()));
  } catch (const std::exception& e) {
    spdlog::error("pid={} uid={} request failed: {}", s.holder.pid, s.holder.uid, e.what());
    reply.root = reply.message.initRoot<wire::Reply>();
    reply.error(make_error(ErrorCode::kInternal, std::string("internal error: ") + e.what()));
  }
}

void fill_lease(const Registry& reg, const Lease& l, const std::string& comm,
                wire::LeaseInfo::Builder info) {
  const Binding* b = reg.find_binding(l.binding);
  info.setId(l.id);
  info.setName(l.name);
  if (b != nullptr) {
    info.setProtocol(ipc::protocol_to_wire(b->endpoint.protocol));
    info.setAddress(ipc::address_bytes(b->endpoint.address));
    info.setPort(b->endpoint.port);
    info.setMode(ipc::mode_to_wire(b->mode));
  }
  info.setSession(l.session);
  info.setCreatedAt(l.created_ms);
  info.setState(l.lingering() ? "lingering" : "active");
  info.setLinger(l.linger_s);
  info.setLingerUntil(l.lingering_until_ms);
  auto holder = info.initHolder();
  holder.setPid(l.holder.pid);
  holder.setUid(l.holder.uid);
  holder.setGid(l.holder.gid);
  holder.setComm(comm);
  holder.setCgroup(l.holder.cgroup);
}

namespace {

Error prefixed(const Error& e, size_t index, size_t count, const SocketSpec& spec) {
  if (count == 1) return e;
  std::string label = spec.name.empty() ? "" : " (" + spec.name + ")";
  return make_error(e.code, "socket " + std::to_string(index + 1) + " of " + std::to_string(count) +
                                label + ": " + e.message + "; nothing was leased");
}

}  // namespace

std::vector<HeldLease> Server::held_by(uint32_t uid) const {
  std::vector<HeldLease> out;
  for (uint64_t id : registry_.lease_ids_of_uid(uid)) {
    const Lease* l = registry_.find_lease(id);
    const Binding* b = l ? registry_.find_binding(l->binding) : nullptr;
    if (b) out.push_back(HeldLease{b->endpoint.protocol, b->endpoint.address, b->endpoint.port});
  }
  return out;
}

Result<void> Server::authorize(const Session& s, const SocketSpec& spec, bool from_pool,
                               std::string* reservation) const {
  const Principal& who = s.principal;
  // Unrestricted root is never limited, so its (possibly many) leases need not be listed.
  std::vector<HeldLease> held;
  if (!(who.uid == 0 && policy_.daemon.root_unrestricted)) held = held_by(who.uid);
  Request req{spec.protocol, spec.address, spec.port, spec.mode, from_pool};
  Decision d = policy_.check(who, req, held);
  if (!d) return make_error(d.code, d.reason);
  if (reservation) *reservation = d.reservation;
  return {};
}

Result<UniqueFd> Server::allocate_from_pools(const Session& s, SocketSpec& spec, Endpoint& ep) {
  auto pools = policy_.pools_for(s.principal, spec.protocol);
  if (pools.empty()) {
    return make_error(ErrorCode::kPermissionDenied,
                      s.principal.describe() + " may not lease " + protocol_name(spec.protocol) +
                          " ports from any pool (policy " + policy_.source + ")");
  }
  auto sock = make_unbound_socket(spec);
  if (!sock) return sock.error();
  std::string names;
  for (const Pool* pool : pools) {
    names += (names.empty() ? "" : ", ") + pool->name;
    size_t size = 0;
    for (const PortRange& r : pool->ports) size += r.size();
    // Next-fit from where this pool left off: ports just released are reused last.
    size_t& cursor = pool_cursors_[pool->name];
    for (size_t tries = 0; tries < size; ++tries) {
      size_t k = cursor++ % size;
      const PortRange* range = &pool->ports.front();
      for (const PortRange& r : pool->ports) {
        if (k < r.size()) {
          range = &r;
          break;
        }
        k -= r.size();
      }
      ep.port = static_cast<uint16_t>(range->first + k);
      if (registry_.in_use(ep) || !policy_.reservations_at(spec.protocol, ep.port).empty()) {
        continue;
      }
      auto bound = bind_and_listen(sock->get(), spec, ep.port);
      if (bound) {
        spec.port = ep.port;
        return std::move(sock).value();
      }
      if (bound.error().code != ErrorCode::kInUseOutside) return bound.error();
      if (is_bound(sock->get())) {
        sock = make_unbound_socket(spec);  // bind worked but listen did not: start over
        if (!sock) return sock.error();
      }
    }
  }
  return make_error(ErrorCode::kNoFreePort, std::string("no free ") + protocol_name(spec.protocol) +
                                                " port in pool(s) " + names);
}

void Server::do_acquire(Session& s, capnp::List<wire::SocketRequest>::Reader list, Reply& reply) {
  const Holder& h = s.holder;
  if (list.size() == 0 || list.size() > ipc::kMaxSocketsPerRequest) {
    reply.error(make_error(ErrorCode::kBadRequest, "an acquire asks for 1 to " +
                                                       std::to_string(ipc::kMaxSocketsPerRequest) +
                                                       " sockets, not " +
                                                       std::to_string(list.size())));
    return;
  }
  const UidLimits lim = limits_for(h.uid);
  size_t held = registry_.leases_of_uid(h.uid);
  if (held + list.size() > lim.leases) {
    reply.error(make_error(ErrorCode::kLimitExceeded,
                           "uid " + std::to_string(h.uid) + " holds " + std::to_string(held) +
                               " leases; " + std::to_string(list.size()) +
                               " more would pass the limit of " + std::to_string(lim.leases)));
    spdlog::info("pid={} uid={} acquire refused: lease limit", h.pid, h.uid);
    return;
  }

  std::vector<SocketSpec> specs;
  specs.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    auto spec = ipc::spec_from_wire(list[i]);
    if (!spec) {
      reply.error(list.size() == 1
                      ? spec.error()
                      : make_error(spec.error().code, "socket " + std::to_string(i + 1) + ": " +
                                                          spec.error().message));
      return;
    }
    specs.push_back(std::move(spec).value());
  }

  std::vector<uint64_t> granted;
  std::vector<int> fds;
  // Lingering leases taken back by this request, with when they would have ended: on failure
  // they go back to lingering rather than ending.
  std::vector<std::pair<uint64_t, int64_t>> reclaimed;
  auto fail = [&](const Error& e, size_t index) {
    for (auto it = granted.rbegin(); it != granted.rend(); ++it) {
      auto back = std::find_if(reclaimed.begin(), reclaimed.end(),
                               [&](const auto& r) { return r.first == *it; });
      if (back != reclaimed.end()) {
        registry_.set_lingering(back->first, back->second);
      } else {
        end_lease(*it);
      }
    }
    Error named = e;
    if (e.code == ErrorCode::kInUseOutside && specs[index].port != 0) {
      named.message += outside_holders_text(specs[index].protocol, specs[index].port, h.uid);
    }
    Error out = prefixed(named, index, specs.size(), specs[index]);
    spdlog::info("pid={} uid={} acquire {} refused: {}", h.pid, h.uid,
                 format_socket_spec(specs[index]), out.message);
    reply.error(out);
  };
  const int64_t now = unix_now_ms();

  for (size_t i = 0; i < specs.size(); ++i) {
    SocketSpec& spec = specs[i];
    std::string reservation;
    if (auto ok = authorize(s, spec, false, &reservation); !ok) return fail(ok.error(), i);
    Endpoint ep{spec.protocol, spec.address, spec.port, is_dual_stack(spec, !dual_stack_default_)};

    if (spec.port != 0) {
      // A restarted holder takes its lingering lease back: the very socket, with whatever
      // connections queued while it was away.
      if (auto id = registry_.find_reclaimable(ep, spec.mode, h.uid, spec.token)) {
        const Lease& l = *registry_.find_lease(*id);
        reclaimed.emplace_back(*id, l.lingering_until_ms);
        int fd = spec.mode == Mode::kReuseport ? member_sockets_.at(*id).get()
                                               : binding_sockets_.at(l.binding).get();
        registry_.reclaim(*id, s.id, h);
        granted.push_back(*id);
        fds.push_back(fd);
        spdlog::info("pid={} uid={} took back lingering lease {}", h.pid, h.uid, *id);
        continue;
      }
    }

    uint64_t binding = 0;
    UniqueFd fresh;
    if (spec.port == 0) {
      // Pick and bind in one step: nobody can take the port between choice and bind.
      auto sock = allocate_from_pools(s, spec, ep);
      if (!sock) return fail(sock.error(), i);
      fresh = std::move(sock).value();
      binding = registry_.add_binding(ep, spec.mode, spec.options, h.uid);
    } else {
      auto plan = registry_.plan(ep, spec.mode, spec.options, h.uid);
      if (!plan && plan.error().code == ErrorCode::kConflict) {
        refresh_comms(ep);  // name the holder as it runs now
        plan = registry_.plan(ep, spec.mode, spec.options, h.uid);
      }
      if (!plan) return fail(plan.error(), i);
      if (plan->kind == Plan::kCreate || spec.mode == Mode::kReuseport) {
        auto sock =
            plan->kind == Plan::kCreate ? bind_reserved(spec) : make_bound_socket(spec, spec.port);
        if (!sock) return fail(sock.error(), i);
        fresh = std::move(sock).value();
      }
      binding = plan->kind == Plan::kJoin
                    ? plan->binding
                    : registry_.add_binding(ep, spec.mode, spec.options, h.uid);
    }
    uint64_t lease = registry_.add_lease(binding, spec.name, s.id, h, now, spec.linger,
                                         spec.linger > 0 ? new_token() : std::string());
    granted.push_back(lease);
    if (spec.mode == Mode::kReuseport) {
      fds.push_back(fresh.get());
      member_sockets_.emplace(lease, std::move(fresh));
    } else if (fresh) {
      fds.push_back(fresh.get());
      binding_sockets_.emplace(binding, std::move(fresh));
    } else {
      fds.push_back(binding_sockets_.at(binding).get());
    }
  }

  auto out = reply.root.initAcquired(static_cast<unsigned>(granted.size()));
  for (size_t i = 0; i < granted.size(); ++i) {
    const Lease& l = *registry_.find_lease(granted[i]);
    auto g = out[static_cast<unsigned>(i)];
    g.setFdIndex(static_cast<uint32_t>(i));
    auto info = g.initLease();
    fill_lease(registry_, l, l.holder.comm, info);
    info.setToken(l.token);  // to the holder only: it lets another uid take the lease back
    if (spdlog::should_log(spdlog::level::info)) {  // spares the formatting at warn level
      const Binding& b = *registry_.find_binding(l.binding);
      spdlog::info("pid={} uid={} acquired lease {}: {} {}", h.pid, h.uid, l.id,
                   format_endpoint(b.endpoint.protocol, b.endpoint.address, b.endpoint.port),
                   mode_name(b.mode));
    }
  }
  reply.fds = std::move(fds);
}

void Server::do_release(Session& s, uint64_t lease_id, Reply& reply) {
  const Lease* l = registry_.find_lease(lease_id);
  if (l == nullptr) {
    reply.error(make_error(ErrorCode::kNotFound, "no lease " + std::to_string(lease_id)));
    return;
  }
  // Your own session, your own uid, or root (revoke).
  if (l->session != s.id && s.holder.uid != 0 && s.holder.uid != l->holder.uid) {
    reply.error(make_error(ErrorCode::kPermissionDenied,
                           "lease " + std::to_string(lease_id) + " is held by uid " +
                               std::to_string(l->holder.uid) +
                               "; only that uid or root may release it"));
    return;
  }
  bool revoke = l->session != s.id;
  spdlog::info("pid={} uid={} {} lease {}", s.holder.pid, s.holder.uid,
               revoke ? "revoked" : "released", lease_id);
  end_lease(lease_id);
  reply.root.setReleased();
}

std::string Server::current_comm(const Lease& l) const {
  auto s = sessions_.find(l.session);
  if (s == sessions_.end() || !pidfd_alive(s->second->pidfd.get())) return l.holder.comm;
  std::string comm = read_first_line("/proc/" + std::to_string(l.holder.pid) + "/comm");
  // Re-checked after reading: a pid recycled in between must not lend us its name.
  return !comm.empty() && pidfd_alive(s->second->pidfd.get()) ? comm : l.holder.comm;
}

void Server::refresh_comms(const Endpoint& ep) {
  for (uint64_t bid : registry_.overlapping(ep)) {
    const Binding* b = registry_.find_binding(bid);
    if (b == nullptr) continue;
    for (uint64_t id : b->leases) {
      if (const Lease* l = registry_.find_lease(id)) registry_.set_comm(id, current_comm(*l));
    }
  }
}

void Server::do_list(Reply& reply) {
  auto leases = registry_.all_leases();
  auto out = reply.root.initLeases(static_cast<unsigned>(leases.size()));
  // A holder may have exec'd since it connected (`portbroker exec` does): show what runs now.
  std::unordered_map<uint64_t, std::string> comm_now;
  for (size_t i = 0; i < leases.size(); ++i) {
    const Lease& l = *leases[i];
    auto [it, fresh] = comm_now.try_emplace(l.session);
    if (fresh) it->second = current_comm(l);
    fill_lease(registry_, l, it->second, out[static_cast<unsigned>(i)]);
  }
}

void Server::do_status(Reply& reply) {
  auto st = reply.root.initStatus();
  st.setVersion(PORTBROKER_VERSION);
  st.setPid(::getpid());
  st.setStartedAt(started_at_ms_);
  st.setSessions(static_cast<uint32_t>(sessions_.size()));
  st.setLeases(static_cast<uint32_t>(registry_.lease_count()));
  if (!policy_.pools.empty() && !policy_.pools.front().ports.empty()) {
    st.setPoolLow(policy_.pools.front().ports.front().first);
    st.setPoolHigh(policy_.pools.front().ports.back().last);
  }
  st.setOpenFds(static_cast<uint32_t>(count_open_fds()));
  st.setSocketPath(config_.socket_path);
}

void Server::end_lease(uint64_t lease_id) {
  auto removed = registry_.remove_lease(lease_id);
  if (!removed) return;
  UniqueFd sock;
  if (removed->mode == Mode::kReuseport) {
    if (auto it = member_sockets_.find(lease_id); it != member_sockets_.end()) {
      sock = std::move(it->second);
      member_sockets_.erase(it);
    }
  } else if (removed->binding_empty) {
    if (auto it = binding_sockets_.find(removed->lease.binding); it != binding_sockets_.end()) {
      sock = std::move(it->second);
      binding_sockets_.erase(it);
    }
  }
  // A copy may live on in a child of the holder: shut the listener down so the port is
  // really free (SO_REUSEADDR binds succeed) once the lease has ended.
  if (sock) {
    ::shutdown(sock.get(), SHUT_RDWR);
    rehold_if_reserved(removed->endpoint, std::move(sock));
  }
}

void Server::close_session(Session& s) {
  if (s.closing) return;
  s.closing = true;
  auto leases = registry_.leases_of_session(s.id);
  size_t lingering = 0;
  const int64_t now = unix_now_ms();
  for (auto it = leases.rbegin(); it != leases.rend(); ++it) {
    const Lease* l = registry_.find_lease(*it);
    if (l != nullptr && l->linger_s > 0 && !stopping_) {
      registry_.set_lingering(*it, now + int64_t{l->linger_s} * 1000);
      ++lingering;
    } else {
      end_lease(*it);
    }
  }
  if (!leases.empty()) {
    spdlog::info("pid={} uid={} session ended; released {} lease(s), {} lingering", s.holder.pid,
                 s.holder.uid, leases.size() - lingering, lingering);
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
