// Ports across uids: the kernel sees each socket's holder as its owner (so SO_REUSEPORT keeps
// uids apart even where the broker has forgotten a group), [[share]] lets named principals join
// one group together, and held reservations can be kept bound without ever listening.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "harness.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

// The uids the kernel records as owners of the listening TCP sockets on `port` in this network
// namespace (/proc/net/tcp and tcp6: what `ss -e` shows).
std::multiset<uint32_t> listener_uids(uint16_t port) {
  std::multiset<uint32_t> out;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(read_file(file));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state, queues, timer, retransmits;
      uint32_t uid = 0;
      f >> sl >> local >> remote >> state >> queues >> timer >> retransmits >> uid;
      const auto colon = local.rfind(':');
      if (colon == std::string::npos || state != "0A") continue;  // 0A: LISTEN
      if (std::stoul(local.substr(colon + 1), nullptr, 16) == port) out.insert(uid);
    }
  }
  return out;
}

std::string who_answers(uint16_t port) {
  UniqueFd conn = connect_tcp(port);
  if (!conn.valid()) return "(connect failed)";
  if (!send_all(conn.get(), "who?\n")) return "(send failed)";
  return recv_line(conn.get(), std::chrono::seconds(5)).value_or("");
}

// Connections to `port` until both `a` and `b` answered (the kernel balances a reuseport group
// by the 4-tuple, so 64 tries miss one member with probability 2^-63); what answered, counted.
std::map<std::string, int> answers(uint16_t port, int tries = 64) {
  std::map<std::string, int> out;
  for (int i = 0; i < tries; ++i) ++out[who_answers(port)];
  return out;
}

std::string describe(const std::map<std::string, int>& m) {
  std::string out;
  for (const auto& [k, v] : m) out += "'" + k + "': " + std::to_string(v) + "  ";
  return out;
}

constexpr uid_t kApp = 1100;
constexpr uid_t kEnvoy = 1101;
constexpr uid_t kStranger = 1102;

const std::string kSharePolicy = R"([daemon]
ephemeral_guard = false

[[rule]]
name = "services"
users = ["*"]
ports = "18300-18399"

[[share]]
name = "edge"
users = [1100, 1101]
ports = [18310, 18311]
protocol = "tcp"
modes = ["reuseport", "shared"]
)";

}  // namespace

TEST_CASE("a forgotten reuseport group stays closed to other uids: sockets are the holder's") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no child can become another uid");
    return;
  }
  FdLeakCheck fds;
  TempDir dir;
  const DaemonOptions opts{.args = {"--no-journal"}, .dir = &dir};
  std::optional<Daemon> d;
  d.emplace(opts);
  Holder victim =
      spawn_holder(*d, "tcp:127.0.0.1:18300,reuseport", {.uid = kApp, .name = "pbvictim"});
  CHECK(listener_uids(18300) == std::multiset<uint32_t>{kApp});
  victim.child.send_line("serve victim");
  Holder victim_udp =
      spawn_holder(*d, "udp:127.0.0.1:18301,reuseport", {.uid = kApp, .name = "pbvictimudp"});

  // The broker restarts without any state: it knows nothing of the group.
  d->stop();
  d.reset();
  d.emplace(opts);
  CHECK(d->leases().empty());

  // Another uid asks for the port in the same mode. The broker sees no lease, so only the
  // kernel stands in the way: its socket is that uid's, and the group is kApp's.
  AcquireOutcome intruder = acquire_in_child(*d, "tcp:127.0.0.1:18300,reuseport",
                                             {.uid = kStranger, .name = "pbintruder"});
  CHECK_MESSAGE(!intruder.ok,
                "another uid joined the victim's kernel group: " << intruder.describe());
  CHECK_MESSAGE(intruder.code == ErrorCode::kInUseOutside, intruder.describe());
  for (int i = 0; i < 8; ++i) CHECK(who_answers(18300) == "victim");
  AcquireOutcome intruder_udp = acquire_in_child(*d, "udp:127.0.0.1:18301,reuseport",
                                                 {.uid = kStranger, .name = "pbintruder"});
  CHECK_MESSAGE(intruder_udp.code == ErrorCode::kInUseOutside, intruder_udp.describe());

  // The victim's own uid may still join its group through the new daemon (a restarted worker).
  Holder again =
      spawn_holder(*d, "tcp:127.0.0.1:18300,reuseport", {.uid = kApp, .name = "pbagain"});
  CHECK(listener_uids(18300) == std::multiset<uint32_t>{kApp, kApp});
  again.child.send_line("serve again");
  auto got = answers(18300);
  CHECK_MESSAGE(got["victim"] >= 1, describe(got));
  CHECK_MESSAGE(got["again"] >= 1, describe(got));
  CHECK_MESSAGE(got["victim"] + got["again"] == 64, describe(got));

  // `who` names the owner the kernel sees, as `ss -e` does.
  CommandResult who = run_cli(*d, {"who", "18300"});
  CHECK_MESSAGE(contains(who.out, "uid " + std::to_string(kApp)), who.describe());

  for (Holder* h : {&victim, &victim_udp, &again}) {
    h->child.send_line("exit");
    CHECK(h->child.wait().ok());
  }
  CHECK(d->wait_port_unleased(18300));
  d->check_no_fd_leak();
}

TEST_CASE("[[share]]: two uids join one reuseport and one shared lease; others are refused") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no child can become another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kSharePolicy});

  // reuseport: the app first, then its sidecar under another uid. One kernel group: every
  // member's socket is the app's uid.
  Holder app = spawn_holder(d, "tcp:127.0.0.1:18310,reuseport", {.uid = kApp, .name = "pbapp"});
  Holder envoy =
      spawn_holder(d, "tcp:127.0.0.1:18310,reuseport", {.uid = kEnvoy, .name = "pbenvoy"});
  CHECK(listener_uids(18310) == std::multiset<uint32_t>{kApp, kApp});
  app.child.send_line("serve app");
  envoy.child.send_line("serve envoy");
  auto got = answers(18310);
  CHECK_MESSAGE(got["app"] >= 1, describe(got));
  CHECK_MESSAGE(got["envoy"] >= 1, describe(got));
  CHECK_MESSAGE(got["app"] + got["envoy"] == 64, describe(got));

  // A uid the share does not name is refused, and the refusal names the share; the rule would
  // give it the port, not a place in another uid's group.
  AcquireOutcome stranger = acquire_in_child(d, "tcp:127.0.0.1:18310,reuseport",
                                             {.uid = kStranger, .name = "pbstranger"});
  CHECK_FALSE(stranger.ok);
  CHECK(stranger.code == ErrorCode::kConflict);
  CHECK_MESSAGE(contains(stranger.message,
                         "uid 1102 is not among the principals of share 'edge' "
                         "(" +
                             d.dir() + "/portbroker.toml:"),
                stranger.message);

  // shared: one socket, both accept from its queue.
  Holder app_shared =
      spawn_holder(d, "tcp:127.0.0.1:18311,shared", {.uid = kApp, .name = "pbapp2"});
  Holder envoy_shared =
      spawn_holder(d, "tcp:127.0.0.1:18311,shared", {.uid = kEnvoy, .name = "pbenvoy2"});
  CHECK(listener_uids(18311) == std::multiset<uint32_t>{kApp});
  app_shared.child.send_line("accept app");
  envoy_shared.child.send_line("accept envoy");
  const std::set<std::string> both{who_answers(18311), who_answers(18311)};
  CHECK(both == std::set<std::string>{"app", "envoy"});
  CHECK(app_shared.child.read_line() == "accepted");
  CHECK(envoy_shared.child.read_line() == "accepted");
  AcquireOutcome stranger_shared =
      acquire_in_child(d, "tcp:127.0.0.1:18311,shared", {.uid = kStranger, .name = "pbstranger"});
  CHECK_MESSAGE(contains(stranger_shared.message, "share 'edge'"), stranger_shared.describe());

  // A port outside the share keeps the old rule: only the creating uid (or root) joins.
  Holder alone = spawn_holder(d, "tcp:127.0.0.1:18312,reuseport", {.uid = kApp, .name = "pbalone"});
  AcquireOutcome no_share =
      acquire_in_child(d, "tcp:127.0.0.1:18312,reuseport", {.uid = kEnvoy, .name = "pbenvoy3"});
  CHECK_MESSAGE(contains(no_share.message, "only uid 1100 or root may join it"),
                no_share.describe());

  // Kill one member: the other keeps serving, every connection.
  app.child.kill(SIGKILL);
  app.child.wait();
  REQUIRE(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l &&
           std::count_if(l->begin(), l->end(), [](const auto& x) { return x.port == 18310; }) == 1;
  }));
  for (int i = 0; i < 16; ++i) {
    std::string who = who_answers(18310);
    CHECK_MESSAGE(who == "envoy", "connection " << i << " answered by '" << who << "'");
    if (who != "envoy") break;
  }
  app_shared.child.kill(SIGKILL);
  app_shared.child.wait();
  envoy_shared.child.send_line("accept envoy");
  CHECK(who_answers(18311) == "envoy");
  CHECK(envoy_shared.child.read_line() == "accepted");

  for (Holder* h : {&envoy, &envoy_shared, &alone}) {
    h->child.send_line("exit");
    CHECK(h->child.wait().ok());
  }
  for (uint16_t port : {18310, 18311, 18312}) CHECK(d.wait_port_unleased(port));
  d.check_no_fd_leak();
}

TEST_CASE("reserve --hold --no-listen: bound, never listening; the entitled lease gets it") {
  FdLeakCheck fds;
  Daemon d;
  const uid_t entitled = can_switch_uid() ? kApp : ::getuid();
  CommandResult usage = run_cli(d, {"reserve", "nat", "tcp:any:18320", "--no-listen"});
  CHECK_MESSAGE(usage.status.code == 2, usage.describe());
  CHECK_MESSAGE(contains(usage.out, "--no-listen needs --hold"), usage.describe());

  CommandResult r = run_cli(d, {"reserve", "nat", "tcp:any:18320", "--user",
                                std::to_string(entitled), "--hold", "--no-listen"});
  REQUIRE_MESSAGE(r.status.code == 0, r.describe());
  CommandResult list = run_cli(d, {"reservations"});
  CHECK_MESSAGE(contains(list.out, "no-listen"), list.describe());
  CommandResult who = run_cli(d, {"who", "18320"});
  CHECK_MESSAGE(contains(who.out, "held: by portbrokerd"), who.describe());
  CHECK_MESSAGE(contains(who.out, "hold, not listening"), who.describe());

  // Nobody outside takes it, with or without SO_REUSEADDR, and nothing accepts a connection.
  for (const char* addr : {"127.0.0.1", "0.0.0.0"}) {
    CHECK(outside_bind_errno(18320, addr, false) == EADDRINUSE);
    CHECK(outside_bind_errno(18320, addr, true) == EADDRINUSE);
  }
  CHECK_FALSE(connect_tcp(18320).valid());
  CHECK(listener_uids(18320).empty());

  // The entitled lease receives the socket, listening.
  Holder h = spawn_holder(d, "tcp:0.0.0.0:18320", {.uid = entitled, .name = "pbnat"});
  CHECK(h.lease.bound_port == 18320);
  h.child.send_line("accept nat");
  CHECK(who_answers(18320) == "nat");
  CHECK(h.child.read_line() == "accepted");
  h.child.send_line("exit");
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(18320));

  // Held again, still not listening.
  CHECK(d.wait_until([](portbroker::Client&) { return !connect_tcp(18320).valid(); }));
  CHECK(outside_bind_errno(18320, "127.0.0.1", true) == EADDRINUSE);
  CHECK(run_cli(d, {"unreserve", "nat"}).status.code == 0);
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(18320); }));
  d.check_no_fd_leak();
}
