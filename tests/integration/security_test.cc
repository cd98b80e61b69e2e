// What one local user may do to another's leases: nothing the owner did not allow. Also the
// cases where the kernel and the broker must agree on what overlaps.
#include <doctest/doctest.h>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

// Runs `fn(client)` as uid 65534 in a child; returns the line it reports.
std::string as_nobody(const Daemon& d, std::function<std::string(portbroker::Client&)> fn) {
  Child c = Child::run(
      [path = d.socket_path(), fn](ChildIo& io) {
        auto client = portbroker::Client::connect(path);
        if (!client) {
          io.send_line("connect failed: " + client.error().message);
          return 1;
        }
        io.send_line(fn(client.value()));
        return 0;
      },
      {.uid = 65534, .name = "pbnobody"});
  auto line = c.read_line();
  CHECK_MESSAGE(c.wait().ok(), c.output());
  return line.value_or("(no report) " + c.output());
}

std::string describe(const portbroker::Result<void>& r) {
  return r.ok()
             ? "ok"
             : std::string(portbroker::error_code_name(r.error().code)) + ": " + r.error().message;
}

}  // namespace

TEST_CASE("another uid may not release or revoke a lease") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no child can become another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18800");
  uint64_t id = h.lease.id;
  std::string got = as_nobody(d, [id](portbroker::Client& c) { return describe(c.release(id)); });
  CHECK_MESSAGE(contains(got, "permission-denied"), "uid 65534 releasing root's lease: " << got);
  CommandResult cli = run_cli(d, {"release", std::to_string(id)}, {.uid = 65534});
  CHECK_MESSAGE(cli.status.code == 1, cli.describe());
  auto leases = d.leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].id == id);
  h.child.close_input();
  CHECK(h.child.wait().ok());
}

TEST_CASE("root's revoke really takes the port back from a live holder") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18801");
  CommandResult cli = run_cli(d, {"release", std::to_string(h.lease.id)});
  REQUIRE_MESSAGE(cli.status.ok(), cli.describe());
  CHECK(d.wait_port_unleased(18801));
  // The holder still has its fd, but it no longer listens (the daemon shut it down) ...
  h.child.send_line("accept X");
  auto line = h.child.read_line();
  CHECK_MESSAGE((line && contains(*line, "accept failed")),
                "the revoked holder could still accept: " << line.value_or("(nothing)"));
  // ... and someone else can have the port.
  AcquireOutcome next = acquire_in_child(d, "tcp:127.0.0.1:18801");
  CHECK_MESSAGE(next.ok, next.describe());
  h.child.close_input();
  h.child.wait();
}

TEST_CASE("another uid may not join a shared or reuseport lease") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no child can become another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d;
  // Joining would let uid 65534 take a share of root's connections; the kernel refuses
  // SO_REUSEPORT groups across uids for the same reason.
  for (const char* spec : {"tcp:127.0.0.1:18802,shared", "tcp:127.0.0.1:18803,reuseport"}) {
    CAPTURE(spec);
    Holder h = spawn_holder(d, spec);
    AcquireOutcome o = acquire_in_child(d, spec, {.uid = 65534});
    CHECK_MESSAGE(!o.ok, "uid 65534 joined root's lease: " << o.describe());
    CHECK_MESSAGE((o.code == ErrorCode::kConflict || o.code == ErrorCode::kPermissionDenied),
                  o.describe());
    h.child.close_input();
    CHECK(h.child.wait().ok());
  }
}

TEST_CASE("overlapping endpoints are conflicts that name the holder") {
  FdLeakCheck fds;
  Daemon d;
  struct Case {
    const char* held;
    const char* asked;
  };
  for (Case c :
       {Case{"tcp:127.0.0.1:18810", "tcp:0.0.0.0:18810"},
        Case{"tcp:0.0.0.0:18811", "tcp:127.0.0.1:18811"},
        Case{"tcp:[::]:18812", "tcp:0.0.0.0:18812"}, Case{"tcp:0.0.0.0:18813", "tcp:[::]:18813"},
        Case{"udp:127.0.0.1:18814", "udp:0.0.0.0:18814"}}) {
    CAPTURE(c.held);
    CAPTURE(c.asked);
    Holder h = spawn_holder(d, c.held);
    AcquireOutcome o = acquire_in_child(d, c.asked);
    CHECK_FALSE(o.ok);
    CHECK_MESSAGE(o.code == ErrorCode::kConflict, "held by the broker, yet: " << o.describe());
    CHECK_MESSAGE(contains(o.message, "pid " + std::to_string(h.child.pid())), o.describe());
    h.child.close_input();
    CHECK(h.child.wait().ok());
  }
  // The same port twice in one request: refused whole.
  portbroker::Client client = d.connect();
  auto a = portbroker::parse_socket_spec("tcp:127.0.0.1:18815");
  REQUIRE(a.ok());
  auto twice = client.acquire_all({a.value(), a.value()});
  CHECK_FALSE(twice.ok());
  if (!twice.ok()) {
    CHECK_MESSAGE(twice.error().code != ErrorCode::kInUseOutside,
                  "a request that conflicts with itself: " << twice.error().message);
  }
  CHECK(d.leases().empty());
}

TEST_CASE("names that would corrupt LISTEN_FDNAMES or the log are refused") {
  FdLeakCheck fds;
  Daemon d;
  for (std::string name : {std::string("a:b"), std::string("line\nbreak"), std::string(300, 'n')}) {
    CAPTURE(name.size());
    RawConn c(d.socket_path());
    capnp::MallocMessageBuilder msg;
    build_acquire(msg, {"tcp:127.0.0.1:18820"});
    msg.getRoot<portbroker::wire::Request>().getAcquire()[0].setName(name);
    REQUIRE(c.send_message(msg) == 0);
    REQUIRE(c.recv() == RawConn::Got::kReply);
    CHECK_MESSAGE(c.reply().which() == portbroker::wire::Reply::ERROR,
                  "name '" << name << "': " << c.describe_reply());
  }
  CHECK(d.wait_port_unleased(18820));
}
