// LeaseService with real sockets, each test in its own network namespace (fixed ports, and
// nothing of the host's touched), and the faults the kernel rarely gives on demand injected
// through the SysCalls seam.
#include "broker/service/lease_service.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/core/policy.h"
#include "broker/os/handover.h"
#include "broker/os/journal_file.h"
#include "common/netns.h"
#include "portbroker/fd.hpp"

using namespace portbroker;
using namespace portbroker::broker;

namespace {

enum class Call { kSocket, kSetsockopt, kBind, kListen, kShutdown, kDupCloexec };
constexpr size_t kCallKinds = 6;

// Passes every call through to the kernel except the ones it was told to fail, and counts
// them all, so a test can say "the 2nd listen() from now fails with ENOBUFS".
class FaultySysCalls final : public SysCalls {
 public:
  // The `nth` next call of `call` fails with `err`, and so do the `times - 1` such calls after
  // it. For bind, `port` (when not 0) counts only binds of that port.
  void fail(Call call, int err, int nth = 1, int times = 1, uint16_t port = 0) {
    faults_.push_back(Fault{call, err, nth - 1, times, port});
  }
  size_t calls(Call call) const { return counts_[static_cast<size_t>(call)]; }
  // The port of every bind() asked for, in order, whether it failed or not.
  const std::vector<uint16_t>& bind_ports() const { return bind_ports_; }
  // Whether a fault was set up that no call has hit yet: a test whose fault was never hit
  // tested nothing.
  bool faults_pending() const { return !faults_.empty(); }

  int socket(int domain, int type, int protocol) override {
    return injected(Call::kSocket) ? -1 : SysCalls::socket(domain, type, protocol);
  }
  int setsockopt(int fd, int level, int name, const void* value, socklen_t len) override {
    return injected(Call::kSetsockopt) ? -1 : SysCalls::setsockopt(fd, level, name, value, len);
  }
  int bind(int fd, const sockaddr* addr, socklen_t len) override {
    const uint16_t port =
        ntohs(addr->sa_family == AF_INET ? reinterpret_cast<const sockaddr_in*>(addr)->sin_port
                                         : reinterpret_cast<const sockaddr_in6*>(addr)->sin6_port);
    bind_ports_.push_back(port);
    return injected(Call::kBind, port) ? -1 : SysCalls::bind(fd, addr, len);
  }
  int listen(int fd, int backlog) override {
    return injected(Call::kListen) ? -1 : SysCalls::listen(fd, backlog);
  }
  int shutdown(int fd, int how) override {
    return injected(Call::kShutdown) ? -1 : SysCalls::shutdown(fd, how);
  }
  int dup_cloexec(int fd) override {
    return injected(Call::kDupCloexec) ? -1 : SysCalls::dup_cloexec(fd);
  }

 private:
  struct Fault {
    Call call;
    int err;
    int skip;
    int times;
    uint16_t port;
  };

  bool injected(Call call, uint16_t port = 0) {
    ++counts_[static_cast<size_t>(call)];
    for (auto it = faults_.begin(); it != faults_.end(); ++it) {
      if (it->call != call || (it->port != 0 && it->port != port)) continue;
      if (it->skip > 0) {
        --it->skip;
        return false;
      }
      errno = it->err;
      if (--it->times == 0) faults_.erase(it);
      return true;
    }
    return false;
  }

  std::vector<Fault> faults_;
  std::array<size_t, kCallKinds> counts_{};
  std::vector<uint16_t> bind_ports_;
};

class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "pb-lease-service-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    // Only what mkdtemp made, never a path that might be empty or shared.
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;  // includes the iterator's own fd, on both sides of every comparison
}

SocketSpec spec(std::string_view text) {
  auto s = parse_socket_spec(text);
  REQUIRE_MESSAGE(s.ok(), text << ": " << (s.ok() ? "" : s.error().message));
  return std::move(s).value();
}

std::vector<SocketSpec> specs(std::initializer_list<std::string_view> texts) {
  std::vector<SocketSpec> out;
  for (std::string_view t : texts) out.push_back(spec(t));
  return out;
}

int int_option(int fd, int level, int name) {
  int value = -1;
  socklen_t len = sizeof(value);
  REQUIRE(::getsockopt(fd, level, name, &value, &len) == 0);
  return value;
}

bool listening(int fd) { return int_option(fd, SOL_SOCKET, SO_ACCEPTCONN) == 1; }

// The kernel's identity of a socket: equal cookies, the very same socket.
uint64_t cookie(int fd) {
  uint64_t value = 0;
  socklen_t len = sizeof(value);
  REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &value, &len) == 0);
  return value;
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

sockaddr_in ipv4(const char* address, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  REQUIRE(::inet_pton(AF_INET, address, &sin.sin_addr) == 1);
  return sin;
}

// Closes with a reset: neither side is left in TIME_WAIT, which would keep the port from being
// bound again by the strict checks below.
void abort_close(UniqueFd fd) {
  const linger now{1, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &now, sizeof(now));
}

// Whether a process outside the broker could take the port now (and listen on it, for TCP).
// Without SO_REUSEADDR any socket still bound there refuses it; with it (as servers bind), only
// a listening one does.
bool bindable(Protocol p, const char* address, uint16_t port, bool reuseaddr = false) {
  const bool tcp = p == Protocol::kTcp;
  UniqueFd s(::socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0));
  REQUIRE(s.valid());
  const int on = 1;
  if (reuseaddr) REQUIRE(::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) == 0);
  const sockaddr_in sin = ipv4(address, port);
  if (::bind(s.get(), reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) != 0) return false;
  return !tcp || ::listen(s.get(), 1) == 0;
}

// connect() to 127.0.0.1:port: 0 or the errno. On success the connection is left in the
// listener's queue and `out` (when given) keeps the client end.
int connect_to(uint16_t port, UniqueFd* out = nullptr) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s.valid());
  const sockaddr_in sin = ipv4("127.0.0.1", port);
  if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) != 0) return errno;
  if (out != nullptr) {
    *out = std::move(s);
  } else {
    abort_close(std::move(s));
  }
  return 0;
}

// Accepts one connection from `listener`, waiting for the kernel to queue it (loopback
// handshakes may finish in softirq context after connect() has returned). The bound only keeps
// a broken build from hanging the suite.
bool accept_one(int listener) {
  pollfd p{listener, POLLIN, 0};
  if (::poll(&p, 1, 30'000) != 1) return false;
  UniqueFd conn(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return false;
  abort_close(std::move(conn));
  return true;
}

// A connection made to `port` reaches `listener`.
bool serves(int listener, uint16_t port) {
  UniqueFd client;
  if (connect_to(port, &client) != 0) return false;
  const bool accepted = accept_one(listener);
  abort_close(std::move(client));
  return accepted;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

class NoNames final : public NameResolver {
 public:
  std::optional<uint32_t> uid_of(std::string_view) const override { return std::nullopt; }
  std::optional<uint32_t> gid_of(std::string_view) const override { return std::nullopt; }
};

Policy policy_from(std::string_view toml) {
  const NoNames names;
  auto p = parse_policy(toml, "policy.toml", names);
  REQUIRE_MESSAGE(p.ok(), (p.ok() ? "" : p.error().message));
  return std::move(p).value();
}

// The embedded default (everyone may lease 1024-65535, pool 20000-29999), without the
// ephemeral-port guard: these tests are about leases, and leave every sysctl alone.
Policy default_policy() {
  Policy p = embedded_default_policy();
  p.daemon.ephemeral_guard = false;
  return p;
}

// A started LeaseService over the faulty seam, with a state dir of its own.
struct Service {
  explicit Service(Policy policy = default_policy()) : svc(config_in(dir), std::move(policy), sys) {
    REQUIRE(svc.start().ok());
  }

  static ServiceConfig config_in(const TempDir& d) {
    REQUIRE(!d.path().empty());
    ServiceConfig config;
    config.state_dir = d.path();
    return config;
  }

  // A session of process `pid` running as `uid`.
  void open(uint64_t session, uint32_t uid, int pid) {
    const std::string comm = "server" + std::to_string(pid);
    svc.open_session(session, Holder{pid, uid, uid, comm, "/test.slice"},
                     Principal{uid, uid, {}, "/test.slice"}, -1);
  }

  // Acquires `texts` for `session`, requiring success; returns the grants in order.
  std::vector<Grant> grant(uint64_t session, std::initializer_list<std::string_view> texts) {
    auto want = specs(texts);
    AcquireOutcome out = svc.acquire(session, want);
    REQUIRE_MESSAGE(!out.error, (out.error ? out.error->message : ""));
    REQUIRE(out.granted.size() == want.size());
    return out.granted;
  }

  void release(uint64_t session, uint64_t lease) {
    auto r = svc.release(session, lease);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  }

  TempDir dir;
  FaultySysCalls sys;
  LeaseService svc;
};

// Every test: its own network namespace, and not one fd more at the end than at the start.
class Sandbox {
 public:
  Sandbox() {
    REQUIRE_MESSAGE(netns_.ok(), netns_.why());
    fds_at_start_ = open_fds();
  }
  ~Sandbox() { CHECK(open_fds() == fds_at_start_); }
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

 private:
  pbtest::ScopedNetns netns_;
  size_t fds_at_start_ = 0;
};

}  // namespace

TEST_SUITE("lease_service") {
  TEST_CASE("exclusive: a listening socket on the port, others refused by name, free on release") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1001, 4343);

    const Grant g = s.grant(1, {"tcp:127.0.0.1:8080"})[0];
    CHECK_FALSE(g.reclaimed);
    CHECK(local_port(g.fd) == 8080);
    CHECK(listening(g.fd));
    CHECK(serves(g.fd, 8080));
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8080, true));

    // The wildcard overlaps the lease: refused with the holder named.
    auto wildcard = specs({"tcp:0.0.0.0:8080"});
    AcquireOutcome refused = s.svc.acquire(2, wildcard);
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kConflict);
    CHECK_MESSAGE(contains(refused.error->message, "pid 4242 (server4242, uid 1000)"),
                  refused.error->message);
    CHECK(refused.granted.empty());
    CHECK(s.svc.registry().lease_count() == 1);

    auto r = s.svc.release(1, g.lease);
    REQUIRE(r.ok());
    CHECK_FALSE(*r);  // its own: not a revoke
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK(s.svc.registry().binding_count() == 0);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8080));

    auto again = s.svc.release(1, g.lease);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == ErrorCode::kNotFound);
  }

  TEST_CASE("events: each outcome reported once, in order; a rolled-back grant never is") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1001, 4343);
    (void)s.svc.take_events();
    const Grant g = s.grant(1, {"web=tcp:127.0.0.1:8080"})[0];
    // 8081 is granted, then rolled back when 8080 conflicts: only the refusal is reported.
    auto both = specs({"tcp:127.0.0.1:8081", "tcp:127.0.0.1:8080"});
    AcquireOutcome refused = s.svc.acquire(2, both);
    REQUIRE(refused.error);
    REQUIRE(s.svc.release(1, g.lease).ok());

    const std::vector<Event> events = s.svc.take_events();
    REQUIRE(events.size() == 3);
    CHECK(events[0].kind == "acquired");
    CHECK(events[0].lease == g.lease);
    CHECK(events[0].name == "web");
    CHECK(events[0].endpoint == "tcp 127.0.0.1:8080");
    CHECK(events[0].mode == "exclusive");
    CHECK(events[0].pid == 4242);
    CHECK(events[0].uid == 1000);
    CHECK(events[1].kind == "refused");
    CHECK(events[1].uid == 1001);
    CHECK(events[1].pid == 4343);
    CHECK(events[1].port == 8080);
    CHECK(events[1].code == ErrorCode::kConflict);
    CHECK(events[1].reason == refused.error->message);
    CHECK_MESSAGE(contains(events[1].conflicts_with, "lease " + std::to_string(g.lease)),
                  events[1].conflicts_with);
    CHECK(contains(events[1].conflicts_with, "pid 4242"));
    CHECK(events[2].kind == "released");
    CHECK(events[2].lease == g.lease);
    CHECK(s.svc.take_events().empty());
  }

  TEST_CASE("rollback: when the last socket of an acquire fails, nothing stays leased") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1001, 4343);
    size_t others = 0;  // leases the test set up itself
    ErrorCode expected = ErrorCode::kOk;
    // A's TCP socket is the 1st socket(), bind() and listen(); B (UDP) the 2nd socket() and
    // bind(), no listen(); C the 3rd socket() and bind() and the 2nd listen().
    SUBCASE("C is leased by someone else") {
      s.grant(2, {"tcp:127.0.0.1:8083"});
      others = 1;
      expected = ErrorCode::kConflict;
    }
    SUBCASE("C's socket() fails") {
      s.sys.fail(Call::kSocket, EMFILE, 3);
      expected = ErrorCode::kResourceExhausted;
    }
    SUBCASE("C's bind() fails") {
      s.sys.fail(Call::kBind, EADDRINUSE, 1, 1, 8083);
      expected = ErrorCode::kInUseOutside;
    }
    SUBCASE("C's listen() fails after its bind") {
      s.sys.fail(Call::kListen, ENOBUFS, 2);
      expected = ErrorCode::kInternal;
    }
    const size_t fds_before = open_fds();

    auto abc = specs({"a=tcp:127.0.0.1:8081", "b=udp:127.0.0.1:8082", "c=tcp:127.0.0.1:8083"});
    AcquireOutcome out = s.svc.acquire(1, abc);
    REQUIRE(out.error);
    CHECK(out.error->code == expected);
    CHECK(out.failed_index == 2);
    CHECK_FALSE(out.whole_request);
    CHECK(out.granted.empty());
    CHECK_FALSE(s.sys.faults_pending());

    CHECK(s.svc.registry().lease_count() == others);
    CHECK(s.svc.registry().binding_count() == others);
    CHECK(s.svc.registry().leases_of_session(1).empty());
    CHECK(s.svc.registry().leases_of_uid(1000) == 0);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8081));
    CHECK(bindable(Protocol::kUdp, "127.0.0.1", 8082));
    if (others == 0) CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8083));
    CHECK(open_fds() == fds_before);

    // Nothing half-done stands in the way of the same request once C can be had.
    if (others == 1) s.svc.end_session(2);
    abc = specs({"a=tcp:127.0.0.1:8081", "b=udp:127.0.0.1:8082", "c=tcp:127.0.0.1:8083"});
    AcquireOutcome retried = s.svc.acquire(1, abc);
    CHECK_MESSAGE(!retried.error, (retried.error ? retried.error->message : ""));
    CHECK(retried.granted.size() == 3);
  }

  TEST_CASE("linger: the same socket back for a restarted holder; a failed acquire puts it back") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const Grant first = s.grant(1, {"tcp:127.0.0.1:8090,linger=30"})[0];
    const uint64_t id = first.lease;
    const uint64_t socket_cookie = cookie(first.fd);

    auto ended = s.svc.end_session(1);
    CHECK(ended.lingering == 1);
    CHECK(ended.released == 0);
    const Lease* l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    REQUIRE(l->lingering());
    const int64_t until = l->lingering_until_ms;

    // Its backlog keeps queueing while nobody holds it...
    UniqueFd waiting;
    REQUIRE(connect_to(8090, &waiting) == 0);

    // ...and a restart of the same uid takes back the very socket, that connection included.
    s.open(2, 1000, 4243);
    const Grant back = s.grant(2, {"tcp:127.0.0.1:8090,linger=30"})[0];
    CHECK(back.reclaimed);
    CHECK(back.lease == id);
    CHECK(back.lingered_until_ms == until);
    CHECK(cookie(back.fd) == socket_cookie);
    l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    CHECK_FALSE(l->lingering());
    CHECK(l->holder.pid == 4243);
    CHECK(accept_one(back.fd));
    abort_close(std::move(waiting));

    // Reclaimed inside an acquire whose next socket is refused: lingering again, as it was.
    s.svc.end_session(2);
    l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    REQUIRE(l->lingering());
    const int64_t until_again = l->lingering_until_ms;
    s.open(9, 1001, 5000);
    s.grant(9, {"tcp:127.0.0.1:8091"});
    s.open(3, 1000, 4244);
    auto pair = specs({"tcp:127.0.0.1:8090,linger=30", "tcp:127.0.0.1:8091"});
    AcquireOutcome out = s.svc.acquire(3, pair);
    REQUIRE(out.error);
    CHECK(out.error->code == ErrorCode::kConflict);
    CHECK(out.failed_index == 1);
    l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    CHECK(l->lingering());
    CHECK(l->lingering_until_ms == until_again);
    CHECK(l->session == 0);
    CHECK(s.svc.registry().leases_of_session(3).empty());
    CHECK(s.svc.end_session(3).lingering == 0);  // it never held the lease

    // Still the same socket, still listening.
    s.open(4, 1000, 4245);
    const Grant third = s.grant(4, {"tcp:127.0.0.1:8090,linger=30"})[0];
    CHECK(third.reclaimed);
    CHECK(cookie(third.fd) == socket_cookie);
    CHECK(serves(third.fd, 8090));
    s.svc.end_session(4);

    // Not before its time; then ended, and the port free.
    CHECK(s.svc.expire(until_again - 1).empty());
    CHECK(s.svc.registry().find_lease(id) != nullptr);
    CHECK(s.svc.expire(INT64_MAX) == std::vector<uint64_t>{id});
    CHECK(s.svc.registry().find_lease(id) == nullptr);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8090));
  }

  TEST_CASE("linger: a holder at its lease limit still takes its lingering lease back") {
    Sandbox sandbox;
    TempDir dir;
    FaultySysCalls sys;
    ServiceConfig config = Service::config_in(dir);
    Policy policy = default_policy();
    SUBCASE("the daemon's limit") { config.max_leases_per_uid = 1; }
    SUBCASE("the policy's [limits]") {
      policy = policy_from(
          "[limits]\nmax_leases_per_uid = 1\n[[rule]]\nusers = [\"*\"]\n"
          "ports = \"8094-8095\"\n");
    }
    SUBCASE("a rule's max_leases") {
      policy = policy_from("[[rule]]\nusers = [\"*\"]\nports = \"8094-8095\"\nmax_leases = 1\n");
    }
    LeaseService svc(config, std::move(policy), sys);
    REQUIRE(svc.start().ok());
    svc.open_session(1, Holder{4242, 1000, 1000, "web", ""}, Principal{1000, 1000, {}, ""}, -1);
    auto web = specs({"tcp:127.0.0.1:8094,linger=30"});
    AcquireOutcome first = svc.acquire(1, web);
    REQUIRE_FALSE(first.error);
    svc.end_session(1);

    svc.open_session(2, Holder{4243, 1000, 1000, "web", ""}, Principal{1000, 1000, {}, ""}, -1);
    web = specs({"tcp:127.0.0.1:8094,linger=30"});
    AcquireOutcome back = svc.acquire(2, web);
    REQUIRE_MESSAGE(!back.error, (back.error ? back.error->message : ""));
    CHECK(back.granted[0].reclaimed);
    CHECK(back.granted[0].lease == first.granted[0].lease);

    // The limit itself still holds.
    auto another = specs({"tcp:127.0.0.1:8095"});
    AcquireOutcome refused = svc.acquire(2, another);
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kLimitExceeded);
  }

  TEST_CASE("linger: a token reclaim by another uid that is rolled back leaves the lease its own") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const uint64_t id = s.grant(1, {"tcp:127.0.0.1:8092,linger=30"})[0].lease;
    s.svc.end_session(1);
    const Lease* l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    const std::string token = l->token;
    REQUIRE_FALSE(token.empty());

    s.open(9, 1002, 6000);
    s.grant(9, {"tcp:127.0.0.1:8093"});
    s.open(2, 1001, 5000);
    auto pair = specs({"tcp:127.0.0.1:8092,linger=30", "tcp:127.0.0.1:8093"});
    pair[0].token = token;
    AcquireOutcome out = s.svc.acquire(2, pair);
    REQUIRE(out.error);
    CHECK(out.failed_index == 1);

    l = s.svc.registry().find_lease(id);
    REQUIRE(l != nullptr);
    CHECK(l->lingering());
    CHECK(l->holder.uid == 1000);
    CHECK(l->holder.pid == 4242);
    CHECK(s.svc.registry().leases_of_uid(1001) == 0);
    CHECK(s.svc.registry().leases_of_uid(1000) == 1);

    // Its own uid still takes it back without the token.
    s.open(3, 1000, 4243);
    const Grant back = s.grant(3, {"tcp:127.0.0.1:8092,linger=30"})[0];
    CHECK(back.reclaimed);
    CHECK(back.lease == id);
  }

  TEST_CASE("shared: members of one uid get one socket; it lives until the last one leaves") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1000, 4243);
    const Grant a = s.grant(1, {"tcp:127.0.0.1:8100,shared"})[0];
    const Grant b = s.grant(2, {"tcp:127.0.0.1:8100,shared"})[0];
    CHECK(a.lease != b.lease);
    CHECK(cookie(a.fd) == cookie(b.fd));
    CHECK(s.svc.registry().binding_count() == 1);
    CHECK(s.svc.registry().lease_count() == 2);

    s.release(1, a.lease);
    CHECK(listening(b.fd));
    CHECK(serves(b.fd, 8100));
    CHECK(s.svc.registry().binding_count() == 1);

    s.release(2, b.lease);
    CHECK(s.svc.registry().binding_count() == 0);
    CHECK(connect_to(8100) == ECONNREFUSED);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8100));
  }

  TEST_CASE("shared: another uid may not join the group") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1001, 5000);
    s.open(3, 0, 1);
    const Grant a = s.grant(1, {"tcp:127.0.0.1:8101,shared"})[0];
    auto join = specs({"tcp:127.0.0.1:8101,shared"});
    AcquireOutcome refused = s.svc.acquire(2, join);
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kConflict);
    CHECK_MESSAGE(contains(refused.error->message, "only uid 1000"), refused.error->message);
    CHECK(s.svc.registry().lease_count() == 1);

    // Root may (it could have made the socket itself).
    const Grant r = s.grant(3, {"tcp:127.0.0.1:8101,shared"})[0];
    CHECK(cookie(r.fd) == cookie(a.fd));
  }

  TEST_CASE("reuseport: a socket per member in one group; one leaving keeps the other serving") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1000, 4243);
    const Grant a = s.grant(1, {"tcp:127.0.0.1:8110,reuseport"})[0];
    const Grant b = s.grant(2, {"tcp:127.0.0.1:8110,reuseport"})[0];
    CHECK(cookie(a.fd) != cookie(b.fd));
    for (int fd : {a.fd, b.fd}) {
      CHECK(local_port(fd) == 8110);
      CHECK(int_option(fd, SOL_SOCKET, SO_REUSEPORT) == 1);
      CHECK(listening(fd));
    }
    CHECK(s.svc.registry().binding_count() == 1);

    s.release(1, a.lease);
    CHECK(listening(b.fd));
    CHECK(serves(b.fd, 8110));

    s.release(2, b.lease);
    CHECK(s.svc.registry().binding_count() == 0);
    CHECK(connect_to(8110) == ECONNREFUSED);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8110));
  }

  TEST_CASE("revoke: root ends anyone's lease and its socket stops serving; another uid may not") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    s.open(2, 1001, 5000);
    s.open(3, 0, 1);
    s.open(4, 1000, 4243);
    const Grant g = s.grant(1, {"tcp:127.0.0.1:8120"})[0];
    // The holder's own copy, as SCM_RIGHTS gives it: revoke must reach it too.
    UniqueFd copy(::fcntl(g.fd, F_DUPFD_CLOEXEC, 0));
    REQUIRE(copy.valid());

    auto denied = s.svc.release(2, g.lease);
    REQUIRE_FALSE(denied.ok());
    CHECK(denied.error().code == ErrorCode::kPermissionDenied);
    CHECK(s.svc.registry().find_lease(g.lease) != nullptr);
    CHECK(listening(copy.get()));

    auto revoked = s.svc.release(3, g.lease);
    REQUIRE(revoked.ok());
    CHECK(*revoked);
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK_FALSE(listening(copy.get()));
    CHECK(connect_to(8120) == ECONNREFUSED);
    // The copy stays open, yet a server binds the port as servers do.
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8120, true));

    // The same uid from another session may end it too, and that is a revoke as well.
    const Grant h = s.grant(1, {"tcp:127.0.0.1:8121"})[0];
    auto same_uid = s.svc.release(4, h.lease);
    REQUIRE(same_uid.ok());
    CHECK(*same_uid);
  }

  TEST_CASE("faults: listen() failing after bind() names the endpoint and leaves nothing bound") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const size_t fds_before = open_fds();
    const size_t binds = s.sys.calls(Call::kBind);
    s.sys.fail(Call::kListen, ENOBUFS);
    auto one = specs({"tcp:127.0.0.1:8130"});
    AcquireOutcome out = s.svc.acquire(1, one);
    REQUIRE(out.error);
    CHECK(out.error->code == ErrorCode::kInternal);
    CHECK_MESSAGE(contains(out.error->message, "tcp 127.0.0.1:8130: listen failed"),
                  out.error->message);
    CHECK(s.sys.calls(Call::kBind) == binds + 1);  // it did get as far as the bind
    CHECK_FALSE(s.sys.faults_pending());
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", 8130));
    CHECK(open_fds() == fds_before);
  }

  TEST_CASE("faults: socket() failing with EMFILE is kResourceExhausted") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const size_t fds_before = open_fds();
    s.sys.fail(Call::kSocket, EMFILE);
    auto one = specs({"udp:127.0.0.1:8131"});
    AcquireOutcome out = s.svc.acquire(1, one);
    REQUIRE(out.error);
    CHECK(out.error->code == ErrorCode::kResourceExhausted);
    CHECK_MESSAGE(contains(out.error->message, "udp 127.0.0.1:8131"), out.error->message);
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK(open_fds() == fds_before);
  }

  TEST_CASE("faults: bind() EADDRINUSE, injected or real, is kInUseOutside") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const size_t fds_before = open_fds();
    UniqueFd outsider;
    SUBCASE("injected") { s.sys.fail(Call::kBind, EADDRINUSE, 1, 1, 8132); }
    SUBCASE("a process outside the broker listens there") {
      outsider = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const sockaddr_in sin = ipv4("127.0.0.1", 8132);
      REQUIRE(::bind(outsider.get(), reinterpret_cast<const sockaddr*>(&sin), sizeof(sin)) == 0);
      REQUIRE(::listen(outsider.get(), 1) == 0);
    }
    auto one = specs({"tcp:127.0.0.1:8132"});
    AcquireOutcome out = s.svc.acquire(1, one);
    REQUIRE(out.error);
    CHECK(out.error->code == ErrorCode::kInUseOutside);
    CHECK_MESSAGE(contains(out.error->message, "tcp 127.0.0.1:8132 is in use by a process outside"),
                  out.error->message);
    CHECK_FALSE(s.sys.faults_pending());
    CHECK(s.svc.registry().lease_count() == 0);
    outsider.reset();
    CHECK(open_fds() == fds_before);
  }

  TEST_CASE("faults: a pool port that fails to bind or listen is skipped for the next one") {
    Sandbox sandbox;
    Service s;
    s.open(1, 1000, 4242);
    const size_t fds_before = open_fds();
    const size_t sockets = s.sys.calls(Call::kSocket);
    size_t sockets_used = 0;
    SUBCASE("bind: the same socket tries the next port") {
      s.sys.fail(Call::kBind, EADDRINUSE);
      sockets_used = 1;
    }
    SUBCASE("listen after bind: a bound socket is no use, a fresh one tries the next port") {
      s.sys.fail(Call::kListen, EADDRINUSE);
      sockets_used = 2;
    }
    const size_t first_bind = s.sys.bind_ports().size();
    auto any = specs({"tcp:127.0.0.1:0"});
    AcquireOutcome out = s.svc.acquire(1, any);
    REQUIRE_MESSAGE(!out.error, (out.error ? out.error->message : ""));
    REQUIRE(s.sys.bind_ports().size() == first_bind + 2);
    const uint16_t skipped = s.sys.bind_ports()[first_bind];
    const uint16_t chosen = s.sys.bind_ports()[first_bind + 1];
    CHECK(skipped != chosen);
    CHECK(any[0].port == chosen);
    CHECK(local_port(out.granted[0].fd) == chosen);
    CHECK(listening(out.granted[0].fd));
    CHECK(s.sys.calls(Call::kSocket) == sockets + sockets_used);
    CHECK(bindable(Protocol::kTcp, "127.0.0.1", skipped));

    s.release(1, out.granted[0].lease);
    CHECK(open_fds() == fds_before);
  }

  // Held reservations of one address each, so that port_held() says whether that socket holds
  // the port right now.
  constexpr std::string_view kHeldPolicy = R"([daemon]
ephemeral_guard = false

[[reservation]]
name = "db"
ports = 8140
protocol = "tcp"
address = "0.0.0.0"
users = [1000]
hold = true

[[reservation]]
name = "dns"
ports = 8150
protocol = "udp"
address = "0.0.0.0"
users = [1000]
hold = true

[[rule]]
users = ["*"]
ports = "8160-8169"
)";

  TEST_CASE("held: the reservation's own lease gets the held socket; ending it holds again") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    CHECK(s.svc.port_held(Protocol::kTcp, 8140));
    CHECK(s.svc.port_held(Protocol::kUdp, 8150));
    CHECK(s.svc.hold_failures().empty());
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8140, true));

    s.open(2, 1001, 5000);
    auto theirs = specs({"tcp:0.0.0.0:8140"});
    AcquireOutcome refused = s.svc.acquire(2, theirs);
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kPermissionDenied);

    s.open(1, 1000, 4242);
    const size_t binds = s.sys.calls(Call::kBind);
    const Grant g = s.grant(1, {"tcp:0.0.0.0:8140"})[0];
    CHECK(s.sys.calls(Call::kBind) == binds);  // no bind: the held socket itself
    CHECK(listening(g.fd));
    CHECK(serves(g.fd, 8140));
    CHECK_FALSE(s.svc.port_held(Protocol::kTcp, 8140));  // held through the lease now

    s.release(1, g.lease);
    CHECK(s.svc.port_held(Protocol::kTcp, 8140));
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8140, true));
  }

  TEST_CASE("held: an option that fails on the held socket leaves it held, not leased") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    // keepalive still applies after bind, so the held socket itself gets it: the first
    // setsockopt() of the acquire.
    s.sys.fail(Call::kSetsockopt, ENOMEM);
    auto one = specs({"tcp:0.0.0.0:8140,keepalive"});
    AcquireOutcome out = s.svc.acquire(1, one);
    REQUIRE(out.error);
    CHECK(out.error->code == ErrorCode::kInvalidOption);
    CHECK_MESSAGE(contains(out.error->message, "keepalive"), out.error->message);
    CHECK_FALSE(s.sys.faults_pending());
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK(s.svc.port_held(Protocol::kTcp, 8140));

    // And the next try gets it.
    const size_t binds = s.sys.calls(Call::kBind);
    const Grant g = s.grant(1, {"tcp:0.0.0.0:8140,keepalive"})[0];
    CHECK(s.sys.calls(Call::kBind) == binds);
    CHECK(int_option(g.fd, SOL_SOCKET, SO_KEEPALIVE) == 1);
  }

  TEST_CASE("held: a lease on one address parks the held socket; it listens again after") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    const Grant g = s.grant(1, {"tcp:127.0.0.1:8140"})[0];
    CHECK(local_port(g.fd) == 8140);
    CHECK_FALSE(s.svc.port_held(Protocol::kTcp, 8140));
    CHECK(serves(g.fd, 8140));  // the lease's socket, not the parked one, gets connections

    bool retried = false;
    SUBCASE("at once") {}
    SUBCASE("when listen() first fails, on the next retry") {
      // Unparking is tried before and after the re-hold: both fail.
      s.sys.fail(Call::kListen, EADDRINUSE, 1, 2);
      retried = true;
    }
    s.release(1, g.lease);
    if (retried) {
      CHECK_FALSE(s.sys.faults_pending());
      CHECK_FALSE(s.svc.port_held(Protocol::kTcp, 8140));
      s.svc.retry_holds();
    }
    CHECK(s.svc.port_held(Protocol::kTcp, 8140));
    CHECK(s.svc.hold_failures().empty());
    CHECK(connect_to(8140) == 0);  // the held socket listens, so early clients queue
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8140, true));
  }

  TEST_CASE("held: a re-hold whose bind fails is retried until it holds") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    Protocol protocol = Protocol::kUdp;
    uint16_t port = 8150;
    std::string reservation = "dns";
    SUBCASE("udp: the held socket had to go for the lease") { s.grant(1, {"udp:127.0.0.1:8150"}); }
    SUBCASE("tcp: the lease without SO_REUSEADDR made the parked socket go") {
      s.grant(1, {"tcp:127.0.0.1:8140,reuseaddr=false"});
      protocol = Protocol::kTcp;
      port = 8140;
      reservation = "db";
    }
    CHECK_FALSE(s.svc.port_held(protocol, port));
    (void)s.svc.take_notices();

    s.sys.fail(Call::kBind, EADDRINUSE, 1, 1, port);
    s.svc.end_session(1);
    CHECK_FALSE(s.sys.faults_pending());
    CHECK_FALSE(s.svc.port_held(protocol, port));
    auto failures = s.svc.hold_failures();
    REQUIRE(failures.size() == 1);
    CHECK(failures[0].protocol == protocol);
    CHECK(failures[0].port == port);
    CHECK(failures[0].reservation == reservation);
    auto notices = s.svc.take_notices();
    REQUIRE(notices.size() == 1);
    CHECK(notices[0].level == Notice::kWarn);
    CHECK_MESSAGE(contains(notices[0].text, "cannot hold"), notices[0].text);

    s.svc.retry_holds();
    CHECK(s.svc.port_held(protocol, port));
    CHECK(s.svc.hold_failures().empty());
    notices = s.svc.take_notices();
    REQUIRE(notices.size() == 1);
    CHECK(notices[0].level == Notice::kInfo);
    CHECK_FALSE(bindable(protocol, "127.0.0.1", port, true));
  }

  TEST_CASE("held: a reuseport group on a held port takes more members; held again after") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    s.open(2, 1000, 4243);
    const Grant a = s.grant(1, {"tcp:0.0.0.0:8140,reuseport"})[0];
    const Grant b = s.grant(2, {"tcp:0.0.0.0:8140,reuseport"})[0];
    CHECK(cookie(a.fd) != cookie(b.fd));
    CHECK(listening(a.fd));
    CHECK(listening(b.fd));
    CHECK_FALSE(s.svc.port_held(Protocol::kTcp, 8140));

    s.release(1, a.lease);
    CHECK(serves(b.fd, 8140));
    s.release(2, b.lease);
    CHECK(s.svc.port_held(Protocol::kTcp, 8140));
    CHECK(s.svc.hold_failures().empty());
  }

  TEST_CASE("held: an acquire that fails on a held port leaves the port held") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    Protocol protocol = Protocol::kTcp;
    uint16_t port = 8140;
    std::string text;
    ErrorCode expected = ErrorCode::kOk;
    SUBCASE("tcp: the held socket parked, the lease's own listen() fails") {
      text = "tcp:127.0.0.1:8140";
      s.sys.fail(Call::kListen, ENOBUFS);
      expected = ErrorCode::kInternal;
    }
    SUBCASE("tcp: the held socket closed for a bind without SO_REUSEADDR, which then fails") {
      text = "tcp:127.0.0.1:8140,reuseaddr=false";
      // The first bind is refused by the parked socket itself; the second one, after it went,
      // is the one that fails.
      s.sys.fail(Call::kBind, EACCES, 2, 1, 8140);
      expected = ErrorCode::kPermissionDenied;
    }
    SUBCASE("udp: the held socket closed, the lease's socket() fails") {
      protocol = Protocol::kUdp;
      port = 8150;
      text = "udp:127.0.0.1:8150";
      s.sys.fail(Call::kSocket, EMFILE);
      expected = ErrorCode::kResourceExhausted;
    }
    REQUIRE(s.svc.port_held(protocol, port));
    auto one = specs({text});
    AcquireOutcome out = s.svc.acquire(1, one);
    REQUIRE(out.error);
    CHECK(out.error->code == expected);
    CHECK_FALSE(s.sys.faults_pending());
    CHECK(s.svc.registry().lease_count() == 0);
    // Nothing was leased, so nothing may have changed: not even until the next sweep.
    CHECK(s.svc.port_held(protocol, port));
    CHECK(s.svc.hold_failures().empty());
    CHECK_FALSE(bindable(protocol, "127.0.0.1", port, true));
  }

  TEST_CASE("stop: every lease, lingering or not, and every hold ends") {
    Sandbox sandbox;
    Service s(policy_from(kHeldPolicy));
    s.open(1, 1000, 4242);
    s.open(2, 1000, 4243);
    s.grant(1, {"tcp:127.0.0.1:8160,linger=30"});
    s.svc.end_session(1);
    s.grant(2, {"udp:127.0.0.1:8161"});
    s.svc.stop();
    CHECK(s.svc.registry().lease_count() == 0);
    CHECK(s.svc.session_count() == 0);
    CHECK_FALSE(s.svc.port_held(Protocol::kTcp, 8140));
    for (auto [p, port] : {std::pair{Protocol::kTcp, 8160}, std::pair{Protocol::kUdp, 8161},
                           std::pair{Protocol::kTcp, 8140}, std::pair{Protocol::kUdp, 8150}}) {
      CHECK(bindable(p, "127.0.0.1", static_cast<uint16_t>(port)));
    }
  }

  TEST_CASE("journal: a session passed on before start records its holder's start time") {
    // The daemon opens the sessions the fd store passed on before the service starts (and
    // opens its journal): their later leases must still name the holder by pid + start time,
    // or a restart without the fd store would take a live holder for gone.
    Sandbox sandbox;
    TempDir dir;
    REQUIRE(!dir.path().empty());
    ServiceConfig config = Service::config_in(dir);
    config.journal_dir = dir.path() + "/journal";
    FaultySysCalls sys;
    const int pid = static_cast<int>(::getpid());
    {
      LeaseService svc(config, default_policy(), sys);
      svc.open_session(7, Holder{pid, 1000, 1000, "self", ""}, Principal{1000, 1000, {}, ""}, -1);
      REQUIRE(svc.start().ok());
      auto want = specs({"tcp:127.0.0.1:8170"});
      AcquireOutcome out = svc.acquire(7, want);
      REQUIRE_MESSAGE(!out.error, (out.error ? out.error->message : ""));
    }
    auto journal = JournalFile::open(config.journal_dir);
    REQUIRE(journal.ok());
    REQUIRE(journal->state().leases().size() == 1);
    CHECK(journal->state().leases().begin()->second.holder_start_time == process_start_time(pid));
    CHECK(journal->state().leases().begin()->second.holder_start_time != 0);
  }

  // The kernel's record of a socket's owner (its inode's uid, which SO_REUSEPORT's same-uid check
  // and `ss -e` read), and whether this process may switch its fsuid at all (not in a user
  // namespace with only its own uid mapped).
  uint32_t owner_uid(int fd) {
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    return st.st_uid;
  }
  bool may_switch_fsuid() {
    const int old = ::setfsuid(1000);
    const bool ok = ::setfsuid(static_cast<uid_t>(-1)) == 1000;
    ::setfsuid(static_cast<uid_t>(old));
    return ok;
  }

  constexpr std::string_view kSharePolicy = R"([daemon]
ephemeral_guard = false

[[rule]]
users = ["*"]
ports = "8170-8179"

[[share]]
name = "edge"
users = [1000, 1001]
ports = [8171, 8172]
)";

  TEST_CASE("owner: every socket is created as its holder's uid, a group's as its owner's") {
    Sandbox sandbox;
    Service s(policy_from(kSharePolicy));
    s.open(1, 1000, 4242);
    s.open(2, 1001, 5000);
    s.open(3, 1002, 6000);
    const bool switched = may_switch_fsuid();
    const uint32_t self = ::geteuid();
    auto expect_owner = [&](int fd, uint32_t uid) {
      CHECK(owner_uid(fd) == (switched ? uid : self));
    };
    expect_owner(s.grant(2, {"tcp:127.0.0.1:8170"})[0].fd, 1001);
    expect_owner(s.grant(2, {"tcp:127.0.0.1:0"})[0].fd, 1001);

    // 1001 joins 1000's groups under the share: one kernel group, so every member is 1000's.
    const Grant a = s.grant(1, {"tcp:127.0.0.1:8171,reuseport"})[0];
    const Grant b = s.grant(2, {"tcp:127.0.0.1:8171,reuseport"})[0];
    CHECK(cookie(a.fd) != cookie(b.fd));
    expect_owner(a.fd, 1000);
    expect_owner(b.fd, 1000);
    const Grant sa = s.grant(1, {"udp:127.0.0.1:8172,shared"})[0];
    const Grant sb = s.grant(2, {"udp:127.0.0.1:8172,shared"})[0];
    CHECK(cookie(sa.fd) == cookie(sb.fd));
    expect_owner(sa.fd, 1000);

    // 1002 is not in the share: refused, the share named.
    auto join = specs({"tcp:127.0.0.1:8171,reuseport"});
    AcquireOutcome refused = s.svc.acquire(3, join);
    REQUIRE(refused.error);
    CHECK(refused.error->code == ErrorCode::kConflict);
    CHECK_MESSAGE(contains(refused.error->message,
                           "uid 1002 is not among the principals of share 'edge' (policy.toml:"),
                  refused.error->message);
    // A port no share covers keeps the old rule.
    const Grant c = s.grant(1, {"tcp:127.0.0.1:8173,reuseport"})[0];
    auto other = specs({"tcp:127.0.0.1:8173,reuseport"});
    AcquireOutcome no_share = s.svc.acquire(2, other);
    REQUIRE(no_share.error);
    CHECK_MESSAGE(contains(no_share.error->message,
                           "only uid 1000 or root may join it (no "
                           "[[share]] in policy.toml covers"),
                  no_share.error->message);
    (void)c;
    // The fs ids are back to the daemon's own after every socket.
    CHECK(::setfsuid(static_cast<uid_t>(-1)) == static_cast<int>(self));
    CHECK(::setfsgid(static_cast<gid_t>(-1)) == static_cast<int>(::getegid()));
  }

  TEST_CASE("held without listening: bound, refusing binds and connections; the lease gets it") {
    Sandbox sandbox;
    Service s(policy_from(R"([daemon]
ephemeral_guard = false

[[reservation]]
name = "nat"
ports = 8180
protocol = "tcp"
address = "0.0.0.0"
users = [1000]
hold = true
listen = false
)"));
    CHECK(s.svc.port_held(Protocol::kTcp, 8180));
    CHECK(s.svc.hold_failures().empty());
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8180, true));
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8180, false));
    CHECK(connect_to(8180) == ECONNREFUSED);

    s.open(1, 1000, 4242);
    const size_t binds = s.sys.calls(Call::kBind);
    const Grant g = s.grant(1, {"tcp:0.0.0.0:8180"})[0];
    CHECK(s.sys.calls(Call::kBind) == binds);  // the held socket itself
    CHECK(listening(g.fd));
    CHECK(int_option(g.fd, SOL_SOCKET, SO_REUSEADDR) == 1);
    CHECK(serves(g.fd, 8180));

    // Ended: held again, still never listening.
    s.release(1, g.lease);
    CHECK(s.svc.port_held(Protocol::kTcp, 8180));
    CHECK(connect_to(8180) == ECONNREFUSED);
    CHECK_FALSE(bindable(Protocol::kTcp, "127.0.0.1", 8180, true));
  }
}
