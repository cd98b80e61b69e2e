// The policy file end to end: rules grant a non-root uid a privileged port and refuse everyone
// else (deny by default), root per [daemon] root_unrestricted, reload (CLI and SIGHUP) keeps
// leases the new policy would refuse and lists them, an invalid file on reload leaves the old
// policy in force, and `portbrokerd --check-config`.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>

#include <fstream>
#include <string>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  REQUIRE_MESSAGE(static_cast<bool>(out), "cannot write " << path);
}

std::string config_path(const Daemon& d) { return d.dir() + "/portbroker.toml"; }

bool has_lease(const std::vector<portbroker::LeaseInfo>& leases, uint64_t id) {
  for (const auto& l : leases) {
    if (l.id == id) return true;
  }
  return false;
}

bool has_problem(const std::vector<portbroker::Problem>& problems, const std::string& kind,
                 const std::string& text) {
  for (const auto& p : problems) {
    if (p.kind == kind && contains(p.message, text)) return true;
  }
  return false;
}

// The holder answers one connection with `name`: its listening socket really works.
void check_holder_serves(Holder& h, uint16_t port, const std::string& name) {
  UniqueFd conn = connect_tcp(port);
  REQUIRE_MESSAGE(conn.valid(), "cannot connect to port " << port);
  h.child.send_line("accept " + name);
  CHECK(send_all(conn.get(), "hello\n"));
  CHECK(recv_line(conn.get()) == name);
  CHECK(h.child.read_line() == "accepted");
}

constexpr const char* kPort80ForNobody = R"(# uid 65534 may serve port 80; nothing else is granted.
[[rule]]
name = "http-for-nobody"
users = [65534]
ports = 80
protocol = "tcp"
)";

}  // namespace

TEST_CASE("a rule grants uid 65534 port 80; other uids are refused by default; root is free") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kPort80ForNobody});
  const std::string config = config_path(d);

  Holder h = spawn_holder(d, "tcp:0.0.0.0:80", {.uid = 65534, .name = "pbnobody"});
  CHECK(h.lease.port == 80);
  CHECK(h.lease.bound_port == 80);
  check_holder_serves(h, 80, "nobody-on-80");

  // Another non-root uid: refused by policy (not merely because the port is taken), and the
  // message says which policy and why.
  AcquireOutcome other = acquire_in_child(d, "tcp:0.0.0.0:80", {.uid = 65533});
  INFO("uid 65533 asking for port 80: " << other.describe());
  CHECK_FALSE(other.ok);
  CHECK(other.code == ErrorCode::kPermissionDenied);
  CHECK(contains(other.message, "uid 65533"));
  CHECK(contains(other.message, config));
  CHECK(contains(other.message, "deny by default"));

  // With a policy file, even unprivileged ports are denied unless a rule grants them.
  AcquireOutcome high = acquire_in_child(d, "tcp:127.0.0.1:8080", {.uid = 65533});
  CHECK_MESSAGE(!high.ok, high.describe());
  CHECK(high.code == ErrorCode::kPermissionDenied);
  CHECK(contains(high.message, "deny by default"));

  // The rule is exactly what it says: port 80, TCP.
  AcquireOutcome port81 = acquire_in_child(d, "tcp:127.0.0.1:81", {.uid = 65534});
  CHECK_MESSAGE(!port81.ok, port81.describe());
  CHECK(port81.code == ErrorCode::kPermissionDenied);
  AcquireOutcome udp80 = acquire_in_child(d, "udp:127.0.0.1:80", {.uid = 65534});
  CHECK_MESSAGE(!udp80.ok, udp80.describe());
  CHECK(udp80.code == ErrorCode::kPermissionDenied);

  // The CLI passes the reason on and exits 1.
  CommandResult cli =
      run_cli(d, {"exec", "--listen", "tcp:0.0.0.0:80", "--", "/bin/true"}, {.uid = 65533});
  INFO("portbroker exec as uid 65533: " << cli.describe());
  CHECK(cli.status.exited);
  CHECK(cli.status.code == 1);
  CHECK(contains(cli.out, "deny by default"));

  // Root is unrestricted by default ([daemon] root_unrestricted = true): the policy lets it
  // through, so for port 80 it meets the holder, and port 81 is simply granted.
  {
    portbroker::Client root = d.connect();
    auto root80 = root.acquire("tcp:0.0.0.0:80");
    REQUIRE_FALSE(root80.ok());
    INFO("root asking for port 80: " << root80.error().message);
    CHECK(root80.error().code == ErrorCode::kConflict);
    CHECK(contains(root80.error().message, "pid " + std::to_string(h.child.pid())));
    auto root81 = root.acquire("tcp:127.0.0.1:81");
    CHECK_MESSAGE(root81.ok(), (root81.ok() ? "" : root81.error().message));
  }

  h.child.close_input();
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(80));
  // Freed, port 80 is still refused to the ungranted uid and granted again to the granted one.
  AcquireOutcome after = acquire_in_child(d, "tcp:0.0.0.0:80", {.uid = 65533});
  CHECK(after.code == ErrorCode::kPermissionDenied);
  AcquireOutcome again = acquire_in_child(d, "tcp:0.0.0.0:80", {.uid = 65534});
  CHECK_MESSAGE(again.ok, again.describe());
  d.check_no_fd_leak();
}

TEST_CASE("with root_unrestricted = false root needs a rule like anyone else") {
  FdLeakCheck fds;
  Daemon d({.config_text = std::string(R"([daemon]
root_unrestricted = false

[[rule]]
name = "root-https"
users = [0]
ports = 443
protocol = "tcp"
)") + kPort80ForNobody});
  const std::string config = config_path(d);
  {
    portbroker::Client root = d.connect();

    auto refused = root.acquire("tcp:127.0.0.1:80");
    REQUIRE_FALSE(refused.ok());
    INFO("root asking for port 80: " << refused.error().message);
    CHECK(refused.error().code == ErrorCode::kPermissionDenied);
    CHECK(contains(refused.error().message, "uid 0"));
    CHECK(contains(refused.error().message, config));
    CHECK(contains(refused.error().message, "deny by default"));

    auto high = root.acquire("tcp:127.0.0.1:8080");
    CHECK_FALSE(high.ok());

    auto granted = root.acquire("tcp:127.0.0.1:443");
    REQUIRE_MESSAGE(granted.ok(), (granted.ok() ? "" : granted.error().message));
    CHECK(local_port(granted->fd()) == 443);
    CHECK(is_listening(granted->fd()));
  }
  CHECK(d.wait_port_unleased(443));
  d.check_no_fd_leak();
}

namespace {

// Root is held to rules here so that the reload tests also run without privileges (in a user
// namespace every process is root).
constexpr const char* kPolicyA = R"([daemon]
root_unrestricted = false

[[rule]]
name = "a-8000s"
users = [0]
ports = "8000-8099"
protocol = "tcp"
)";

constexpr const char* kPolicyB = R"([daemon]
root_unrestricted = false

[[rule]]
name = "b-9000"
users = [0]
ports = 9000
protocol = "tcp"
)";

// Line 7, column 1: a typo'd key.
constexpr const char* kPolicyInvalid = R"([daemon]
root_unrestricted = false

[[rule]]
name = "broken"
users = [0]
prots = 9001
)";

}  // namespace

TEST_CASE(
    "reload keeps every lease, lists those the new policy would refuse, and survives bad files") {
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicyA});
  const std::string config = config_path(d);

  Holder h = spawn_holder(d, "tcp:127.0.0.1:8080");
  const std::string lease_id = std::to_string(h.lease.id);
  const std::string holder_pid = std::to_string(h.child.pid());
  {
    CommandResult check = run_cli(d, {"check"});
    INFO("check under policy A: " << check.describe());
    CHECK(check.status.ok());
    CHECK(contains(check.out, "no problems"));
  }

  SUBCASE("by SIGHUP") {
    write_text(config, kPolicyB);
    REQUIRE(::kill(d.pid(), SIGHUP) == 0);
    // The reload is visible once `check` reports the lease B would refuse.
    CHECK_MESSAGE(d.wait_until([&](portbroker::Client& c) {
      auto problems = c.check();
      return problems.ok() && has_problem(*problems, "lease-refused", "lease " + lease_id);
    }),
                  "after SIGHUP, check never listed lease " << lease_id << " as refused");
    CHECK(contains(d.log(), "policy would refuse lease " + lease_id));
  }

  SUBCASE("by portbroker reload") {
    write_text(config, kPolicyB);
    CommandResult reload = run_cli(d, {"reload"});
    INFO("reload to policy B: " << reload.describe());
    CHECK(reload.status.ok());
    CHECK(contains(reload.out, "policy reloaded from " + config));
    CHECK(contains(reload.out, "1 lease(s) the new policy would refuse (kept)"));
    CHECK(contains(reload.out, "lease " + lease_id));
    CHECK(contains(reload.out, "pid " + holder_pid));
    CHECK(contains(reload.out, "8080"));
  }

  // Either way: the lease is still there and still serving...
  CHECK(has_lease(d.leases(), h.lease.id));
  check_holder_serves(h, 8080, "still-here");
  // ...`check` names it and fails...
  {
    CommandResult check = run_cli(d, {"check"});
    INFO("check under policy B: " << check.describe());
    CHECK(check.status.exited);
    CHECK(check.status.code == 1);
    CHECK(contains(check.out, "lease-refused"));
    CHECK(contains(check.out, "lease " + lease_id));
    CHECK(contains(check.out, "pid " + holder_pid));
    CommandResult json = run_cli(d, {"check", "--json"});
    INFO("check --json: " << json.describe());
    CHECK(json.status.code == 1);
    CHECK(contains(json.out, R"("kind": "lease-refused")"));
  }
  // ...and the new policy governs new requests.
  {
    portbroker::Client c = d.connect();
    auto refused = c.acquire("tcp:127.0.0.1:8081");
    CHECK_FALSE(refused.ok());
    auto granted = c.acquire("tcp:127.0.0.1:9000");
    CHECK_MESSAGE(granted.ok(), (granted.ok() ? "" : granted.error().message));
  }

  // An invalid file: reload fails naming file, line and problem; policy B stays in force.
  write_text(config, kPolicyInvalid);
  CommandResult bad = run_cli(d, {"reload"});
  INFO("reload of an invalid file: " << bad.describe());
  CHECK(bad.status.exited);
  CHECK(bad.status.code == 1);
  CHECK(contains(bad.out, config + ":7:1:"));
  CHECK(contains(bad.out, "prots"));
  REQUIRE(::kill(d.pid(), SIGHUP) == 0);
  CHECK(d.wait_until([&](portbroker::Client&) {
    std::string log = d.log();
    size_t first = log.find("reload failed");
    return first != std::string::npos && log.find("reload failed", first + 1) != std::string::npos;
  }));
  CHECK(d.alive());
  CHECK(has_lease(d.leases(), h.lease.id));
  {
    portbroker::Client c = d.connect();
    auto still_b = c.acquire("tcp:127.0.0.1:9000");
    CHECK_MESSAGE(still_b.ok(), (still_b.ok() ? "" : still_b.error().message));
    auto not_a = c.acquire("tcp:127.0.0.1:8081");
    CHECK_FALSE(not_a.ok());
  }

  // Back to A: nothing is refused any more.
  write_text(config, kPolicyA);
  CommandResult back = run_cli(d, {"reload"});
  INFO("reload back to policy A: " << back.describe());
  CHECK(back.status.ok());
  CHECK_FALSE(contains(back.out, "would refuse"));
  CommandResult check = run_cli(d, {"check"});
  CHECK_MESSAGE(check.status.ok(), check.describe());
  CHECK(has_lease(d.leases(), h.lease.id));

  h.child.close_input();
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(8080));
  d.check_no_fd_leak();
}

TEST_CASE("reload is for root") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicyA});
  write_text(config_path(d), kPolicyB);
  CommandResult r = run_cli(d, {"reload"}, {.uid = 65534});
  INFO("reload as uid 65534: " << r.describe());
  CHECK(r.status.exited);
  CHECK(r.status.code == 1);
  CHECK(contains(r.out, "root"));
  // Nothing was reloaded: policy A still grants 8080.
  portbroker::Client c = d.connect();
  auto granted = c.acquire("tcp:127.0.0.1:8080");
  CHECK_MESSAGE(granted.ok(), (granted.ok() ? "" : granted.error().message));
}

TEST_CASE("portbrokerd --check-config accepts a valid file and names file and line of a bad one") {
  FdLeakCheck fds;
  TempDir dir;
  const std::string good = dir.file("good.toml");
  const std::string bad = dir.file("bad.toml");
  const std::string bad_user = dir.file("bad-user.toml");
  write_text(good, std::string(kPort80ForNobody) + R"(
[[reservation]]
name = "db"
users = ["root", 65534]
ports = 1433
protocol = "tcp"
hold = true

[[pool]]
name = "dyn"
users = ["*"]
ports = "30000-30099"
)");
  write_text(bad, kPolicyInvalid);
  write_text(bad_user, R"([[rule]]
users = ["no-such-user-pbtest"]
ports = 80
)");

  CommandResult ok = run_command({daemon_path(), "--check-config", good});
  INFO("--check-config on a valid file: " << ok.describe());
  CHECK(ok.status.ok());
  CHECK(contains(ok.out, good));
  CHECK(contains(ok.out, "valid"));

  CommandResult ko = run_command({daemon_path(), "--check-config", bad});
  INFO("--check-config on an invalid file: " << ko.describe());
  CHECK(ko.status.exited);
  CHECK(ko.status.code == 1);
  CHECK(contains(ko.out, bad + ":7:1:"));
  CHECK(contains(ko.out, "unknown key 'prots'"));

  CommandResult unknown = run_command({daemon_path(), "--check-config", bad_user});
  INFO("--check-config with an unknown user: " << unknown.describe());
  CHECK(unknown.status.code == 1);
  CHECK(contains(unknown.out, bad_user + ":2:"));
  CHECK(contains(unknown.out, "no-such-user-pbtest"));

  CommandResult missing = run_command({daemon_path(), "--check-config", dir.file("nope.toml")});
  INFO("--check-config on a missing file: " << missing.describe());
  CHECK(missing.status.code == 1);

  // The daemon itself refuses to start on the invalid file, with the same message.
  FailedStart start = start_daemon_expect_failure(
      {"--socket", dir.file("pb.sock"), "--state-dir", dir.file("state"), "--config", bad}, dir);
  INFO("portbrokerd --config bad.toml: " << start.result.describe());
  CHECK_FALSE(start.became_ready);
  CHECK(start.result.status.exited);
  CHECK(start.result.status.code == 1);
  CHECK(contains(start.result.out, bad + ":7:1:"));
  CHECK_FALSE(path_exists(dir.file("pb.sock")));
}
