// Reservations end to end: a held reservation blocks plain bind() outside the broker, is handed
// (that very socket) to its principal, refuses everyone else naming itself, and is held again
// once its holder is gone; runtime reservations (`portbroker reserve`) are for root, govern
// leases, persist across restarts in the state dir, and go away with `portbroker unreserve`.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "harness.h"

using portbroker::ErrorCode;
using portbroker::Protocol;
using namespace pbtest;

namespace {

std::string errno_name(int e) { return e == 0 ? "success" : std::strerror(e); }

// Every way a program outside the broker might try to take TCP `port` fails with EADDRINUSE.
void check_port_blocked_outside(uint16_t port, const char* when) {
  INFO(when);
  for (const char* addr : {"0.0.0.0", "127.0.0.1"}) {
    for (bool reuse : {false, true}) {
      int e = outside_bind_errno(port, addr, reuse);
      CHECK_MESSAGE(e == EADDRINUSE, "bind(" << addr << ":" << port
                                             << (reuse ? ", SO_REUSEADDR" : "") << ") gave "
                                             << errno_name(e));
    }
  }
}

std::optional<portbroker::WhoReport> who(const Daemon& d, Protocol p, uint16_t port) {
  portbroker::Client c = d.connect();
  auto r = c.who(p, port);
  CHECK_MESSAGE(r.ok(), "who " << port << ": " << (r.ok() ? "" : r.error().message));
  if (!r.ok()) return std::nullopt;
  return std::move(r).value();
}

constexpr const char* kHeldDb = R"([[reservation]]
name = "db"
users = [65534]
ports = 1433
protocol = "tcp"
hold = true
)";

}  // namespace

TEST_CASE("a held reservation is closed to outside bind() and handed, as is, to its principal") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kHeldDb});
  const std::string config = d.dir() + "/portbroker.toml";

  check_port_blocked_outside(1433, "held by the daemon, before any lease");
  // The reservation is TCP only: UDP 1433 stays free for anyone.
  CHECK(outside_bind_errno(1433, "0.0.0.0", false, SOCK_DGRAM) == 0);

  auto held = who(d, Protocol::kTcp, 1433);
  REQUIRE(held.has_value());
  CHECK(held->held);
  CHECK(held->leases.empty());
  CHECK_MESSAGE(held->outside.empty(), "the daemon's own held socket counts as outside");
  REQUIRE(held->reservations.size() == 1);
  CHECK(held->reservations[0].name == "db");
  CHECK(held->reservations[0].hold);

  // A client that connects before the service has its port: the held socket is listening, so
  // the connection waits in its backlog for whoever is handed that socket.
  UniqueFd early = connect_tcp(1433);
  REQUIRE_MESSAGE(early.valid(), "cannot connect to the held port: " << std::strerror(errno));
  CHECK(send_all(early.get(), "early\n"));

  // Anyone else is refused, naming the reservation; root too (reservations bind root).
  AcquireOutcome other = acquire_in_child(d, "tcp:0.0.0.0:1433", {.uid = 65533});
  INFO("uid 65533: " << other.describe());
  CHECK_FALSE(other.ok);
  CHECK(other.code == ErrorCode::kPermissionDenied);
  CHECK(contains(other.message, "reserved for 'db'"));
  CHECK(contains(other.message, config));
  CHECK(contains(other.message, "uid 65533 is not among its principals"));
  {
    portbroker::Client root = d.connect();
    auto r = root.acquire("tcp:0.0.0.0:1433");
    REQUIRE_FALSE(r.ok());
    INFO("root: " << r.error().message);
    CHECK(r.error().code == ErrorCode::kPermissionDenied);
    CHECK(contains(r.error().message, "'db'"));
  }

  Holder h = spawn_holder(d, "tcp:0.0.0.0:1433", {.uid = 65534, .name = "pbdb"});
  CHECK(h.lease.port == 1433);
  CHECK(h.lease.bound_port == 1433);
  // The early connection is there: the holder got the very socket the daemon held.
  h.child.send_line("accept db-1");
  CHECK(recv_line(early.get()) == "db-1");
  CHECK(h.child.read_line() == "accepted");
  early.reset();
  // And a new one works as well.
  {
    UniqueFd conn = connect_tcp(1433);
    REQUIRE(conn.valid());
    h.child.send_line("accept db-2");
    CHECK(send_all(conn.get(), "hi\n"));
    CHECK(recv_line(conn.get()) == "db-2");
    CHECK(h.child.read_line() == "accepted");
  }
  check_port_blocked_outside(1433, "leased to uid 65534");
  auto leased = who(d, Protocol::kTcp, 1433);
  REQUIRE(leased.has_value());
  // The IPv4 socket went to the lease; the daemon still holds the IPv6 side of the port.
  CHECK(leased->held);
  REQUIRE(leased->leases.size() == 1);
  CHECK(leased->leases[0].holder.pid == h.child.pid());
  CHECK(leased->leases[0].holder.uid == 65534);
  // The lease's listener is the broker's, not an outside holder. (Connections on the port,
  // e.g. the TIME-WAIT left by the ones above, may be listed: `who` shows every socket.)
  for (const auto& o : leased->outside) {
    CHECK_MESSAGE(o.state != "LISTEN", "the leased listener is reported as outside, pid " << o.pid);
  }

  // The holder exits: the daemon holds the port again at once.
  h.child.close_input();
  CHECK(h.child.wait().ok());
  REQUIRE(d.wait_port_unleased(1433));
  check_port_blocked_outside(1433, "after the holder exited");
  auto reheld = who(d, Protocol::kTcp, 1433);
  REQUIRE(reheld.has_value());
  CHECK(reheld->held);
  {
    // Still listening (connections queue for the next holder), and handed over again.
    UniqueFd waiting = connect_tcp(1433);
    REQUIRE(waiting.valid());
    CHECK(send_all(waiting.get(), "again\n"));
    Holder next = spawn_holder(d, "tcp:0.0.0.0:1433", {.uid = 65534, .name = "pbdb2"});
    next.child.send_line("accept db-3");
    CHECK(recv_line(waiting.get()) == "db-3");
    CHECK(next.child.read_line() == "accepted");
    next.child.close_input();
    CHECK(next.child.wait().ok());
  }
  REQUIRE(d.wait_port_unleased(1433));
  check_port_blocked_outside(1433, "after the second holder exited");
  d.check_no_fd_leak();
}

TEST_CASE("a held reservation stays held when its holder is SIGKILLed") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kHeldDb});
  Holder h = spawn_holder(d, "tcp:0.0.0.0:1433", {.uid = 65534});
  h.child.kill(SIGKILL);
  h.child.wait();
  REQUIRE(d.wait_port_unleased(1433));
  check_port_blocked_outside(1433, "after the holder was SIGKILLed");
  d.check_no_fd_leak();
}

TEST_CASE("runtime reservations: root only, enforced, persistent across restarts, removable") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  TempDir dir;  // shared by both daemons: same socket, same --state-dir
  {
    // The embedded default policy: anyone may lease 8081 until it is reserved.
    Daemon d({.dir = &dir});
    AcquireOutcome before = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65533});
    CHECK_MESSAGE(before.ok, before.describe());

    CommandResult denied =
        run_cli(d, {"reserve", "mine", "tcp:any:8082", "--user", "65534"}, {.uid = 65534});
    INFO("reserve as uid 65534: " << denied.describe());
    CHECK(denied.status.exited);
    CHECK(denied.status.code == 1);
    CHECK(contains(denied.out, "root"));

    CommandResult usage = run_cli(d, {"reserve", "bad", "tcp:any:notaport"});
    INFO("reserve with a bad target: " << usage.describe());
    CHECK(usage.status.code == 2);

    CommandResult reserved = run_cli(d, {"reserve", "web", "tcp:any:8081", "--user", "65534"});
    INFO("reserve as root: " << reserved.describe());
    REQUIRE(reserved.status.ok());
    CHECK(path_exists(dir.file("state/reservations.toml")));

    CommandResult dup = run_cli(d, {"reserve", "web2", "tcp:127.0.0.1:8081"});
    INFO("an overlapping reservation: " << dup.describe());
    CHECK(dup.status.code == 1);
    CHECK(contains(dup.out, "web"));

    CommandResult list = run_cli(d, {"reservations"});
    INFO("reservations: " << list.describe());
    CHECK(list.status.ok());
    CHECK(contains(list.out, "web"));
    CHECK(contains(list.out, "8081"));
    CHECK(contains(list.out, "65534"));
    CHECK_FALSE(contains(list.out, "web2"));

    AcquireOutcome other = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65533});
    INFO("uid 65533 after the reservation: " << other.describe());
    CHECK_FALSE(other.ok);
    CHECK(other.code == ErrorCode::kPermissionDenied);
    CHECK(contains(other.message, "'web'"));
    AcquireOutcome owner = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65534});
    CHECK_MESSAGE(owner.ok, owner.describe());

    CommandResult unreserve_denied = run_cli(d, {"unreserve", "web"}, {.uid = 65534});
    CHECK(unreserve_denied.status.code == 1);

    // A held runtime reservation takes the port from the outside world at once...
    CHECK(outside_bind_errno(8090, "127.0.0.1", true) == 0);
    CommandResult hold =
        run_cli(d, {"reserve", "cache", "tcp:127.0.0.1:8090", "--user", "65534", "--hold"});
    INFO("reserve --hold: " << hold.describe());
    REQUIRE(hold.status.ok());
    CHECK(outside_bind_errno(8090, "127.0.0.1", false) == EADDRINUSE);
    CHECK(outside_bind_errno(8090, "127.0.0.1", true) == EADDRINUSE);
    AcquireOutcome cache = acquire_in_child(d, "tcp:127.0.0.1:8090", {.uid = 65534});
    CHECK_MESSAGE(cache.ok, cache.describe());
    CHECK(d.wait_port_unleased(8090));
    CHECK(outside_bind_errno(8090, "127.0.0.1", true) == EADDRINUSE);
    // ...and unreserving it gives the port back.
    CommandResult unhold = run_cli(d, {"unreserve", "cache"});
    INFO("unreserve cache: " << unhold.describe());
    CHECK(unhold.status.ok());
    CHECK(outside_bind_errno(8090, "127.0.0.1", true) == 0);
    d.check_no_fd_leak();
  }
  {
    // A new daemon on the same state dir still enforces "web".
    Daemon d({.dir = &dir});
    CommandResult list = run_cli(d, {"reservations", "--json"});
    INFO("reservations --json after a restart: " << list.describe());
    CHECK(list.status.ok());
    CHECK(contains(list.out, R"("name": "web")"));
    CHECK_FALSE(contains(list.out, R"("name": "cache")"));
    AcquireOutcome other = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65533});
    CHECK_MESSAGE(!other.ok, "the reservation did not survive the restart: " << other.describe());
    CHECK(contains(other.message, "'web'"));
    AcquireOutcome owner = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65534});
    CHECK_MESSAGE(owner.ok, owner.describe());

    CommandResult unknown = run_cli(d, {"unreserve", "nosuch"});
    CHECK(unknown.status.code == 1);
    CommandResult removed = run_cli(d, {"unreserve", "web"});
    INFO("unreserve web: " << removed.describe());
    CHECK(removed.status.ok());
    AcquireOutcome freed = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65533});
    CHECK_MESSAGE(freed.ok, freed.describe());
    d.check_no_fd_leak();
  }
  {
    // The removal persisted too.
    Daemon d({.dir = &dir});
    CommandResult list = run_cli(d, {"reservations"});
    CHECK(list.status.ok());
    CHECK_FALSE(contains(list.out, "web"));
    AcquireOutcome anyone = acquire_in_child(d, "tcp:127.0.0.1:8081", {.uid = 65533});
    CHECK_MESSAGE(anyone.ok, anyone.describe());
  }
}

TEST_CASE("a policy-file reservation cannot be removed with unreserve") {
  FdLeakCheck fds;
  Daemon d({.config_text = kHeldDb});
  CommandResult r = run_cli(d, {"unreserve", "db"});
  INFO("unreserve db: " << r.describe());
  CHECK(r.status.code == 1);
  CommandResult list = run_cli(d, {"reservations"});
  CHECK(contains(list.out, "db"));
  check_port_blocked_outside(1433, "after a refused unreserve");
}

// ---- known daemon bugs ---------------------------------------------------------------------
// Skipped by default (run with --no-skip): each states what the issue promises for a held
// reservation ("no process outside the broker can take it") and fails on the current daemon.

TEST_CASE("a held any-address reservation also keeps IPv6 binds out") {
  FdLeakCheck fds;
  if (outside_bind_errno(18999, "::1", false) != 0) {
    MESSAGE("skipped: no IPv6 loopback in this namespace");
    return;
  }
  Daemon d({.config_text = kHeldDb});
  check_port_blocked_outside(1433, "held");
  int loopback6 = outside_bind_errno(1433, "::1", false);
  CHECK_MESSAGE(loopback6 == EADDRINUSE, "bind([::1]:1433) gave " << errno_name(loopback6));
  // [::] with IPV6_V6ONLY: what a server that binds both families separately does.
  UniqueFd v6only(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(v6only.valid());
  int one = 1;
  ::setsockopt(v6only.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  sockaddr_in6 any6{};
  any6.sin6_family = AF_INET6;
  any6.sin6_port = htons(1433);
  int rc = ::bind(v6only.get(), reinterpret_cast<sockaddr*>(&any6), sizeof(any6));
  CHECK_MESSAGE(rc != 0, "bind([::]:1433, IPV6_V6ONLY) succeeded outside the broker");
}

TEST_CASE("a held reservation leased on one address stays closed on the others") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kHeldDb});
  Holder h = spawn_holder(d, "tcp:127.0.0.1:1433", {.uid = 65534});
  // While leased on 127.0.0.1 another loopback address of the same port is up for grabs.
  int other_addr = outside_bind_errno(1433, "127.0.0.2", true);
  CHECK_MESSAGE(other_addr == EADDRINUSE,
                "bind(127.0.0.2:1433) outside the broker gave " << errno_name(other_addr));
  h.child.close_input();
  CHECK(h.child.wait().ok());
  REQUIRE(d.wait_port_unleased(1433));
  check_port_blocked_outside(1433, "after the specific-address lease ended");
}

TEST_CASE("a held reservation an outsider had at start is held, or reported, once it leaves") {
  FdLeakCheck fds;
  // Its own port: earlier tests leave TIME-WAIT connections on 1433, which a bind without
  // SO_REUSEADDR (as bind_outside does) would trip over.
  UniqueFd outsider = bind_outside(SOCK_STREAM, 1533);
  REQUIRE(outsider.valid());
  std::string config = kHeldDb;
  config.replace(config.find("1433"), 4, "1533");
  Daemon d({.config_text = config});
  outsider.reset();
  // Either the daemon holds the port now, or `check` says the reservation is not held.
  auto report = who(d, Protocol::kTcp, 1533);
  REQUIRE(report.has_value());
  CommandResult check = run_cli(d, {"check"});
  INFO("check: " << check.describe());
  bool reported = check.status.code == 1 && contains(check.out, "db");
  CHECK_MESSAGE((report->held || reported),
                "reservation db is neither held nor reported; outside bind(0.0.0.0:1433) gives "
                    << errno_name(outside_bind_errno(1533, "0.0.0.0", false)));
}
