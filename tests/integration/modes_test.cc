// Sharing modes: `shared` (one socket, every member accepts from its queue) and `reuseport`
// (an SO_REUSEPORT group the kernel balances) both deliver connections to two processes.
#include <doctest/doctest.h>

#include <map>
#include <set>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

// One connection: says hello, returns the name of the process that answered (or "" if none did
// within `timeout`).
std::string who_answers(uint16_t port, std::chrono::milliseconds timeout = kDefaultTimeout) {
  UniqueFd conn = connect_tcp(port);
  if (!conn.valid()) return "(connect failed)";
  if (!send_all(conn.get(), "who?\n")) return "(send failed)";
  return recv_line(conn.get(), timeout).value_or("");
}

int lease_count_on(Daemon& d, uint16_t port) {
  int n = 0;
  for (const auto& l : d.leases()) n += l.port == port;
  return n;
}

}  // namespace

TEST_CASE("shared: two processes accept from one socket") {
  FdLeakCheck fds;
  Daemon d;
  const std::string spec = "tcp:127.0.0.1:18200,shared";
  Holder a = spawn_holder(d, spec, {.name = "pbshareA"});
  Holder b = spawn_holder(d, spec, {.name = "pbshareB"});
  CHECK(a.lease.bound_port == 18200);
  CHECK(b.lease.bound_port == 18200);
  CHECK(lease_count_on(d, 18200) >= 1);
  for (const auto& l : d.leases()) {
    if (l.port == 18200) CHECK(l.mode == portbroker::Mode::kShared);
  }

  // Each member accepts exactly one connection and then stops: whichever takes the first, the
  // second can only be accepted by the other, so both must answer.
  a.child.send_line("accept A");
  b.child.send_line("accept B");
  std::string first = who_answers(18200);
  std::string second = who_answers(18200);
  const std::set<std::string> answered{first, second}, both{"A", "B"};
  CHECK_MESSAGE(answered == both, "answers: '" << first << "', '" << second << "'");
  CHECK(a.child.read_line() == "accepted");
  CHECK(b.child.read_line() == "accepted");

  // Other modes may not join a shared lease.
  AcquireOutcome excl = acquire_in_child(d, "tcp:127.0.0.1:18200");
  CHECK_MESSAGE(excl.code == ErrorCode::kConflict, excl.describe());
  AcquireOutcome rp = acquire_in_child(d, "tcp:127.0.0.1:18200,reuseport");
  CHECK_MESSAGE(rp.code == ErrorCode::kConflict, rp.describe());

  // A member leaving does not disturb the other; a newcomer may still join.
  a.child.close_input();
  CHECK(a.child.wait().ok());
  b.child.send_line("accept B");
  CHECK(who_answers(18200) == "B");
  CHECK(b.child.read_line() == "accepted");
  Holder c = spawn_holder(d, spec, {.name = "pbshareC"});

  b.child.close_input();
  c.child.close_input();
  CHECK(b.child.wait().ok());
  CHECK(c.child.wait().ok());
  CHECK(d.wait_port_unleased(18200));
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(18200); }));
  d.check_no_fd_leak();
}

TEST_CASE("reuseport: the kernel balances connections over two processes") {
  FdLeakCheck fds;
  Daemon d;
  const std::string spec = "tcp:127.0.0.1:18201,reuseport";
  Holder a = spawn_holder(d, spec, {.name = "pbreuseA"});
  Holder b = spawn_holder(d, spec, {.name = "pbreuseB"});
  CHECK(a.lease.bound_port == 18201);
  CHECK(b.lease.bound_port == 18201);
  for (const auto& l : d.leases()) {
    if (l.port == 18201) CHECK(l.mode == portbroker::Mode::kReuseport);
  }
  a.child.send_line("serve A");
  b.child.send_line("serve B");

  // The kernel picks a group member by the connection's 4-tuple; every new connection has a
  // fresh source port, so with 64 of them both members get some (all on one: p = 2^-63).
  std::map<std::string, int> answered;
  for (int i = 0; i < 64; ++i) {
    std::string who = who_answers(18201, std::chrono::seconds(5));
    REQUIRE_MESSAGE(!who.empty(), "connection " << i
                                                << " was never answered: the kernel queued it "
                                                   "on a group socket nobody accepts from");
    ++answered[who];
  }
  CHECK_MESSAGE(answered["A"] >= 1, "A answered " << answered["A"] << ", B " << answered["B"]);
  CHECK_MESSAGE(answered["B"] >= 1, "A answered " << answered["A"] << ", B " << answered["B"]);
  CHECK(answered["A"] + answered["B"] == 64);

  // Other modes may not join a reuseport group.
  AcquireOutcome excl = acquire_in_child(d, "tcp:127.0.0.1:18201");
  CHECK_MESSAGE(excl.code == ErrorCode::kConflict, excl.describe());
  AcquireOutcome shared = acquire_in_child(d, "tcp:127.0.0.1:18201,shared");
  CHECK_MESSAGE(shared.code == ErrorCode::kConflict, shared.describe());

  // When A leaves, no connection may land in a queue nobody serves: all go to B.
  a.child.send_line("exit");
  CHECK(a.child.wait().ok());
  for (int i = 0; i < 16; ++i) {
    std::string who = who_answers(18201, std::chrono::seconds(5));
    CHECK_MESSAGE(who == "B", "connection " << i << " after A left was answered by '" << who
                                            << "' (empty: by nobody)");
    if (who != "B") break;
  }
  Holder c = spawn_holder(d, spec, {.name = "pbreuseC"});
  b.child.send_line("exit");
  c.child.send_line("exit");
  CHECK(b.child.wait().ok());
  CHECK(c.child.wait().ok());
  CHECK(d.wait_port_unleased(18201));
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(18201); }));
  d.check_no_fd_leak();
}

TEST_CASE("an exclusive lease admits no sharer") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18202");
  for (const char* spec : {"tcp:127.0.0.1:18202,shared", "tcp:127.0.0.1:18202,reuseport"}) {
    AcquireOutcome o = acquire_in_child(d, spec);
    CHECK_MESSAGE(o.code == ErrorCode::kConflict, spec << ": " << o.describe());
    CHECK_MESSAGE(o.message.find(std::to_string(h.child.pid())) != std::string::npos,
                  spec << ": the refusal must name the holder: " << o.message);
  }
  h.child.close_input();
  CHECK(h.child.wait().ok());
  d.check_no_fd_leak();
}
