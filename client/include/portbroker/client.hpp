// portbroker client library: ask portbrokerd for ready, bound, listening sockets.
//
//   auto client = portbroker::Client::connect();            // $PORTBROKER_SOCKET or default
//   if (!client) { fprintf(stderr, "%s\n", client.error().message.c_str()); return 1; }
//   auto lease = client->acquire("http=tcp:0.0.0.0:8080");
//   if (!lease) { ... lease.error().message names the holder on a conflict ... }
//   int fd = lease->fd();                                     // listening; accept() on it
//
// The library uses plain blocking syscalls on one Unix socket: no threads, no event loop.
// A Client is not thread-safe; use one per thread or guard it.
#pragma once

#include <cstdint>
#include <memory>
#include <portbroker/result.hpp>
#include <portbroker/spec.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace portbroker {

struct Holder {
  int pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string comm;
  std::string cgroup;
};

struct LeaseInfo {
  uint64_t id = 0;
  std::string name;
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  Mode mode = Mode::kExclusive;
  Holder holder;
  uint64_t session = 0;
  int64_t created_at_ms = 0;  // unix time
  std::string state;
};

struct DaemonStatus {
  std::string version;
  int pid = 0;
  int64_t started_at_ms = 0;
  uint32_t sessions = 0;
  uint32_t leases = 0;
  uint16_t pool_low = 0;
  uint16_t pool_high = 0;
  uint32_t open_fds = 0;
  std::string socket_path;
};

class Connection;

// A granted socket. Owns the fd; destroying the Lease closes the fd and, while the Client
// is alive, tells the daemon to release the lease (the daemon also releases every lease of a
// session when its connection closes, so a crashed process never leaks one).
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
  Result<std::vector<LeaseInfo>> list();
  Result<DaemonStatus> status();

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
