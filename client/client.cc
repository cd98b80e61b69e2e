#include "portbroker/client.hpp"

#include <kj/exception.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
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
  explicit Connection(UniqueFd fd, std::string path = {})
      : fd_(std::move(fd)), path_(std::move(path)), scratch_(kScratchWords) {}

  const std::string& path() const { return path_; }

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

  // Sends the request `fill` writes and waits for its reply (the first part of one in parts:
  // see receive), valid until the next call. May throw kj::Exception while decoding; callers
  // run under no_throw.
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
    {
      capnp::MallocMessageBuilder message(kj::arrayPtr(scratch_.data(), scratch_.size()));
      auto request = message.initRoot<wire::Request>();
      request.setVersion(wire::PROTOCOL_VERSION);
      fill(request);
      auto sent = ipc::send_message(fd_.get(), message);
      if (!sent) {
        // The daemon is gone (EPIPE, ECONNRESET): the session and its leases went with it. A
        // daemon that refused the connection (a limit) left one record saying why.
        if (auto refusal = read_refusal()) return *refusal;
        fd_.reset();
        return sent.error();
      }
    }
    return {};
  }

  // Reads the replies of release_nowait calls, before anything else is read or sent.
  void drain() {
    for (; unread_ > 0 && fd_; --unread_) {
      (void)receive();
      forget_reply();
    }
    unread_ = 0;
  }

 public:
  // The next record of the reply: the first, or the next part of a reply in parts.
  Result<wire::Reply::Reader> receive() {
    if (!fd_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
    forget_reply();
    auto st = ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/true, /*dont_wait=*/false);
    if (st == ipc::RecvStatus::kError && buf_.error == ECONNRESET) {
      // The daemon closed the connection with our request unread; a refusal it sent first is
      // still queued behind the reset.
      if (auto refusal = read_refusal()) return *refusal;
      return make_error(ErrorCode::kConnectionFailed,
                        std::string("cannot read from portbrokerd: ") + std::strerror(ECONNRESET));
    }
    switch (st) {
      case ipc::RecvStatus::kRecord:
        break;
      case ipc::RecvStatus::kEof:
      case ipc::RecvStatus::kError:
        return hang_up(st);
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
    return read_reply();
  }

  // A record that comes without a request (an event), waiting up to `timeout_ms` (negative:
  // for ever); an empty optional when none came in time.
  Result<std::optional<wire::Reply::Reader>> receive(int timeout_ms) {
    if (!fd_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
    forget_reply();
    pollfd p{fd_.get(), POLLIN, 0};
    int n = 0;
    do {
      n = ::poll(&p, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n == 0) return std::optional<wire::Reply::Reader>();
    const auto st = ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/false, /*dont_wait=*/true);
    switch (st) {
      case ipc::RecvStatus::kRecord:
        return std::optional<wire::Reply::Reader>(read_reply());
      case ipc::RecvStatus::kWouldBlock:
        return std::optional<wire::Reply::Reader>();
      case ipc::RecvStatus::kEof:
      case ipc::RecvStatus::kError:
        return hang_up(st);
      default:
        fd_.reset();
        return protocol_error("malformed event record");
    }
  }

  // A reply in parts was abandoned midway: the rest would answer the next request.
  void abandon() {
    forget_reply();
    fd_.reset();
  }

 private:
  // The connection is over (EOF, or a read failed): closes it and says why.
  Error hang_up(ipc::RecvStatus st) {
    const int e = buf_.error;
    fd_.reset();
    if (st == ipc::RecvStatus::kEof) {
      return make_error(ErrorCode::kConnectionFailed, "portbrokerd closed the connection");
    }
    return make_error(ErrorCode::kConnectionFailed,
                      std::string("cannot read from portbrokerd: ") + std::strerror(e));
  }

  wire::Reply::Reader read_reply() {
    reader_.emplace(buf_.record(), ipc::reader_options());
    return reader_->getRoot<wire::Reply>();
  }

  // The error record a daemon sends before closing a connection it refuses (over a limit,
  // out of fds), read without waiting; the connection is closed either way.
  std::optional<Error> read_refusal() {
    std::optional<Error> refusal;
    // At most two reads: the first may only report the reset that hides the record.
    for (int i = 0; i < 2 && !refusal; ++i) {
      auto st = ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/true, /*dont_wait=*/true);
      if (st == ipc::RecvStatus::kRecord) {
        try {
          capnp::FlatArrayMessageReader reader(buf_.record(), ipc::reader_options());
          auto reply = reader.getRoot<wire::Reply>();
          if (reply.isError()) refusal = ipc::error_from_wire(reply);
        } catch (const kj::Exception&) {
        }
        break;
      }
      if (st != ipc::RecvStatus::kError) break;
    }
    buf_.fds.clear();
    fd_.reset();
    return refusal;
  }

  UniqueFd fd_;
  int unread_ = 0;  // replies to release_nowait not read yet
  std::string path_;
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

// The most parts a reply may come in: 65,536 leases take a few hundred.
constexpr size_t kMaxReplyParts = 1 << 16;

// Hangs up unless disarmed: a reply in parts left unread midway (a bad part, an exception)
// would otherwise answer the next request.
class PartsGuard {
 public:
  explicit PartsGuard(Connection& conn) : conn_(conn) {}
  PartsGuard(const PartsGuard&) = delete;
  PartsGuard& operator=(const PartsGuard&) = delete;
  ~PartsGuard() {
    if (armed_) conn_.abandon();
  }
  void arm(bool on) { armed_ = on; }

 private:
  Connection& conn_;
  bool armed_ = false;
};

// One request and its reply: `fill` writes the request, `read(reply, result, first)` adds a
// non-error reply (or one part of it) to the result, refusing a reply of the wrong kind.
// `in_parts`: whether this kind of reply may come in parts (lists); any other refuses `more`.
template <typename T, typename Fill, typename Read>
Result<T> round_trip(Connection* conn, Fill&& fill, Read&& read, bool in_parts = false) {
  if (!conn) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  return no_throw<T>([&]() -> Result<T> {
    auto reply = conn->call(fill);
    T result{};
    PartsGuard guard(*conn);
    for (size_t part = 0;; ++part) {
      if (!reply) return reply.error();
      {
        ReplyScope scope(*conn);
        const bool more = reply->getMore();
        guard.arm(more);
        if (reply->isError()) return ipc::error_from_wire(*reply);
        if (more && (!in_parts || part + 1 >= kMaxReplyParts)) {
          return protocol_error("a reply in more parts than expected");
        }
        auto added = read(*reply, result, part == 0);
        if (!added) return added.error();
        if (!more) return result;
      }
      reply = conn->receive();
    }
  });
}

template <typename T>
void append(std::vector<T>& to, std::vector<T>&& more) {
  if (to.empty()) {
    to = std::move(more);
  } else {
    to.insert(to.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
  }
}

// For requests answered by `done`.
template <typename Fill>
Result<void> round_trip_done(Connection* conn, Fill&& fill) {
  auto done =
      round_trip<bool>(conn, fill, [](wire::Reply::Reader reply, bool& out, bool) -> Result<void> {
        if (!reply.isDone()) return unexpected_reply(reply, "done");
        out = true;
        return {};
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
    return Client(std::make_shared<Connection>(std::move(fd).value(), socket_path));
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
      [](wire::Reply::Reader reply, std::vector<LeaseInfo>& out, bool) -> Result<void> {
        if (!reply.isLeases()) return unexpected_reply(reply, "leases");
        auto part = from_reply(ipc::leases_from_wire(reply.getLeases()));
        if (!part) return part.error();
        append(out, std::move(part).value());
        return {};
      },
      true);
}

Result<DaemonStatus> Client::status() {
  return round_trip<DaemonStatus>(
      conn_.get(), [](wire::Request::Builder r) { r.setStatus(); },
      [](wire::Reply::Reader reply, DaemonStatus& out, bool) -> Result<void> {
        if (!reply.isStatus()) return unexpected_reply(reply, "status");
        out = ipc::status_from_wire(reply.getStatus());
        return {};
      });
}

Result<void> Client::reserve(std::string_view name, std::string_view target,
                             const std::vector<std::string>& users,
                             const std::vector<std::string>& groups, bool hold, bool no_listen) {
  auto parsed = no_throw<ReservationInfo>([&] { return parse_reservation_target(target); });
  if (!parsed) return parsed.error();
  ReservationInfo& r = *parsed;
  r.name = std::string(name);
  r.users = users;
  r.groups = groups;
  r.hold = hold;
  r.no_listen = no_listen;
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
      [](wire::Reply::Reader reply, std::vector<ReservationInfo>& out, bool) -> Result<void> {
        if (!reply.isReservations()) return unexpected_reply(reply, "reservations");
        auto part = from_reply(ipc::reservations_from_wire(reply.getReservations()));
        if (!part) return part.error();
        append(out, std::move(part).value());
        return {};
      },
      true);
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
      [](wire::Reply::Reader reply, ReloadReport& out, bool first) -> Result<void> {
        if (!reply.isReloaded()) return unexpected_reply(reply, "reloaded");
        ReloadReport part = ipc::reload_from_wire(reply.getReloaded());
        if (first) out.source = std::move(part.source);
        append(out.refused_leases, std::move(part.refused_leases));
        return {};
      },
      true);
}

Result<WhoReport> Client::who(Protocol protocol, uint16_t port) {
  return round_trip<WhoReport>(
      conn_.get(),
      [&](wire::Request::Builder r) {
        ipc::who_query_to_wire(ipc::WhoQuery{protocol, port}, r.initWho());
      },
      [](wire::Reply::Reader reply, WhoReport& out, bool first) -> Result<void> {
        if (!reply.isWho()) return unexpected_reply(reply, "who");
        auto part = from_reply(ipc::who_from_wire(reply.getWho()));
        if (!part) return part.error();
        if (first) {
          out = std::move(part).value();
          return {};
        }
        append(out.leases, std::move(part->leases));
        append(out.outside, std::move(part->outside));
        append(out.reservations, std::move(part->reservations));
        append(out.pools, std::move(part->pools));
        return {};
      },
      true);
}

Result<std::vector<Problem>> Client::check() {
  return round_trip<std::vector<Problem>>(
      conn_.get(), [](wire::Request::Builder r) { r.setCheck(); },
      [](wire::Reply::Reader reply, std::vector<Problem>& out, bool) -> Result<void> {
        if (!reply.isProblems()) return unexpected_reply(reply, "problems");
        append(out, ipc::problems_from_wire(reply.getProblems()));
        return {};
      },
      true);
}

Result<std::string> Client::metrics() {
  return round_trip<std::string>(
      conn_.get(), [](wire::Request::Builder r) { r.setMetrics(); },
      [](wire::Reply::Reader reply, std::string& out, bool) -> Result<void> {
        if (!reply.isMetrics()) return unexpected_reply(reply, "metrics");
        out = ipc::text_from_wire(reply.getMetrics());
        return {};
      });
}

Result<EventStream> Client::events(std::optional<uint64_t> since) {
  if (!conn_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  // Its own connection: the stream takes it over for good.
  auto other = connect(conn_->path());
  if (!other) return other.error();
  std::shared_ptr<Connection> conn = std::move(other->conn_);
  auto subscribed = round_trip<uint64_t>(
      conn.get(),
      [&](wire::Request::Builder r) {
        ipc::events_query_to_wire(ipc::EventsQuery{since}, r.initEvents());
      },
      [](wire::Reply::Reader reply, uint64_t& out, bool) -> Result<void> {
        if (!reply.isSubscribed()) return unexpected_reply(reply, "subscribed");
        out = reply.getSubscribed();
        return {};
      });
  if (!subscribed) return subscribed.error();
  return EventStream(std::move(conn), *subscribed);
}

// --- EventStream --------------------------------------------------------------------------

EventStream::EventStream(EventStream&&) noexcept = default;
EventStream& EventStream::operator=(EventStream&&) noexcept = default;
EventStream::~EventStream() = default;

int EventStream::fd() const { return conn_ ? conn_->fd() : -1; }

Result<std::optional<Event>> EventStream::next(int timeout_ms) {
  if (!conn_) return make_error(ErrorCode::kConnectionFailed, "not connected to portbrokerd");
  return no_throw<std::optional<Event>>([&]() -> Result<std::optional<Event>> {
    auto record = conn_->receive(timeout_ms);
    if (!record) return record.error();
    if (!*record) return std::optional<Event>();
    ReplyScope scope(*conn_);
    wire::Reply::Reader reply = **record;
    if (reply.isError()) return ipc::error_from_wire(reply);
    if (!reply.isEvent()) return unexpected_reply(reply, "event");
    auto event = from_reply(ipc::event_from_wire(reply.getEvent()));
    if (!event) return event.error();
    last_seq_ = std::max(last_seq_, event->seq);
    return std::optional<Event>(std::move(event).value());
  });
}

EventStream::iterator& EventStream::iterator::operator++() {
  if (stream_ == nullptr) return *this;
  auto next = stream_->next();
  if (next && *next) {
    current_ = std::move(**next);
  } else {
    if (!next) stream_->error_ = next.error();
    stream_ = nullptr;
  }
  return *this;
}

int Client::session_fd() const { return conn_ ? conn_->fd() : -1; }

int Client::detach_session_fd() {
  if (!conn_) return -1;
  int fd = conn_->detach();
  conn_.reset();
  return fd;
}

}  // namespace portbroker
