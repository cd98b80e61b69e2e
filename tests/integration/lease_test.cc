// Leases end to end: conflicts name the holder, port 0, release, all-or-nothing, crash cleanup,
// the embedded policy for non-root users.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <set>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

bool has_lease_on(const std::vector<portbroker::LeaseInfo>& leases, uint16_t port) {
  for (const auto& l : leases) {
    if (l.port == port) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("an exclusive lease refuses a second holder and names the first") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18080");
  CHECK(h.lease.port == 18080);
  CHECK(h.lease.bound_port == 18080);

  // Another process asks for the same port.
  AcquireOutcome second = acquire_in_child(d, "tcp:127.0.0.1:18080", {.name = "pbsecond"});
  INFO("second acquirer: " << second.describe());
  CHECK_FALSE(second.ok);
  CHECK(second.code == ErrorCode::kConflict);
  CHECK_MESSAGE(contains(second.message, "pid " + std::to_string(h.child.pid())),
                "the message must name the holder's pid " << h.child.pid());
  CHECK_MESSAGE(contains(second.message, "pbholder"), "the message must name the holder's comm");
  CHECK(contains(second.message, "18080"));

  // A wildcard request overlaps the holder's specific address.
  AcquireOutcome wildcard = acquire_in_child(d, "tcp:0.0.0.0:18080");
  CHECK_MESSAGE(!wildcard.ok, "0.0.0.0:18080 overlaps 127.0.0.1:18080: " << wildcard.describe());

  // The CLI says the same and exits 1, without running the command.
  CommandResult cli =
      run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:18080", "--", "/bin/sh", "-c", "echo RAN"});
  INFO("portbroker exec: " << cli.describe());
  CHECK(cli.status.exited);
  CHECK(cli.status.code == 1);
  CHECK(contains(cli.out, "pid " + std::to_string(h.child.pid())));
  CHECK(contains(cli.out, "pbholder"));
  CHECK_FALSE(contains(cli.out, "RAN"));

  // The listing agrees about who holds it.
  auto leases = d.leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].port == 18080);
  CHECK(leases[0].holder.pid == h.child.pid());
  CHECK(leases[0].holder.comm == "pbholder");
  CHECK(leases[0].mode == portbroker::Mode::kExclusive);
  CHECK(leases[0].id == h.lease.id);

  h.child.close_input();
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(18080));
  // Free again for anyone.
  AcquireOutcome third = acquire_in_child(d, "tcp:127.0.0.1:18080");
  CHECK_MESSAGE(third.ok, third.describe());
  d.check_no_fd_leak();
}

TEST_CASE("a port held outside the broker is reported as such") {
  FdLeakCheck fds;
  Daemon d;
  UniqueFd outside = bind_outside(SOCK_STREAM, 18100);
  REQUIRE(outside.valid());
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18100");
  REQUIRE_FALSE(lease.ok());
  INFO("refusal: " << lease.error().message);
  CHECK(lease.error().code == ErrorCode::kInUseOutside);
  CHECK(contains(lease.error().message, "18100"));
  // It names who holds it: this very test process.
  CHECK(contains(lease.error().message, "by pid " + std::to_string(::getpid()) + " ("));
  CHECK(d.leases().empty());

  // UDP too.
  UniqueFd outside_udp = bind_outside(SOCK_DGRAM, 18101);
  REQUIRE(outside_udp.valid());
  auto udp = c.acquire("udp:127.0.0.1:18101");
  REQUIRE_FALSE(udp.ok());
  CHECK(udp.error().code == ErrorCode::kInUseOutside);

  // Once the outsider lets go, the broker leases it.
  outside.reset();
  auto again = c.acquire("tcp:127.0.0.1:18100");
  CHECK_MESSAGE(again.ok(), (again.ok() ? "" : again.error().message));
  // ~Daemon checks for leaked fds once the clients above are gone.
}

TEST_CASE("port 0 gives distinct, really bound ports to many concurrent clients") {
  FdLeakCheck fds;
  constexpr int kLow = 21000, kHigh = 21099, kClients = 50;
  Daemon d({.args = {"--pool", std::to_string(kLow) + "-" + std::to_string(kHigh)}});
  std::vector<Child> children;
  for (int i = 0; i < kClients; ++i) {
    children.push_back(start_holder(d, "tcp:127.0.0.1:0", {}, /*wait_for_go=*/true));
  }
  // Every child is connected before any asks, so the acquires really overlap.
  for (auto& c : children) REQUIRE_MESSAGE(c.read_line() == "connected", c.output());
  for (auto& c : children) c.send_line("go");
  std::set<uint16_t> ports;
  for (auto& c : children) {
    AcquireOutcome o = read_outcome(c);
    REQUIRE_MESSAGE(o.ok, "child " << c.pid() << ": " << o.describe());
    CHECK(o.port >= kLow);
    CHECK(o.port <= kHigh);
    CHECK_MESSAGE(o.bound_port == o.port, o.describe());
    CHECK_MESSAGE(ports.insert(o.port).second, "port " << o.port << " granted twice");
  }
  CHECK(ports.size() == kClients);
  // Really listening: the kernel completes a connection to each.
  for (uint16_t port : ports) {
    UniqueFd conn = connect_tcp(port);
    CHECK_MESSAGE(conn.valid(), "cannot connect to granted port " << port);
  }
  CHECK(d.leases().size() == kClients);
  for (auto& c : children) c.close_input();
  for (auto& c : children) CHECK(c.wait().ok());
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
  d.check_no_fd_leak();
}

TEST_CASE("the pool skips ports held outside and says when it is exhausted") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "21500-21502"}});
  UniqueFd outside = bind_outside(SOCK_STREAM, 21500);
  REQUIRE(outside.valid());
  portbroker::Client c = d.connect();
  auto a = c.acquire("tcp:127.0.0.1:0");
  auto b = c.acquire("tcp:127.0.0.1:0");
  REQUIRE_MESSAGE(a.ok(), a.error().message);
  REQUIRE_MESSAGE(b.ok(), b.error().message);
  CHECK(std::set<uint16_t>{a->port(), b->port()} == std::set<uint16_t>{21501, 21502});
  auto none = c.acquire("tcp:127.0.0.1:0");
  REQUIRE_FALSE(none.ok());
  INFO("third: " << none.error().message);
  CHECK(none.error().code == ErrorCode::kNoFreePort);
  // Releasing one makes it available again.
  uint16_t freed = a->port();
  REQUIRE(a->release().ok());
  auto again = c.acquire("tcp:127.0.0.1:0");
  REQUIRE_MESSAGE(again.ok(), again.error().message);
  CHECK(again->port() == freed);
  // ~Daemon checks for leaked fds once the clients above are gone.
}

TEST_CASE("a SIGKILLed holder frees its port at once") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18080");
  REQUIRE(has_lease_on(d.leases(), 18080));
  h.child.kill(SIGKILL);
  ExitStatus st = h.child.wait();
  CHECK(st.signal == SIGKILL);
  // The kernel has closed the holder's connection; the daemon ends the lease when it sees that.
  CHECK_MESSAGE(d.wait_port_unleased(18080), "the lease outlived its SIGKILLed holder");
  AcquireOutcome next = acquire_in_child(d, "tcp:127.0.0.1:18080");
  CHECK_MESSAGE(next.ok, next.describe());
  d.check_no_fd_leak();
}

TEST_CASE("a non-root client is refused a privileged port and granted a high one") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can become uid 65534");
    return;
  }
  FdLeakCheck fds;
  Daemon d;
  SpawnOptions nobody{.uid = 65534};
  AcquireOutcome low = acquire_in_child(d, "tcp:127.0.0.1:80", nobody);
  INFO("uid 65534 asking for port 80: " << low.describe());
  CHECK_FALSE(low.ok);
  CHECK(low.code == ErrorCode::kPermissionDenied);
  CHECK(contains(low.message, "80"));
  CHECK_MESSAGE(contains(low.message, "1024"), "the refusal must say why (ports below 1024)");
  // Any hint about where to grant it names the config file this daemon was started with.
  CHECK_MESSAGE(
      !contains(low.message, "/etc/portbroker"),
      "the hint names the default config path, not --config " << d.dir() << "/portbroker.toml");

  AcquireOutcome high = acquire_in_child(d, "tcp:127.0.0.1:8080", nobody);
  CHECK_MESSAGE(high.ok, "uid 65534 asking for port 8080: " << high.describe());
  CHECK(high.bound_port == 8080);

  // Root may have port 80.
  AcquireOutcome root = acquire_in_child(d, "tcp:127.0.0.1:80");
  CHECK_MESSAGE(root.ok, "root asking for port 80: " << root.describe());

  // The CLI refuses the same way, with exit code 1.
  CommandResult cli =
      run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:80", "--", "/bin/true"}, {.uid = 65534});
  INFO("portbroker exec as uid 65534: " << cli.describe());
  CHECK(cli.status.code == 1);
  CHECK(contains(cli.out, "80"));

  // The lease list shows the holder's uid.
  Holder h = spawn_holder(d, "tcp:127.0.0.1:8081", nobody);
  auto leases = d.leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].holder.uid == 65534);
  CHECK(leases[0].holder.pid == h.child.pid());
  h.child.close_input();
  CHECK(h.child.wait().ok());
  d.check_no_fd_leak();
}

TEST_CASE("release by id frees the port; an unknown id is not found") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18085");
  REQUIRE_MESSAGE(lease.ok(), lease.error().message);
  uint64_t id = lease->id();
  CHECK_FALSE(port_free(18085));
  UniqueFd fd(lease->release_fd());
  auto r = c.release(id);
  CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
  fd.reset();
  CHECK(d.wait_port_unleased(18085));
  CHECK(port_free(18085));

  auto again = c.release(id);
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == ErrorCode::kNotFound);
  auto unknown = c.release(987654321);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == ErrorCode::kNotFound);
  INFO("unknown id: " << unknown.error().message);
  CHECK(contains(unknown.error().message, "987654321"));

  // The CLI: unknown id is exit 1; root may revoke another process's lease.
  CommandResult cli_unknown = run_cli(d, {"release", "987654321"});
  CHECK_MESSAGE(cli_unknown.status.code == 1, cli_unknown.describe());
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18086");
  CommandResult cli_release = run_cli(d, {"release", std::to_string(h.lease.id)});
  CHECK_MESSAGE(cli_release.status.ok(), cli_release.describe());
  CHECK(d.wait_port_unleased(18086));
  h.child.close_input();
  CHECK(h.child.wait().ok());
  // ~Daemon checks for leaked fds once the clients above are gone.
}

TEST_CASE("a multi-socket acquire is all or nothing") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18091");
  portbroker::Client c = d.connect();
  auto first = portbroker::parse_socket_spec("tcp:127.0.0.1:18090");
  auto taken = portbroker::parse_socket_spec("tcp:127.0.0.1:18091");
  auto nowhere = portbroker::parse_socket_spec("tcp:192.0.2.1:18092");  // not a local address
  REQUIRE(first.ok());
  REQUIRE(taken.ok());
  REQUIRE(nowhere.ok());

  auto both = c.acquire_all({first.value(), taken.value()});
  REQUIRE_FALSE(both.ok());
  INFO("conflicting batch: " << both.error().message);
  CHECK(both.error().code == ErrorCode::kConflict);
  CHECK_FALSE(has_lease_on(d.leases(), 18090));
  CHECK_MESSAGE(port_free(18090), "the first socket of a refused batch stayed bound");

  auto bad = c.acquire_all({first.value(), nowhere.value()});
  REQUIRE_FALSE(bad.ok());
  INFO("batch with a non-local address: " << bad.error().message);
  CHECK(bad.error().code == ErrorCode::kAddressUnavailable);
  CHECK_FALSE(has_lease_on(d.leases(), 18090));
  CHECK(port_free(18090));

  // The same batch without the conflict is granted whole.
  auto second = portbroker::parse_socket_spec("tcp:127.0.0.1:18093");
  auto ok = c.acquire_all({first.value(), second.value()});
  REQUIRE_MESSAGE(ok.ok(), ok.error().message);
  REQUIRE(ok->size() == 2);
  CHECK((*ok)[0].port() == 18090);
  CHECK((*ok)[1].port() == 18093);
  h.child.close_input();
  CHECK(h.child.wait().ok());
  // ~Daemon checks for leaked fds once the clients above are gone.
}

TEST_CASE("UDP, IPv6 and socket options") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "22000-22099"}});
  portbroker::Client c = d.connect();

  auto udp = c.acquire("udp:127.0.0.1:0");
  REQUIRE_MESSAGE(udp.ok(), udp.error().message);
  CHECK(socket_type(udp->fd()) == SOCK_DGRAM);
  CHECK(local_port(udp->fd()) == udp->port());
  {
    UniqueFd sender(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(udp->port());
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::sendto(sender.get(), "ping", 4, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to)) ==
            4);
    char buf[16];
    ssize_t n = ::recv(udp->fd(), buf, sizeof(buf), 0);
    CHECK(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0) == "ping");
  }

  if (port_free(0, "::1")) {
    auto v6 = c.acquire("tcp:[::1]:18087");
    REQUIRE_MESSAGE(v6.ok(), v6.error().message);
    UniqueFd conn = connect_tcp(18087, "::1");
    CHECK(conn.valid());
    auto leases = d.leases();
    REQUIRE(leases.size() == 2);
  } else {
    MESSAGE("IPv6 loopback unavailable here; skipped the IPv6 part");
  }

  auto opts = c.acquire("tcp:127.0.0.1:0,keepalive,rcvbuf=65536,backlog=7");
  REQUIRE_MESSAGE(opts.ok(), opts.error().message);
  int keepalive = 0, rcvbuf = 0;
  socklen_t len = sizeof(int);
  REQUIRE(::getsockopt(opts->fd(), SOL_SOCKET, SO_KEEPALIVE, &keepalive, &len) == 0);
  len = sizeof(int);
  REQUIRE(::getsockopt(opts->fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len) == 0);
  CHECK(keepalive == 1);
  CHECK(rcvbuf >= 65536);
  CHECK(is_listening(opts->fd()));

  auto bad_device = c.acquire("tcp:127.0.0.1:0,device=nosuchdev0");
  REQUIRE_FALSE(bad_device.ok());
  INFO("bind to a missing device: " << bad_device.error().message);
  CHECK((bad_device.error().code == ErrorCode::kAddressUnavailable ||
         bad_device.error().code == ErrorCode::kInvalidOption));
  // ~Daemon checks for leaked fds once the clients above are gone.
}

TEST_CASE("churn: many clients acquiring and releasing from a small pool") {
  FdLeakCheck fds;
  constexpr int kClients = 16, kRounds = 100;
  Daemon d({.args = {"--pool", "21700-21709"}});
  std::vector<Child> children;
  for (int i = 0; i < kClients; ++i) {
    children.push_back(Child::run([path = d.socket_path()](ChildIo& io) {
      auto c = portbroker::Client::connect(path);
      if (!c) {
        io.send_line("connect failed: " + c.error().message);
        return 1;
      }
      int granted = 0, exhausted = 0;
      for (int r = 0; r < kRounds; ++r) {
        auto lease = c->acquire("tcp:127.0.0.1:0");
        if (!lease) {
          if (lease.error().code == ErrorCode::kNoFreePort) {
            ++exhausted;
            continue;
          }
          io.send_line("unexpected refusal: " + lease.error().message);
          return 1;
        }
        ++granted;
        uint16_t port = lease->port();
        if (port < 21700 || port > 21709 || local_port(lease->fd()) != port) {
          io.send_line("bad grant: port " + std::to_string(port));
          return 1;
        }
        if (port_free(port)) {
          io.send_line("granted port " + std::to_string(port) + " is not actually held");
          return 1;
        }
        auto released = lease->release();
        if (!released) {
          io.send_line("release failed: " + released.error().message);
          return 1;
        }
      }
      io.send_line("done " + std::to_string(granted) + " " + std::to_string(exhausted));
      return 0;
    }));
  }
  int granted = 0;
  for (auto& c : children) {
    auto line = c.read_line();
    REQUIRE_MESSAGE(line.has_value(), c.output());
    CHECK_MESSAGE(line->rfind("done ", 0) == 0, *line);
    granted += std::atoi(line->c_str() + 5);
    CHECK(c.wait().ok());
  }
  CHECK(granted > 0);
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
}

TEST_CASE("a lease's holder is the live process: a server that forks and exits hands it on") {
  FdLeakCheck fds;
  Daemon d({.args = {"--request-timeout", "0.2"}});  // a sweep every 50 ms
  // sh takes the session over from `portbroker exec` (same pid), forks sleep, and exits: the
  // session's connection lives on in sleep only.
  CommandResult started = run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:18730", "--", "sh", "-c",
                                      "sleep 30 >/dev/null 2>&1 </dev/null & exit 0"});
  REQUIRE_MESSAGE(started.status.ok(), started.describe());
  pid_t child = 0;
  REQUIRE(d.wait_until([&](portbroker::Client& c) {
    auto l = c.list();
    if (!l.ok() || l->size() != 1) return false;
    if (l->front().holder.comm != "sleep") return false;
    child = l->front().holder.pid;
    return true;
  }));
  CHECK(read_file("/proc/" + std::to_string(child) + "/comm") == "sleep\n");
  // A conflict names it too.
  portbroker::Client c = d.connect();
  auto refused = c.acquire("tcp:127.0.0.1:18730");
  REQUIRE_FALSE(refused.ok());
  CHECK(contains(refused.error().message, "pid " + std::to_string(child) + " (sleep"));
  // And the lease ends with it.
  REQUIRE(::kill(child, SIGKILL) == 0);
  CHECK(d.wait_until([&](portbroker::Client& cl) {
    auto l = cl.list();
    return l.ok() && l->empty();
  }));
}
