// Lingering leases: a holder that dies without releasing (a crash, a restart) leaves its socket
// with the daemon for `linger` seconds, still queueing connections, for its successor.
#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>

#include <chrono>
#include <string>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

// The sweep that ends lingering leases runs every quarter of --request-timeout (50 ms here).
DaemonOptions fast_sweep() { return DaemonOptions{.args = {"--request-timeout", "0.2"}}; }

const portbroker::LeaseInfo* lease_on(const std::vector<portbroker::LeaseInfo>& leases,
                                      uint16_t port) {
  for (const auto& l : leases) {
    if (l.port == port) return &l;
  }
  return nullptr;
}

// Waits, up to a generous deadline, for the daemon to end every lease on `port`: expiry is a
// matter of time passing, so this polls (a short poll() between list requests).
bool wait_lease_gone(Daemon& d, uint16_t port) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    auto leases = d.leases();
    if (lease_on(leases, port) == nullptr) return true;
    ::poll(nullptr, 0, 20);
  }
  return false;
}

}  // namespace

TEST_CASE("a lingering lease keeps its port and queued connections for the restarted holder") {
  FdLeakCheck fds;
  Daemon d(fast_sweep());
  Holder first = spawn_holder(d, "web=tcp:127.0.0.1:18300,linger=60");
  const uint64_t id = first.lease.id;
  first.child.kill(SIGKILL);
  CHECK(first.child.wait().signal == SIGKILL);

  // The daemon notices the dead session and keeps the lease, lingering.
  REQUIRE(d.wait_until([&](portbroker::Client& c) {
    auto l = c.list();
    const auto* lease = l.ok() ? lease_on(*l, 18300) : nullptr;
    return lease != nullptr && lease->state == "lingering";
  }));
  const auto leases = d.leases();
  const auto* lingering = lease_on(leases, 18300);
  REQUIRE(lingering != nullptr);
  CHECK(lingering->id == id);
  CHECK(lingering->linger_s == 60);
  CHECK(lingering->linger_until_ms > lingering->created_at_ms);
  CHECK(lingering->token.empty());  // the token is for the holder's eyes only
  CHECK_FALSE(port_free(18300));

  // A client arriving in the gap waits in the backlog instead of being refused.
  UniqueFd early = connect_tcp(18300);
  REQUIRE(early.valid());
  REQUIRE(send_all(early.get(), "hello\n"));

  if (can_switch_uid()) {
    AcquireOutcome other = acquire_in_child(d, "tcp:127.0.0.1:18300,linger=60", {.uid = 65534});
    INFO("uid 65534: " << other.describe());
    CHECK_FALSE(other.ok);
    CHECK(other.code == ErrorCode::kConflict);
    CHECK(contains(other.message, "lingering until"));
  }

  // The successor (same uid, same endpoint) takes the very socket back.
  Holder second = spawn_holder(d, "web=tcp:127.0.0.1:18300,linger=60");
  CHECK(second.lease.id == id);
  second.child.send_line("accept back");
  CHECK(recv_line(early.get()) == "back");
  CHECK(second.child.read_line() == "accepted");
  const auto after = d.leases();
  const auto* taken = lease_on(after, 18300);
  REQUIRE(taken != nullptr);
  CHECK(taken->state == "active");
  CHECK(taken->holder.pid == second.child.pid());
  early.reset();
  second.child.close_input();
  CHECK(second.child.wait().ok());
}

TEST_CASE("an unclaimed lingering lease ends when its time is up") {
  FdLeakCheck fds;
  Daemon d(fast_sweep());
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18301,linger=1");
  h.child.kill(SIGKILL);
  h.child.wait();
  CHECK_MESSAGE(wait_lease_gone(d, 18301), "the lingering lease never ended");
  CHECK(port_free(18301));
  d.check_no_fd_leak();
}

TEST_CASE("a release, or a lease without linger, does not linger") {
  FdLeakCheck fds;
  Daemon d(fast_sweep());
  {
    portbroker::Client c = d.connect();
    auto lease = c.acquire("tcp:127.0.0.1:18302,linger=60");
    REQUIRE_MESSAGE(lease.ok(), lease.error().message);
    CHECK(lease->info().token.size() == 32);
    REQUIRE(lease->release().ok());
    CHECK(lease_on(d.leases(), 18302) == nullptr);
  }
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18303");
  h.child.kill(SIGKILL);
  h.child.wait();
  CHECK(d.wait_port_unleased(18303));
}

TEST_CASE("another uid takes a lingering lease back only with its token") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d(fast_sweep());
  std::string token;
  {
    portbroker::Client c = d.connect();
    auto lease = c.acquire("tcp:127.0.0.1:18304,linger=60");
    REQUIRE_MESSAGE(lease.ok(), lease.error().message);
    token = lease->info().token;
    // Let go of the socket without releasing; the session ends with the client.
    UniqueFd kept(lease->release_fd());
  }
  REQUIRE(d.wait_until([&](portbroker::Client& c) {
    auto l = c.list();
    const auto* lease = l.ok() ? lease_on(*l, 18304) : nullptr;
    return lease != nullptr && lease->state == "lingering";
  }));
  AcquireOutcome wrong = acquire_in_child(
      d, "tcp:127.0.0.1:18304,linger=60,token=00000000000000000000000000000000", {.uid = 65534});
  CHECK_FALSE(wrong.ok);
  CHECK(wrong.code == ErrorCode::kConflict);
  AcquireOutcome right =
      acquire_in_child(d, "tcp:127.0.0.1:18304,linger=60,token=" + token, {.uid = 65534});
  CHECK_MESSAGE(right.ok, right.describe());
  CHECK(right.id != 0);
  // That child released its lease as it exited: an explicit release ends it, linger or not.
  CHECK(d.wait_port_unleased(18304));
}

TEST_CASE("linger and token are validated") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  for (const char* bad : {"tcp:127.0.0.1:18305,linger=3601", "tcp:127.0.0.1:18305,linger=-1",
                          "tcp:127.0.0.1:18305,token=xyz"}) {
    auto lease = c.acquire(bad);
    CHECK_FALSE_MESSAGE(lease.ok(), bad);
  }
}
