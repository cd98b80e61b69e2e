#include "portbroker/client.hpp"

#include <kj/exception.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <span>
#include <utility>

#include "ipc/codec.h"
#include "ipc/framing.h"
#include "ipc/paths.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/fd.hpp"

namespace portbroker {

namespace {

// How long a request waits for the daemon's reply before giving up on the connection:
// $PORTBROKER_TIMEOUT seconds (1 to 3600), else 30.
time_t reply_timeout_seconds() {
  const char* env = std::getenv("PORTBROKER_TIMEOUT");
  long v = 0;
  if (env != nullptr) {
    auto [end, ec] = std::from_chars(env, env + std::strlen(env), v);
    if (ec == std::errc() && *end == '\0' && v >= 1 && v <= 3600) return v;
  }
  return 30;
}

Error protocol_error(std::string message) {
  return make_error(ErrorCode::kProtocolError, "bad reply from portbrokerd: " + std::move(message));
}

// Nothing thrown by Cap'n Proto (a hostile or corrupt reply) or by the allocator may leave the
// library: callers, including C ones, were promised errors as values.
template <typename T, typename Fn>
Result<T> no_throw(Fn&& fn) noexcept {
  try {
    return fn();
  } catch (const kj::Exception& e) {
    return protocol_error(e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "out of memory");
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, e.what());
  } catch (...) {
    return make_error(ErrorCode::kInternal, "unexpected exception in the portbroker client");
  }
}

// A reply the codec refuses is the daemon's fault, not the caller's: say so in the code.
template <typename T>
Result<T> from_reply(Result<T> decoded) {
  if (!decoded) return protocol_error(decoded.error().message);
  return decoded;
}

Error unexpected_reply(wire::Reply::Reader reply, const char* wanted) {
  return protocol_error(std::string("expected ") + wanted + ", got reply kind " +
                        std::to_string(static_cast<int>(reply.which())));
}

}  // namespace

// One session with the daemon: its socket, a receive buffer reused for every reply, and a
// zeroed scratch segment so that building a request does not allocate.
class Connection {
 public:
  explicit Connection(UniqueFd fd) : fd_(std::move(fd)), scratch_(kScratchWords) {}

  bool alive() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  int detach() {
    forget_reply();
    drain();  // whoever takes the fd over must not read our replies
    return fd_.release();
  }

  // The fds that rode on the last reply; whatever is left in here is closed by the next call.
  std::vector<UniqueFd>& fds() { return buf_.fds; }
  void forget_reply() {
    reader_.reset();
    buf_.fds.clear();
  }

  // Sends the request `fill` writes and waits for its reply, valid until the next call.
  // May throw kj::Exception while decoding; callers run under no_throw.
  template <typename Fill>
  Result<wire::Reply::Reader> call(Fill&& fill) {
    if (auto sent = send(fill); !sent) return sent.error();
    return receive();
  }

  // Sends a release and returns at once; its reply is read (and dropped) before the next
  // request's. The daemon answers a session's requests in order.
  Result<void> release_nowait(uint64_t lease_id) {
    auto sent = send([&](wire::Request::Builder r) { r.setRelease(lease_id); });
    if (sent) ++unread_;
    return sent;
  }

  Result<void> release(uint64_t lease_id) {
    auto reply = call([&](wire::Request::Builder r) { r.setRelease(lease_id); });
    if (!reply) return reply.error();
    Result<void> result;
    if (reply->isError()) {
      result = ipc::error_from_wire(*reply);
    } else if (!reply->isReleased()) {
      result = unexpected_reply(*reply, "released");
    }
    forget_reply();
    return result;
  }

 private:
  static constexpr size_t kScratchWords = 512;

  template <typename Fill>
  Result<void> send(Fill&& fill) {
    if (!fd_) {
      return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
    }
    forget_reply();
    drain();
    if (!fd_) return make_error(ErrorCode::kConnectionFailed, "portbrokerd closed the connection");
    capnp::MallocMessageBuilder message(kj::arrayPtr(scratch_.data(), scratch_.size()));
    auto request = message.initRoot<wire::Request>();
    request.setVersion(wire::PROTOCOL_VERSION);
    fill(request);
    auto sent = ipc::send_message(fd_.get(), message);
    if (!sent) {
      // The daemon is gone (EPIPE, ECONNRESET): the session and its leases went with it.
      fd_.reset();
      return sent.error();
    }
    return {};
  }

  void drain() {
    for (; unread_ > 0 && fd_; --unread_) {
      (void)receive();
      forget_reply();
    }
    unread_ = 0;
  }

  Result<wire::Reply::Reader> receive() {
    switch (ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/true, /*dont_wait=*/false)) {
      case ipc::RecvStatus::kRecord:
        break;
      case ipc::RecvStatus::kEof:
        fd_.reset();
        return make_error(ErrorCode::kConnectionFailed, "portbrokerd closed the connection");
      case ipc::RecvStatus::kError: {
        int e = buf_.error;
        fd_.reset();
        return make_error(ErrorCode::kConnectionFailed,
                          std::string("cannot read from portbrokerd: ") + std::strerror(e));
      }
      case ipc::RecvStatus::kTruncated:
        buf_.fds.clear();
        return protocol_error("record or its fds exceed the limits");
      case ipc::RecvStatus::kMisaligned:
        buf_.fds.clear();
        return protocol_error("record is not a whole number of words");
      case ipc::RecvStatus::kWouldBlock:
        // SO_RCVTIMEO ran out. A late reply would answer the next request: hang up instead.
        fd_.reset();
        return make_error(ErrorCode::kConnectionFailed,
                          "portbrokerd did not answer in time ($PORTBROKER_TIMEOUT, default 30 "
                          "s); connection closed");
      case ipc::RecvStatus::kBadFds:
        buf_.fds.clear();
        return protocol_error("unexpected receive status");
    }
    reader_.emplace(buf_.record(), ipc::reader_options());
    return reader_->getRoot<wire::Reply>();
  }

  UniqueFd fd_;
  int unread_ = 0;  // replies to release_nowait not read yet
  ipc::RecvBuffer buf_;
  std::vector<capnp::word> scratch_;
  std::optional<capnp::FlatArrayMessageReader> reader_;
};

namespace {

// Drops the last reply and closes any fd it carried that nobody adopted, on every path out.
class ReplyScope {
 public:
  explicit ReplyScope(Connection& conn) : conn_(conn) {}
  ReplyScope(const ReplyScope&) = delete;
  ReplyScope& operator=(const ReplyScope&) = delete;
  ~ReplyScope() { conn_.forget_reply(); }

 private:
  Connection& conn_;
};

// One request and its reply: `fill` writes the request, `read` turns a non-error reply into
// the result (refusing a reply of the wrong kind).
template <typename T, typename Fill, typename Read>
Result<T> round_trip(Connection* conn, Fill&& fill, Read&& read) {
  if (!conn) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  return no_throw<T>([&]() -> Result<T> {
    auto reply = conn->call(fill);
    if (!reply) return reply.error();
    ReplyScope scope(*conn);
    if (reply->isError()) return ipc::error_from_wire(*reply);
    return read(*reply);
  });
}

// For requests answered by `done`.
template <typename Fill>
Result<void> round_trip_done(Connection* conn, Fill&& fill) {
  auto done = round_trip<bool>(conn, fill, [](wire::Reply::Reader reply) -> Result<bool> {
    if (!reply.isDone()) return unexpected_reply(reply, "done");
    return true;
  });
  if (!done) return done.error();
  return {};
}

// The parts of a Lease that acquire_into fills in. Only Client may construct one (it is
// Lease's friend), so Client's members pass a lambda that exposes them.
struct LeaseParts {
  std::shared_ptr<Connection>& conn;
  int& fd;
  LeaseInfo& info;
};

// Acquires `specs` all or nothing into `out[0..specs.size())`. Every fd that arrives ends up
// owned by exactly one Lease or closed, whatever the reply looks like.
template <typename Parts>
Result<void> acquire_into(const std::shared_ptr<Connection>& conn,
                          std::span<const SocketSpec> specs, std::span<Lease> out, Parts parts) {
  if (!conn) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  if (specs.empty()) return make_error(ErrorCode::kBadRequest, "no sockets requested");
  if (specs.size() > ipc::kMaxSocketsPerRequest) {
    return make_error(ErrorCode::kBadRequest,
                      "at most " + std::to_string(ipc::kMaxSocketsPerRequest) +
                          " sockets per request, not " + std::to_string(specs.size()));
  }
  auto reply = conn->call([&](wire::Request::Builder r) { ipc::acquire_to_wire(specs, r); });
  if (!reply) return reply.error();
  Error bad;
  std::vector<uint64_t> granted_ids;
  {
    ReplyScope scope(*conn);
    if (reply->isError()) return ipc::error_from_wire(*reply);
    if (!reply->isAcquired()) return unexpected_reply(*reply, "acquired");
    auto& fds = conn->fds();
    auto grants = from_reply(ipc::grants_from_wire(reply->getAcquired(), specs.size(), fds.size()));
    if (grants) {
      for (size_t i = 0; i < grants->size(); ++i) {
        LeaseParts p = parts(out[i]);
        p.info = std::move((*grants)[i].lease);
        p.conn = conn;
        p.fd = fds[(*grants)[i].fd_index].release();
      }
      return {};
    }
    bad = grants.error();
    for (auto g : reply->getAcquired()) granted_ids.push_back(g.getLease().getId());
  }
  // The daemon may hold leases we cannot use (their fds are closed by now): give them back.
  for (uint64_t id : granted_ids) (void)conn->release(id);
  return bad;
}

}  // namespace

// --- reservations -------------------------------------------------------------------------

Result<ReservationInfo> parse_reservation_target(std::string_view target) {
  auto parsed = ReservationTarget::parse(target);
  if (!parsed) return parsed.error();
  ReservationInfo r;
  r.target = std::string(target);
  r.tcp = parsed->tcp;
  r.udp = parsed->udp;
  r.address = parsed->address;
  r.port_first = parsed->ports.first;
  r.port_last = parsed->ports.last;
  return r;
}

// --- Lease --------------------------------------------------------------------------------

Lease::Lease(Lease&& o) noexcept
    : conn_(std::move(o.conn_)), fd_(std::exchange(o.fd_, -1)), info_(std::move(o.info_)) {}

Lease& Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    reset();
    conn_ = std::move(o.conn_);
    fd_ = std::exchange(o.fd_, -1);
    info_ = std::move(o.info_);
  }
  return *this;
}

Lease::~Lease() { reset(); }

int Lease::release_fd() {
  conn_.reset();  // the lease now lives as long as the session, not this object
  return std::exchange(fd_, -1);
}

void Lease::reset() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  auto conn = std::move(conn_);
  if (conn && conn->alive()) {
    // Best effort: if this fails the daemon still releases the lease with the session.
    (void)no_throw<void>([&] { return conn->release(info_.id); });
  }
}

Result<void> Lease::release() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  auto conn = std::move(conn_);
  if (!conn) return make_error(ErrorCode::kNotFound, "lease is not held by this object");
  return no_throw<void>([&] { return conn->release(info_.id); });
}

// --- Client -------------------------------------------------------------------------------

Result<Client> Client::connect(std::string socket_path) {
  return no_throw<Client>([&]() -> Result<Client> {
    if (socket_path.empty()) socket_path = ipc::client_socket_path();
    auto fd = ipc::connect_to(socket_path);
    if (!fd) return fd.error();
    // A daemon that hangs must not hang every client with it.
    timeval tv{reply_timeout_seconds(), 0};
    ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return Client(std::make_shared<Connection>(std::move(fd).value()));
  });
}

Result<Lease> Client::acquire(std::string_view spec) {
  auto parsed = no_throw<SocketSpec>([&] { return parse_socket_spec(spec); });
  if (!parsed) return parsed.error();
  return acquire(*parsed);
}

Result<Lease> Client::acquire(const SocketSpec& spec) {
  return no_throw<Lease>([&]() -> Result<Lease> {
    auto lease_parts = [](Lease& l) { return LeaseParts{l.conn_, l.fd_, l.info_}; };
    Lease lease;
    auto ok = acquire_into(conn_, std::span(&spec, 1), std::span(&lease, 1), lease_parts);
    if (!ok) return ok.error();
    return lease;
  });
}

Result<std::vector<Lease>> Client::acquire_all(const std::vector<SocketSpec>& specs) {
  return no_throw<std::vector<Lease>>([&]() -> Result<std::vector<Lease>> {
    auto lease_parts = [](Lease& l) { return LeaseParts{l.conn_, l.fd_, l.info_}; };
    std::vector<Lease> leases(specs.size());
    auto ok = acquire_into(conn_, specs, leases, lease_parts);
    if (!ok) return ok.error();
    return leases;
  });
}

Result<void> Client::release(uint64_t lease_id) {
  if (!conn_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  return no_throw<void>([&] { return conn_->release(lease_id); });
}

Result<void> Client::release_nowait(uint64_t lease_id) {
  if (!conn_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  return no_throw<void>([&] { return conn_->release_nowait(lease_id); });
}

Result<std::vector<LeaseInfo>> Client::list() {
  return round_trip<std::vector<LeaseInfo>>(
      conn_.get(), [](wire::Request::Builder r) { r.setList(); },
      [](wire::Reply::Reader reply) -> Result<std::vector<LeaseInfo>> {
        if (!reply.isLeases()) return unexpected_reply(reply, "leases");
        return from_reply(ipc::leases_from_wire(reply.getLeases()));
      });
}

Result<DaemonStatus> Client::status() {
  return round_trip<DaemonStatus>(
      conn_.get(), [](wire::Request::Builder r) { r.setStatus(); },
      [](wire::Reply::Reader reply) -> Result<DaemonStatus> {
        if (!reply.isStatus()) return unexpected_reply(reply, "status");
        return ipc::status_from_wire(reply.getStatus());
      });
}

Result<void> Client::reserve(std::string_view name, std::string_view target,
                             const std::vector<std::string>& users,
                             const std::vector<std::string>& groups, bool hold) {
  auto parsed = no_throw<ReservationInfo>([&] { return parse_reservation_target(target); });
  if (!parsed) return parsed.error();
  ReservationInfo& r = *parsed;
  r.name = std::string(name);
  r.users = users;
  r.groups = groups;
  r.hold = hold;
  return round_trip_done(conn_.get(), [&](wire::Request::Builder request) {
    ipc::reservation_to_wire(r, request.initReserve());
  });
}

Result<void> Client::unreserve(std::string_view name) {
  return round_trip_done(conn_.get(),
                         [&](wire::Request::Builder r) { r.setUnreserve(std::string(name)); });
}

Result<std::vector<ReservationInfo>> Client::reservations() {
  return round_trip<std::vector<ReservationInfo>>(
      conn_.get(), [](wire::Request::Builder r) { r.setReservations(); },
      [](wire::Reply::Reader reply) -> Result<std::vector<ReservationInfo>> {
        if (!reply.isReservations()) return unexpected_reply(reply, "reservations");
        return from_reply(ipc::reservations_from_wire(reply.getReservations()));
      });
}

Result<void> Client::shutdown(bool revoke_all) {
  return round_trip_done(
      conn_.get(), [&](wire::Request::Builder r) { r.initShutdown().setRevokeAll(revoke_all); });
}

Result<void> Client::upgrade() {
  return round_trip_done(conn_.get(), [](wire::Request::Builder r) { r.setUpgrade(); });
}

Result<ReloadReport> Client::reload() {
  return round_trip<ReloadReport>(
      conn_.get(), [](wire::Request::Builder r) { r.setReload(); },
      [](wire::Reply::Reader reply) -> Result<ReloadReport> {
        if (!reply.isReloaded()) return unexpected_reply(reply, "reloaded");
        return ipc::reload_from_wire(reply.getReloaded());
      });
}

Result<WhoReport> Client::who(Protocol protocol, uint16_t port) {
  return round_trip<WhoReport>(
      conn_.get(),
      [&](wire::Request::Builder r) {
        ipc::who_query_to_wire(ipc::WhoQuery{protocol, port}, r.initWho());
      },
      [](wire::Reply::Reader reply) -> Result<WhoReport> {
        if (!reply.isWho()) return unexpected_reply(reply, "who");
        return from_reply(ipc::who_from_wire(reply.getWho()));
      });
}

Result<std::vector<Problem>> Client::check() {
  return round_trip<std::vector<Problem>>(
      conn_.get(), [](wire::Request::Builder r) { r.setCheck(); },
      [](wire::Reply::Reader reply) -> Result<std::vector<Problem>> {
        if (!reply.isProblems()) return unexpected_reply(reply, "problems");
        return ipc::problems_from_wire(reply.getProblems());
      });
}

int Client::session_fd() const { return conn_ ? conn_->fd() : -1; }

int Client::detach_session_fd() {
  if (!conn_) return -1;
  int fd = conn_->detach();
  conn_.reset();
  return fd;
}

}  // namespace portbroker
