// The C ABI against the real daemon: tests/capi/capi_check.c exercises every function (failure
// paths included) and exits non-zero on any failed check; this file runs its modes in the private
// network namespace and checks what only another process can see.
#include <doctest/doctest.h>

#include <string>

#include "harness.h"

using namespace pbtest;

TEST_CASE("the C ABI: every function, with its failure paths") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "24000-24009"}});
  CommandResult r = run_capi_check(d, {"main"});
  CHECK_MESSAGE(r.status.ok(), r.describe());
  CHECK_MESSAGE(contains(r.out, ", 0 failed"), r.out);
  // Closing the clients ended their sessions: only the linger= lease is left, lingering.
  REQUIRE(d.wait_until([](portbroker::Client& c) {
    auto leases = c.list();
    return leases && leases->size() == 1;
  }));
  auto leases = d.leases();
  CHECK(leases[0].port == 18701);
  CHECK(leases[0].state == "lingering");

  if (can_switch_uid()) {
    CommandResult plain = run_capi_check(d, {"nonroot"}, {.uid = 65534});
    CHECK_MESSAGE(plain.status.ok(), plain.describe());
  }
  // Root ends the lingering lease (a revoke), so the daemon is back to its idle fds.
  {
    portbroker::Client admin = d.connect();
    auto revoked = admin.release(leases[0].id);
    CHECK_MESSAGE(revoked.ok(), revoked.error().message);
  }
  CHECK(d.wait_port_unleased(18701));
  d.check_no_fd_leak();
}

TEST_CASE("the C ABI: a linger token lets another uid take the lease back") {
  if (!can_switch_uid()) {
    MESSAGE("not root: no second uid to test with");
    return;
  }
  FdLeakCheck fds;
  Daemon d;
  CommandResult held = run_capi_check(d, {"linger", "18720"});
  REQUIRE_MESSAGE(held.status.ok(), held.describe());
  REQUIRE(held.out.rfind("token ", 0) == 0);
  std::string token = held.out.substr(6, held.out.find('\n') - 6);
  REQUIRE(d.wait_until([](portbroker::Client& c) {
    auto leases = c.list();
    return leases && leases->size() == 1 && (*leases)[0].state == "lingering";
  }));

  // Another uid: refused without the token (exit 3 = refused cleanly), granted with it.
  CommandResult without = run_capi_check(d, {"reclaim", "18720"}, {.uid = 65534});
  CHECK_MESSAGE(without.status.code == 3, without.describe());
  CommandResult with = run_capi_check(d, {"reclaim", "18720", token}, {.uid = 65534});
  CHECK_MESSAGE(with.status.ok(), with.describe());
  CHECK(contains(with.out, "reclaimed 18720"));
  CHECK(d.wait_port_unleased(18720));
  d.check_no_fd_leak();
}

TEST_CASE("the C ABI: upgrade keeps the client's session; shutdown stops the daemon") {
  FdLeakCheck fds;
  Daemon d;
  CommandResult up = run_capi_check(d, {"upgrade"});
  CHECK_MESSAGE(up.status.ok(), up.describe());
  REQUIRE_MESSAGE(d.wait_ready_again(), "no READY=1 after the upgrade");
  CommandResult down = run_capi_check(d, {"shutdown"});
  CHECK_MESSAGE(down.status.ok(), down.describe());
  d.wait_stopped();
}
