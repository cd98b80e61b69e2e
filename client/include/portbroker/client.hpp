// portbroker client library: ask portbrokerd for ready, bound, listening sockets.
//
//   auto client = portbroker::Client::connect();            // $PORTBROKER_SOCKET or default
//   if (!client) { fprintf(stderr, "%s\n", client.error().message.c_str()); return 1; }
//   auto lease = client->acquire("http=tcp:0.0.0.0:8080");
//   if (!lease) { ... lease.error().message names the holder on a conflict ... }
//   int fd = lease->fd();                                     // listening; accept() on it
//
// Administration (reserve, unreserve, reload) is for root: the daemon refuses anyone else
// with a message saying so. who, check, list, status and reservations are for everyone.
//
// The library uses plain blocking syscalls on one Unix socket: no threads, no event loop.
// A Client is not thread-safe; use one per thread or guard it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <portbroker/info.hpp>
#include <portbroker/result.hpp>
#include <portbroker/spec.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace portbroker {

// Parses a reservation target `PROTO:ADDR:PORT[-PORT]` (PROTO tcp, udp or both; ADDR an
// address or "any"), filling target, tcp, udp, address and the ports.
Result<ReservationInfo> parse_reservation_target(std::string_view target);

class Connection;

// A granted socket. Owns the fd. Every Lease shares its Client's connection, so the session
// (and every lease in it) stays open while the Client or any Lease is alive. Destroying a
// Lease closes the fd and tells the daemon to release the lease; the daemon also releases
// every lease of a session when its connection closes, so a crashed process never leaks one.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& o) noexcept;
  Lease& operator=(Lease&& o) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  int fd() const { return fd_; }
  uint64_t id() const { return info_.id; }
  uint16_t port() const { return info_.port; }
  const LeaseInfo& info() const { return info_; }

  // Gives up ownership of the fd (the caller closes it); the lease stays held for the
  // session. Used by `portbroker exec` to pass sockets on.
  [[nodiscard]] int release_fd();
  // Releases the lease now and closes the fd.
  Result<void> release();

 private:
  friend class Client;
  Lease(std::shared_ptr<Connection> conn, int fd, LeaseInfo info)
      : conn_(std::move(conn)), fd_(fd), info_(std::move(info)) {}
  void reset();

  std::shared_ptr<Connection> conn_;
  int fd_ = -1;
  LeaseInfo info_;
};

// A live stream of the daemon's events (Client::events), on a connection of its own.
//
//   auto events = client->events();
//   for (const portbroker::Event& e : *events) printf("%llu %s\n", e.seq, e.kind.c_str());
//   if (!events->error().message.empty()) ...  // why the stream ended
//
// A non-root subscriber sees only events about its own uid's leases (unless the policy's
// [events] names it). An event of kind "lost" says `count` events were not delivered (this
// reader was too slow): reconnect with `since` = the last seq seen to fetch what the daemon's
// ring still has.
class EventStream {
 public:
  EventStream(EventStream&&) noexcept;
  EventStream& operator=(EventStream&&) noexcept;
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;
  ~EventStream();

  // The next event; waits up to `timeout_ms` (negative: for ever). An empty optional when the
  // time ran out first. An error ends the stream (the daemon closed it, or stopped).
  Result<std::optional<Event>> next(int timeout_ms = -1);
  // The newest event's seq when the subscription took effect (events after it follow).
  uint64_t subscribed_at() const { return subscribed_at_; }
  // The seq of the last event returned (0 before any): `since` for a reconnect.
  uint64_t last_seq() const { return last_seq_; }
  // The connection's fd, to poll(2) for readability alongside other work.
  int fd() const;
  // Why iteration ended (empty message while it has not).
  const Error& error() const { return error_; }

  // Range-for over the events; ends at the first error (see error()).
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Event;
    using difference_type = std::ptrdiff_t;
    using pointer = const Event*;
    using reference = const Event&;
    iterator() = default;
    reference operator*() const { return current_; }
    pointer operator->() const { return &current_; }
    iterator& operator++();
    void operator++(int) { ++*this; }
    bool operator==(const iterator& o) const { return stream_ == o.stream_; }

   private:
    friend class EventStream;
    explicit iterator(EventStream* s) : stream_(s) { ++*this; }
    EventStream* stream_ = nullptr;
    Event current_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

 private:
  friend class Client;
  EventStream(std::shared_ptr<Connection> conn, uint64_t subscribed_at)
      : conn_(std::move(conn)), subscribed_at_(subscribed_at) {}
  std::shared_ptr<Connection> conn_;
  uint64_t subscribed_at_ = 0;
  uint64_t last_seq_ = 0;
  Error error_;
};

class Client {
 public:
  // Connects to `socket_path`, or $PORTBROKER_SOCKET, or the default path.
  static Result<Client> connect(std::string socket_path = {});

  // One socket. `spec` is `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`.
  Result<Lease> acquire(std::string_view spec);
  Result<Lease> acquire(const SocketSpec& spec);
  // Several sockets, all or nothing.
  Result<std::vector<Lease>> acquire_all(const std::vector<SocketSpec>& specs);
  Result<void> release(uint64_t lease_id);
  // Sends the release without waiting for the daemon's answer (read, and any error in it
  // dropped, before the next request's): for a caller that closes a socket and moves on.
  Result<void> release_nowait(uint64_t lease_id);
  Result<std::vector<LeaseInfo>> list();
  Result<DaemonStatus> status();

  // Root only. Reserves `target` (`PROTO:ADDR:PORT[-PORT]`) as `name` for the given users and
  // groups (names or numeric ids); `hold` makes the daemon bind and keep the port(s), and
  // `no_listen` (with hold) keeps held TCP sockets bound but never listening. Runtime
  // reservations persist across daemon restarts.
  Result<void> reserve(std::string_view name, std::string_view target,
                       const std::vector<std::string>& users = {},
                       const std::vector<std::string>& groups = {}, bool hold = false,
                       bool no_listen = false);
  Result<void> unreserve(std::string_view name);  // root only
  Result<std::vector<ReservationInfo>> reservations();
  // Root only. Reloads the policy; leases it would now refuse are kept and listed.
  Result<ReloadReport> reload();
  // Stops the daemon (root). Without `revoke_all` every holder keeps its socket, as with
  // SIGTERM; with it every lease is revoked first.
  Result<void> shutdown(bool revoke_all);
  // Re-executes the daemon binary in place (root): leases, sessions and listeners carry on.
  Result<void> upgrade();
  Result<WhoReport> who(Protocol protocol, uint16_t port);
  // Empty when all is well.
  Result<std::vector<Problem>> check();
  // The daemon's metrics, in the Prometheus text format.
  Result<std::string> metrics();
  // Streams the daemon's events on a new connection (this Client stays usable). With `since`,
  // first the events after it that the daemon's ring still holds (one "lost" event first
  // when it no longer holds them all). Returns once the daemon has taken the subscription:
  // every event after subscribed_at() will arrive.
  Result<EventStream> events(std::optional<uint64_t> since = std::nullopt);

  // The connection's fd: the session lives as long as this fd is open in any process.
  int session_fd() const;
  // Hands the session fd over to the caller (it stays open; the Client becomes unusable).
  // Used by `portbroker exec` so that the leases last as long as the exec'd command.
  [[nodiscard]] int detach_session_fd();

 private:
  explicit Client(std::shared_ptr<Connection> conn) : conn_(std::move(conn)) {}
  std::shared_ptr<Connection> conn_;
};

}  // namespace portbroker
