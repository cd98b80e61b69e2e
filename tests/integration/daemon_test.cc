// The daemon's life: readiness, status, signals, its socket file (live, stale, planted symlink).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "harness.h"

using namespace pbtest;

namespace {

std::vector<std::string> base_args(const TempDir& dir) {
  return {"--socket", dir.file("portbroker.sock"), "--state-dir", dir.file("state"),
          "--config", dir.file("portbroker.toml"), "--log-level", "debug"};
}

}  // namespace

TEST_CASE("status describes the running daemon; the socket is open to every user") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  auto s = c.status();
  REQUIRE_MESSAGE(s.ok(), s.error().message);
  CHECK(s->pid == d.pid());
  CHECK(s->socket_path == d.socket_path());
  CHECK(s->pool_low == 20000);  // the default pool
  CHECK(s->pool_high == 29999);
  CHECK(s->leases == 0);
  CHECK(s->sessions >= 1);
  CHECK(!s->version.empty());
  CHECK_MESSAGE(s->open_fds == d.fd_count(), "status says " << s->open_fds << " open fds");
  struct stat st;
  REQUIRE(::stat(d.socket_path().c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK_MESSAGE((st.st_mode & 0777) == 0666, "socket mode " << std::oct << (st.st_mode & 0777));

  // Every request's log line names the peer's pid and uid.
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18700");
  h.child.close_input();
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(18700));
  std::string log = d.log();
  CHECK_MESSAGE(contains(log, "pid=" + std::to_string(h.child.pid())),
                "no log line names the acquiring peer pid=" << h.child.pid());
  CHECK(contains(log, "uid=0"));
  // ~Daemon checks for leaked fds once the client above is gone.
}

TEST_CASE("SIGTERM and SIGINT: clean exit, socket file removed, even with live sessions") {
  FdLeakCheck fds;
  for (int sig : {SIGTERM, SIGINT}) {
    CAPTURE(sig);
    Daemon d;
    Holder h = spawn_holder(d, "tcp:127.0.0.1:18701");
    d.stop(sig);  // CHECKs exit 0 and the socket file gone
    CHECK_FALSE(path_exists(d.socket_path()));
    h.child.close_input();
    CHECK(h.child.wait().ok());
  }
}

TEST_CASE("a second daemon on a live daemon's socket refuses to start") {
  FdLeakCheck fds;
  TempDir dir;
  Daemon first({.dir = &dir});
  FailedStart second = start_daemon_expect_failure(base_args(dir), dir);
  INFO("second daemon: " << second.result.describe());
  CHECK_FALSE(second.became_ready);
  CHECK(second.result.status.exited);
  CHECK(second.result.status.code != 0);
  CHECK_MESSAGE((contains(second.result.out, "already") || contains(second.result.out, "running")),
                "the refusal should say another daemon is running there");
  // The first is untouched: its socket file is in place and it serves.
  CHECK(path_exists(first.socket_path()));
  portbroker::Client c = first.connect();
  CHECK(c.status().ok());
  // ~Daemon checks for leaked fds once the client above is gone.
}

TEST_CASE("a stale socket of a dead daemon is replaced") {
  FdLeakCheck fds;
  TempDir dir;
  {
    Daemon crashed({.dir = &dir});
    crashed.kill_hard();
    REQUIRE_MESSAGE(path_exists(crashed.socket_path()), "SIGKILL should leave the socket file");
  }
  Daemon next({.dir = &dir});
  portbroker::Client c = next.connect();
  CHECK(c.status().ok());
  auto lease = c.acquire("tcp:127.0.0.1:18702");
  CHECK(lease.ok());
  lease = portbroker::Error{};
  // ~Daemon checks for leaked fds once the client above is gone.
}

TEST_CASE("a symlink planted at the socket path is refused") {
  FdLeakCheck fds;
  TempDir dir;
  SUBCASE("dangling symlink") {
    REQUIRE(::symlink(dir.file("elsewhere.sock").c_str(), dir.file("portbroker.sock").c_str()) ==
            0);
    FailedStart r = start_daemon_expect_failure(base_args(dir), dir);
    INFO("daemon: " << r.result.describe());
    CHECK_FALSE(r.became_ready);
    CHECK(r.result.status.exited);
    CHECK(r.result.status.code != 0);
    CHECK_MESSAGE((contains(r.result.out, "symlink") || contains(r.result.out, "symbolic link")),
                  "the refusal should say a symlink is in the way");
    CHECK_FALSE(path_exists(dir.file("elsewhere.sock")));
  }
  SUBCASE("symlink to a file of someone else's") {
    std::ofstream(dir.file("precious")) << "keep me\n";
    REQUIRE(::symlink(dir.file("precious").c_str(), dir.file("portbroker.sock").c_str()) == 0);
    FailedStart r = start_daemon_expect_failure(base_args(dir), dir);
    INFO("daemon: " << r.result.describe());
    CHECK_FALSE(r.became_ready);
    CHECK(r.result.status.code != 0);
    CHECK(read_file(dir.file("precious")) == "keep me\n");
  }
}

TEST_CASE("the daemon's command line: usage errors exit 2") {
  FdLeakCheck fds;
  CommandResult bad = run_command({daemon_path(), "--no-such-option"});
  CHECK_MESSAGE(bad.status.code == 2, bad.describe());
  CommandResult help = run_command({daemon_path(), "--help"});
  CHECK_MESSAGE(help.status.ok(), help.describe());
  CHECK(contains(help.out, "--socket"));
}

TEST_CASE("the socket's directory is created with safe permissions") {
  FdLeakCheck fds;
  TempDir dir;
  std::string sub = dir.file("run/portbroker");
  {
    Daemon d({.dir = &dir, .socket_path = sub + "/portbroker.sock"});
    struct stat st;
    REQUIRE(::stat(sub.c_str(), &st) == 0);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_MESSAGE((st.st_mode & 0022) == 0,
                  "the daemon's directory is writable by others: " << std::oct << st.st_mode);
    CHECK_MESSAGE((st.st_mode & 0005) == 0005,
                  "other users cannot reach the socket: " << std::oct << st.st_mode);
    portbroker::Client c = d.connect();
    CHECK(c.status().ok());
  }
}

TEST_CASE("a non-socket file at the socket path is left alone") {
  FdLeakCheck fds;
  TempDir dir;
  std::ofstream(dir.file("portbroker.sock")) << "not a socket\n";
  FailedStart r = start_daemon_expect_failure(base_args(dir), dir);
  INFO("daemon: " << r.result.describe());
  CHECK_FALSE(r.became_ready);
  CHECK(r.result.status.code != 0);
  CHECK(read_file(dir.file("portbroker.sock")) == "not a socket\n");
  CHECK(contains(r.result.out, "not a socket"));
}

TEST_CASE("stopping is not revoking: after SIGTERM a holder's listener still accepts") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18702");
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().message));
  d.stop(SIGTERM);
  UniqueFd conn = connect_tcp(18702);
  CHECK_MESSAGE(conn.valid(), "the holder's listener no longer accepts after the daemon stopped");
}

TEST_CASE("shutdown: root only; --revoke-all shuts every listener down") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18703");
  REQUIRE_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().message));
  if (can_switch_uid()) {
    CommandResult refused = run_cli(d, {"shutdown"}, {.uid = 65534});
    CHECK(refused.status.code == 1);
    CHECK(contains(refused.out, "shutdown is for root"));
    CHECK(c.status().ok());  // still serving
  }
  CommandResult down = run_cli(d, {"shutdown", "--revoke-all"});
  CHECK_MESSAGE(down.status.ok(), down.describe());
  d.wait_stopped();
  UniqueFd conn = connect_tcp(18703);
  CHECK_FALSE(conn.valid());
}
