// A real container (Debian's rootful podman, --network=none, a root file system made here from
// the host's own /usr: nothing downloaded) serving host traffic on a host-port socket from the
// broker, handed over two ways: `portbroker exec -- podman run` (LISTEN_FDS forwarded by
// podman) and the control socket bind-mounted into the container. The server sees the
// client's real source address; the lease names the container's cgroup; it ends with the
// container.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "harness.h"
#include "portbroker/container.hpp"

using namespace pbtest;

namespace {

// Answers HTTP requests with the peer's address as the server saw it, on the socket-activation
// fd 3; exits after `count` requests (so the container stops by itself).
constexpr const char* kServer = R"(import os, socket, sys
assert os.environ.get("LISTEN_FDS") == "1", os.environ
assert os.environ.get("LISTEN_PID") == str(os.getpid()), os.environ
listener = socket.socket(fileno=3)
for _ in range(int(sys.argv[1])):
    conn, peer = listener.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    body = ("peer=%s\n" % peer[0]).encode()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    conn.close()
)";

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string which(const std::string& name) {
  for (const char* dir : {"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"}) {
    std::string path = std::string(dir) + "/" + name;
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return {};
}

// The container's root: empty directories to mount on, /usr bind-mounted read-only from the
// host by podman itself, and the merged-/usr symlinks.
void make_rootfs(const std::string& root) {
  for (const char* d : {"", "/usr", "/etc", "/proc", "/sys", "/dev", "/tmp", "/run", "/srv"}) {
    REQUIRE(::mkdir((root + d).c_str(), 0755) == 0);
  }
  for (const char* l : {"bin", "sbin", "lib", "lib64"}) {
    REQUIRE(::symlink((std::string("usr/") + l).c_str(), (root + "/" + l).c_str()) == 0);
  }
}

// `podman run` as the recipe in the README writes it, behind one host-specific step: on a
// hybrid cgroup host (cgroup v2 mounted at /sys/fs/cgroup/unified) crun refuses to run ("cgroups
// in hybrid mode not supported"), so podman runs in a private mount namespace where that mount
// is gone and the runtime sees plain cgroup v1. `exec` keeps the pid, so LISTEN_PID still names
// podman when it starts.
std::vector<std::string> podman_run(const std::vector<std::string>& run_args) {
  std::string script =
      "if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; exec "
      "podman run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096";
  for (const auto& a : run_args) script += " '" + a + "'";
  return {which("unshare"), "--mount", "--propagation", "private", "/bin/sh", "-c", script};
}

// curl from the host, from a source address of its own on the loopback: the server in the
// container must answer with that very address as its peer.
void check_curl_reaches(const std::string& source, uint16_t port, Child& podman) {
  CommandResult r = run_command({which("curl"), "-sS", "--max-time", "20", "--interface", source,
                                 "http://127.0.0.1:" + std::to_string(port) + "/"},
                                {}, std::chrono::seconds(30));
  CHECK_MESSAGE(r.status.code == 0, r.describe() << "\npodman: " << podman.output());
  CHECK_MESSAGE(r.out == "peer=" + source + "\n", r.out);
}

std::optional<portbroker::LeaseInfo> lease_on(Daemon& d, uint16_t port) {
  for (const auto& l : d.leases()) {
    if (l.port == port) return l;
  }
  return std::nullopt;
}

// Waits for a lease on `port` while `runner` (podman, starting a container) still runs: on each
// round, one look at the daemon's leases, then up to 100 ms waiting for the runner to exit.
std::optional<portbroker::LeaseInfo> wait_for_lease(Daemon& d, Child& runner, uint16_t port) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto l = lease_on(d, port)) return l;
    pollfd p{runner.pidfd(), POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) return lease_on(d, port);  // it exited
  }
  return std::nullopt;
}

std::string read_trimmed(const std::string& path) {
  std::string s = read_file(path);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Policy: root on the host gets 18400; only a podman container gets 18401, by its cgroup (as
// the cgroupfs manager names it on this kind of host, and as systemd names it elsewhere).
const std::string kPolicy = R"([daemon]
root_unrestricted = false
ephemeral_guard = false

[[rule]]
name = "host"
users = [0]
ports = [18400]

[[rule]]
name = "containers"
cgroups = ["/libpod_parent/libpod-*", "/machine.slice/libpod-*.scope"]
ports = [18401]
)";

}  // namespace

TEST_CASE("a podman container serves host traffic on a brokered host port") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: rootful podman needs root");
    return;
  }
  REQUIRE_MESSAGE(!which("podman").empty(),
                  "podman is not installed: packaging/install-deps.sh installs it");
  REQUIRE_MESSAGE(!which("curl").empty(), "curl is not installed");
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  TempDir work;
  const std::string rootfs = work.path() + "/rootfs";
  make_rootfs(rootfs);
  const std::string srv = work.path() + "/srv";
  REQUIRE(::mkdir(srv.c_str(), 0755) == 0);
  std::ofstream(srv + "/server.py") << kServer;
  REQUIRE(is_dir("/usr/lib"));
  // The source address curl connects from: any 127/8 address is the loopback's.
  const std::string source = "127.0.0.77";
  const std::vector<std::string> common = {"-v", "/usr:/usr:ro", "-v", srv + ":/srv:ro"};

  SUBCASE("portbroker exec -- podman run: the socket arrives through LISTEN_FDS") {
    std::vector<std::string> run = common;
    for (const std::string& a : {std::string("--rootfs"), rootfs, std::string("/usr/bin/python3"),
                                 std::string("/srv/server.py"), std::string("1")}) {
      run.push_back(a);
    }
    std::vector<std::string> argv = {cli_path(), "exec", "--listen", "web=tcp:0.0.0.0:18400", "--"};
    for (auto& a : podman_run(run)) argv.push_back(a);
    Child podman = Child::exec(argv, {.env = d.client_env()});
    REQUIRE_MESSAGE(wait_for_lease(d, podman, 18400).has_value(), podman.output());

    check_curl_reaches(source, 18400, podman);
    // One request served: the server exits, the container stops, podman exits, the lease ends.
    ExitStatus st = podman.wait(std::chrono::seconds(60));
    CHECK_MESSAGE(st.ok(), st.describe() << "\n" << podman.output());
    CHECK(d.wait_port_unleased(18400));
  }

  SUBCASE("the control socket bind-mounted into the container; granted by cgroup") {
    // The host's root may not take the container's port: the grant is the container's cgroup.
    AcquireOutcome host = acquire_in_child(d, "tcp:0.0.0.0:18401");
    CHECK_MESSAGE(!host.ok, host.describe());
    const std::string build = cli_path().substr(0, cli_path().rfind('/'));
    const std::string cidfile = work.path() + "/cid";
    std::vector<std::string> run = common;
    for (const std::string& a :
         {std::string("-v"), d.dir() + ":/run/portbroker:ro", std::string("-v"),
          build + ":" + build + ":ro", std::string("--cidfile"), cidfile, std::string("--rootfs"),
          rootfs, cli_path(), std::string("exec"), std::string("--listen"),
          std::string("web=tcp:0.0.0.0:18401"), std::string("--"), std::string("/usr/bin/python3"),
          std::string("/srv/server.py"), std::string("2")}) {
      run.push_back(a);
    }
    Child podman = Child::exec(podman_run(run), {});
    auto lease = wait_for_lease(d, podman, 18401);
    REQUIRE_MESSAGE(lease.has_value(), podman.output() << "\n" << d.log_tail());

    // The lease names the container: its cgroup, and the container's id from it.
    const std::string id = read_trimmed(cidfile);
    REQUIRE(id.size() >= 12);
    INFO("cgroup: " << lease->holder.cgroup);
    CHECK(contains(lease->holder.cgroup, "libpod-" + id));
    auto c = portbroker::container_of_cgroup(lease->holder.cgroup);
    REQUIRE(c.has_value());
    CHECK(c->to_string() == "podman " + id.substr(0, 12));
    CHECK(lease->holder.pid != podman.pid());  // a process inside, seen in the host's pids
    CommandResult list = run_cli(d, {"list"});
    CHECK_MESSAGE(contains(list.out, "CONTAINER"), list.out);
    CHECK_MESSAGE(contains(list.out, "podman " + id.substr(0, 12)), list.out);
    CommandResult json = run_cli(d, {"list", "--json"});
    auto j = nlohmann::json::parse(json.out, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    bool named = false;
    for (const auto& l : j) {
      if (l["port"] == 18401) named = l["holder"]["container"]["name"] == id.substr(0, 12);
    }
    CHECK_MESSAGE(named, json.out);
    CommandResult who = run_cli(d, {"who", "18401"});
    CHECK_MESSAGE(contains(who.out, "container: podman " + id.substr(0, 12) + " (cgroup "),
                  who.out);

    for (int i = 0; i < 2; ++i) check_curl_reaches(source, 18401, podman);
    ExitStatus st = podman.wait(std::chrono::seconds(60));
    CHECK_MESSAGE(st.ok(), st.describe() << "\n" << podman.output());
    CHECK(d.wait_port_unleased(18401));
  }
  d.check_no_fd_leak();
}
