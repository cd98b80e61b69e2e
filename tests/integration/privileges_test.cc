// Least privilege in the running daemon: what /proc says about it, and the rare paths that must
// still work within the capabilities it keeps and its seccomp allow-list. (Every daemon the
// harness starts runs under the filter, and the harness fails a test whose daemon logged a
// filtered call; these tests walk the paths the other tests reach seldom.)
#include <doctest/doctest.h>
#include <linux/capability.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "harness.h"
#include "harness_fdstore.h"

using namespace pbtest;

namespace {

std::map<std::string, std::string> proc_status(pid_t pid) {
  std::map<std::string, std::string> out;
  std::istringstream in(read_file("/proc/" + std::to_string(pid) + "/status"));
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    out[line.substr(0, colon)] = value;
  }
  return out;
}

uint64_t mask(std::initializer_list<int> caps) {
  uint64_t m = 0;
  for (int c : caps) m |= uint64_t{1} << c;
  return m;
}

uint64_t hex(const std::string& s) { return std::stoull(s, nullptr, 16); }

// What a root daemon keeps on the embedded default policy (see README, "Least privilege").
const uint64_t kRootKept =
    mask({CAP_NET_BIND_SERVICE, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SETUID, CAP_SETGID});

// A sanitizer build (make test-asan) runs the daemon without its filter: LeakSanitizer's exit
// check cannot run under it. `make test` checks the filter.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kFilterBuilt = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kFilterBuilt = false;
#else
constexpr bool kFilterBuilt = true;
#endif
#else
constexpr bool kFilterBuilt = true;
#endif

void check_reduced(pid_t pid, bool filter = true) {
  filter = filter && kFilterBuilt;
  auto st = proc_status(pid);
  INFO("/proc/" << pid << "/status: CapEff " << st["CapEff"] << ", CapPrm " << st["CapPrm"]
                << ", CapBnd " << st["CapBnd"] << ", NoNewPrivs " << st["NoNewPrivs"]
                << ", Seccomp " << st["Seccomp"]);
  if (can_switch_uid()) {
    // Real root: exactly the kept set, in every set that could give a capability back.
    CHECK(hex(st["CapEff"]) == kRootKept);
    CHECK(hex(st["CapPrm"]) == kRootKept);
    CHECK(hex(st["CapBnd"]) == kRootKept);
  } else {
    CHECK((hex(st["CapEff"]) & ~kRootKept) == 0);
  }
  CHECK(hex(st["CapInh"]) == 0);
  CHECK(hex(st["CapAmb"]) == 0);
  CHECK(st["NoNewPrivs"] == "1");
  if (filter) {
    CHECK(st["Seccomp"] == "2");
    CHECK(st["Seccomp_filters"] == "1");  // an upgrade does not stack a second one
  } else {
    CHECK(st["Seccomp"] == "0");
  }
}

}  // namespace

TEST_CASE("the running daemon keeps only what its features need, with no_new_privs and seccomp") {
  FdLeakCheck fds;
  Daemon d;
  check_reduced(d.pid());
  CHECK(contains(d.log(), "privileges: keeping cap_net_bind_service"));
  CHECK(contains(d.log(), kFilterBuilt ? "seccomp allow-list of" : "off in a sanitizer build"));
  // A port below 1024 still binds: CAP_NET_BIND_SERVICE is kept.
  AcquireOutcome low = acquire_in_child(d, "tcp:127.0.0.1:80");
  CHECK_MESSAGE(low.ok, low.describe());
}

TEST_CASE("--no-seccomp leaves the filter off but still drops capabilities") {
  FdLeakCheck fds;
  Daemon d({.args = {"--no-seccomp"}});
  check_reduced(d.pid(), false);
  CHECK(contains(d.log(), "system-call filter off (--no-seccomp)"));
}

TEST_CASE("who and check see another user's process with the kept capabilities") {
  FdLeakCheck fds;
  Daemon d({.config_text = "[[reservation]]\nname = \"db\"\nusers = [0]\nports = 18611\n"
                           "protocol = \"tcp\"\n"});
  SpawnOptions nobody{.name = "pbnobodysrv"};
  if (can_switch_uid()) nobody.uid = 65534;
  Child outside = start_outside(18611, SOCK_STREAM, nobody);
  const std::string pid = std::to_string(outside.pid());
  CommandResult who = run_cli(d, {"who", "18611"});
  INFO(who.describe());
  CHECK(who.status.ok());
  CHECK(contains(who.out, "pid " + pid + " (pbnobodysrv"));
  // check finds the reserved port held outside the broker, and names the process.
  CommandResult check = run_cli(d, {"check"});
  INFO(check.describe());
  CHECK(contains(check.out, "18611"));
  CHECK(contains(check.out, "pid " + pid + " (pbnobodysrv"));
  outside.close_input();
  CHECK(outside.wait().ok());
}

TEST_CASE("reload, the guard's sysctl and shutdown --revoke-all work under the filter") {
  FdLeakCheck fds;
  TempDir dir;
  const std::string config =
      "[[reservation]]\nname = \"web\"\nusers = [0]\nports = 18620\n"
      "protocol = \"tcp\"\n";
  Daemon d({.dir = &dir, .config_text = config});
  // The guard wrote the reservation into the (namespace's) sysctl as the daemon started.
  CHECK(contains(read_file("/proc/sys/net/ipv4/ip_local_reserved_ports"), "18620"));
  std::ofstream(dir.file("portbroker.toml"))
      << config << "[[reservation]]\nname = \"db\"\nusers = [0]\nports = 18621\n"
      << "protocol = \"tcp\"\n";
  CommandResult reload = run_cli(d, {"reload"});
  CHECK_MESSAGE(reload.status.ok(), reload.describe());
  CHECK(contains(read_file("/proc/sys/net/ipv4/ip_local_reserved_ports"), "18621"));
  REQUIRE(::kill(d.pid(), SIGHUP) == 0);
  // The signal reaches the loop in its own time: wait (bounded) for the daemon to say so.
  CHECK(d.wait_until([&](portbroker::Client& c) {
    return c.status().ok() && contains(d.log(), "received SIGHUP");
  }));

  Holder h = spawn_holder(d, "tcp:127.0.0.1:18622");
  CommandResult down = run_cli(d, {"shutdown", "--revoke-all"});
  CHECK_MESSAGE(down.status.ok(), down.describe());
  d.wait_stopped();
  // The guard's entries went with it.
  CHECK_FALSE(contains(read_file("/proc/sys/net/ipv4/ip_local_reserved_ports"), "18620"));
  h.child.close_input();
  h.child.wait();
}

TEST_CASE("journal compaction while serving works under the filter") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  // The journal compacts once its log passes 1 MiB and four times the live state: acquire and
  // release until the log shrinks (a compaction), within a bound no passing run reaches.
  const std::string log_path = d.dir() + "/journal/journal.log";
  struct stat st {};
  off_t largest = 0;
  bool compacted = false;
  for (int i = 0; i < 60000 && !compacted; ++i) {
    auto lease = c.acquire("tcp:127.0.0.1:18630");
    REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().message));
    REQUIRE(c.release(lease->id()).ok());
    if (::stat(log_path.c_str(), &st) == 0) {
      compacted = st.st_size < largest;
      largest = std::max(largest, st.st_size);
    }
  }
  CHECK_MESSAGE(compacted,
                "no compaction seen; the log grew to " << largest << " bytes at " << log_path);
  CHECK(c.status().ok());
}

TEST_CASE("an upgrade re-executes under the same filter and keeps the reduced set") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18640");
  CommandResult up = run_cli(d, {"upgrade"});
  REQUIRE_MESSAGE(up.status.ok(), up.describe());
  REQUIRE_MESSAGE(d.wait_ready_again(), "no READY=1 after the upgrade");
  check_reduced(d.pid());
  if (kFilterBuilt) CHECK(contains(d.log(), "(inherited through the upgrade)"));
  CHECK(d.leases().size() == 1);
  // And once more: the filters do not pile up.
  REQUIRE(::kill(d.pid(), SIGUSR2) == 0);
  REQUIRE_MESSAGE(d.wait_ready_again(), "no READY=1 after SIGUSR2");
  check_reduced(d.pid());
  h.child.close_input();
  h.child.wait();
}

TEST_CASE("a restart takes another user's socket back with pidfd_getfd under the filter") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no holder can be another uid");
    return;
  }
  FdLeakCheck fds;
  TempDir dir;
  std::optional<Daemon> d;
  d.emplace(DaemonOptions{.dir = &dir});
  const auto idle_fds = d->fd_baseline();
  Holder h = spawn_holder(*d, "tcp:127.0.0.1:18650", {.uid = 65534});
  d->kill_hard();
  d.reset();
  d.emplace(DaemonOptions{.dir = &dir});
  d->set_fd_baseline(idle_fds);
  auto leases = d->leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].holder.uid == 65534);
  CHECK_FALSE(contains(d->log(), "could not take"));
  check_reduced(d->pid());
  h.child.close_input();
  h.child.wait();
  CHECK(d->wait_port_unleased(18650));
}

TEST_CASE("the fd store (sd_notify with fds) works under the filter") {
  FdLeakCheck fds;
  TempDir dir;
  ServiceManager manager(dir);
  std::optional<Daemon> d;
  d.emplace(DaemonOptions{.dir = &dir, .manager = &manager});
  const auto idle_fds = d->fd_baseline();
  Holder h = spawn_holder(*d, "tcp:127.0.0.1:18660");
  manager.drain();
  CHECK(manager.count_prefix("s") >= 1);
  check_reduced(d->pid());
  d->stop(SIGTERM);
  d.reset();
  d.emplace(DaemonOptions{.dir = &dir, .manager = &manager});
  d->set_fd_baseline(idle_fds);
  CHECK(d->leases().size() == 1);
  check_reduced(d->pid());
  h.child.close_input();
  h.child.wait();
  CHECK(d->wait_port_unleased(18660));
}
