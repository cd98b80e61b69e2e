// Diagnostics end to end: `portbroker who PORT` names a process outside the broker holding a
// port (pid and command) and the lease and holder of a brokered one; `portbroker check` reports
// a reserved port held outside the broker (exit 1, naming the pid) and says "no problems" (exit
// 0) when there are none.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "harness.h"

using namespace pbtest;

namespace {

// A JSON document, judged loosely: one object or array, brackets balanced outside strings.
bool looks_like_json(const std::string& text) {
  size_t begin = text.find_first_not_of(" \n");
  if (begin == std::string::npos || (text[begin] != '{' && text[begin] != '[')) return false;
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = begin; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') {
      if (--depth < 0) return false;
      if (depth == 0) return text.find_first_not_of(" \n", i + 1) == std::string::npos;
    }
  }
  return false;
}

std::string own_comm() {
  std::string comm = read_file("/proc/self/comm");
  while (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

}  // namespace

TEST_CASE("who names the process outside the broker that holds a port") {
  FdLeakCheck fds;
  Daemon d;
  Child tcp = start_outside(18500, SOCK_STREAM, {.name = "pboutside"});
  const std::string pid = std::to_string(tcp.pid());

  CommandResult r = run_cli(d, {"who", "18500"});
  INFO("who 18500: " << r.describe());
  CHECK(r.status.ok());
  CHECK(contains(r.out, "outside the broker"));
  CHECK(contains(r.out, "127.0.0.1:18500"));
  CHECK(contains(r.out, "pid " + pid + " (pboutside, uid 0)"));
  CHECK_FALSE(contains(r.out, "leased:"));

  CommandResult j = run_cli(d, {"who", "18500", "--json"});
  INFO("who 18500 --json: " << j.describe());
  CHECK(j.status.ok());
  CHECK(looks_like_json(j.out));
  CHECK(contains(j.out, R"("pid": )" + pid));
  CHECK(contains(j.out, R"("comm": "pboutside")"));
  CHECK(contains(j.out, R"("port": 18500)"));
  CHECK(contains(j.out, R"("leases": [])"));

  if (can_switch_uid()) {
    // who is for everyone, but like ss(8) it names only the caller's own processes: of root's
    // listener uid 65534 learns that uid 0 holds the port, not which process.
    CommandResult nobody = run_cli(d, {"who", "18500"}, {.uid = 65534});
    INFO("who 18500 as uid 65534: " << nobody.describe());
    CHECK(nobody.status.ok());
    CHECK(contains(nobody.out, "LISTEN 127.0.0.1:18500 by a process of uid 0"));
    CHECK_FALSE(contains(nobody.out, "pid " + pid));
  }

  // UDP is its own port space.
  Child udp = start_outside(18501, SOCK_DGRAM, {.name = "pbudp"});
  CommandResult u = run_cli(d, {"who", "18501", "--udp"});
  INFO("who 18501 --udp: " << u.describe());
  CHECK(u.status.ok());
  CHECK(contains(u.out, "udp port 18501"));
  CHECK(contains(u.out, "pid " + std::to_string(udp.pid()) + " (pbudp"));
  CommandResult t = run_cli(d, {"who", "18501"});
  INFO("who 18501 (tcp): " << t.describe());
  CHECK(t.status.ok());
  CHECK(contains(t.out, "nobody holds tcp port 18501"));

  // The test process itself, as any program would.
  UniqueFd mine = bind_outside(SOCK_STREAM, 18502);
  REQUIRE(mine.valid());
  CommandResult self = run_cli(d, {"who", "18502"});
  INFO("who 18502: " << self.describe());
  CHECK(contains(self.out, "pid " + std::to_string(::getpid()) + " (" + own_comm()));

  CommandResult bad = run_cli(d, {"who", "70000"});
  CHECK(bad.status.code == 2);

  tcp.close_input();
  udp.close_input();
  CHECK(tcp.wait().ok());
  CHECK(udp.wait().ok());
  d.check_no_fd_leak();
}

TEST_CASE("who shows a brokered port's lease and holder") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "web=tcp:127.0.0.1:18510");
  const std::string pid = std::to_string(h.child.pid());

  CommandResult r = run_cli(d, {"who", "18510"});
  INFO("who 18510: " << r.describe());
  CHECK(r.status.ok());
  CHECK(contains(r.out, "leased: lease " + std::to_string(h.lease.id) + " \"web\" exclusive"));
  CHECK(contains(r.out, "127.0.0.1:18510 by pid " + pid + " (pbholder, uid 0)"));
  // The socket the holder and the daemon share is the broker's, not an outsider's.
  CHECK_FALSE(contains(r.out, "outside the broker"));

  CommandResult j = run_cli(d, {"who", "18510", "--json"});
  INFO("who 18510 --json: " << j.describe());
  CHECK(j.status.ok());
  CHECK(looks_like_json(j.out));
  CHECK(contains(j.out, R"("id": )" + std::to_string(h.lease.id)));
  CHECK(contains(j.out, R"("pid": )" + pid));
  CHECK(contains(j.out, R"("comm": "pbholder")"));
  CHECK(contains(j.out, R"("name": "web")"));
  CHECK(contains(j.out, R"("outside": [])"));

  h.child.close_input();
  CHECK(h.child.wait().ok());
  REQUIRE(d.wait_port_unleased(18510));
  CommandResult after = run_cli(d, {"who", "18510"});
  CHECK(contains(after.out, "nobody holds tcp port 18510"));
  d.check_no_fd_leak();
}

TEST_CASE("who reports a port's reservation, pool and ephemeral-range status") {
  FdLeakCheck fds;
  Daemon d({.config_text = R"([[reservation]]
name = "pg"
users = [65534]
ports = 15432
protocol = "tcp"
address = "127.0.0.1"

[[pool]]
name = "dyn"
users = ["*"]
ports = "31000-31099"
)"});
  CommandResult r = run_cli(d, {"who", "15432"});
  INFO("who 15432: " << r.describe());
  CHECK(r.status.ok());
  CHECK(contains(r.out, "nobody holds tcp port 15432"));
  CHECK(contains(r.out, "reserved: pg (tcp:127.0.0.1:15432)"));
  CHECK(contains(r.out, "uid 65534"));
  CHECK(contains(r.out, "ephemeral range: outside"));
  CommandResult udp = run_cli(d, {"who", "15432", "--udp"});
  CHECK_FALSE(contains(udp.out, "reserved:"));

  CommandResult pool = run_cli(d, {"who", "31050", "--json"});
  INFO("who 31050 --json: " << pool.describe());
  CHECK(looks_like_json(pool.out));
  CHECK(contains(pool.out, R"("pools": [)"));
  CHECK(contains(pool.out, R"("dyn")"));
  CHECK(contains(pool.out, R"("guarded": true)"));
}

namespace {

constexpr const char* kReservedPg = R"([[reservation]]
name = "pg"
users = [65534]
ports = 15432
protocol = "tcp"

[[reservation]]
name = "dns"
users = [65534]
ports = 15353
protocol = "udp"
)";

}  // namespace

TEST_CASE("check reports reserved ports held outside the broker, naming the process") {
  FdLeakCheck fds;
  // The outsiders got there before the daemon started.
  Child pg = start_outside(15432, SOCK_STREAM, {.name = "pboutside"});
  Child dns = start_outside(15353, SOCK_DGRAM, {.name = "pbdns"});
  Daemon d({.config_text = kReservedPg});

  CommandResult r = run_cli(d, {"check"});
  INFO("check: " << r.describe());
  CHECK(r.status.exited);
  CHECK(r.status.code == 1);
  CHECK(contains(r.out, "held-outside"));
  CHECK(contains(r.out, "port 15432 of reservation pg"));
  CHECK(contains(r.out, "pid " + std::to_string(pg.pid()) + " (pboutside"));
  CHECK(contains(r.out, "port 15353 of reservation dns"));
  CHECK(contains(r.out, "pid " + std::to_string(dns.pid()) + " (pbdns"));

  CommandResult j = run_cli(d, {"check", "--json"});
  INFO("check --json: " << j.describe());
  CHECK(j.status.code == 1);
  CHECK(looks_like_json(j.out));
  CHECK(contains(j.out, R"("kind": "held-outside")"));
  CHECK(contains(j.out, "pid " + std::to_string(pg.pid())));

  // Everyone else is refused the port by policy, whoever holds it outside.
  if (can_switch_uid()) {
    AcquireOutcome other = acquire_in_child(d, "tcp:127.0.0.1:15432", {.uid = 65533});
    CHECK_FALSE(other.ok);
    CHECK(contains(other.message, "'pg'"));
  }

  // Once the outsiders are gone, nothing is wrong.
  pg.close_input();
  dns.close_input();
  CHECK(pg.wait().ok());
  CHECK(dns.wait().ok());
  CommandResult ok = run_cli(d, {"check"});
  INFO("check after the outsiders left: " << ok.describe());
  CHECK(ok.status.ok());
  CHECK(contains(ok.out, "no problems"));
  CommandResult okj = run_cli(d, {"check", "--json"});
  CHECK(okj.status.ok());
  CHECK(contains(okj.out, "[]"));
  d.check_no_fd_leak();
}

TEST_CASE("check reports contradictory reservations") {
  FdLeakCheck fds;
  Daemon d({.config_text = R"([[reservation]]
name = "a"
users = [65534]
ports = "7000-7010"
protocol = "tcp"

[[reservation]]
name = "b"
users = [65533]
ports = 7005
protocol = "both"
)"});
  CommandResult r = run_cli(d, {"check"});
  INFO("check: " << r.describe());
  CHECK(r.status.code == 1);
  CHECK(contains(r.out, "reservation 'a'"));
  CHECK(contains(r.out, "reservation 'b'"));
  CHECK(contains(r.out, "7005"));
}

TEST_CASE("check says there is nothing wrong when there is nothing wrong") {
  FdLeakCheck fds;
  Daemon d;
  CommandResult r = run_cli(d, {"check"});
  INFO("check: " << r.describe());
  CHECK(r.status.ok());
  CHECK(contains(r.out, "no problems"));
}
