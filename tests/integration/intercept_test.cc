// `portbroker exec --intercept`: servers that bind() by themselves get their sockets from the
// broker, as uid 65534 whose policy grants port 80 (which that uid could never bind itself in
// the test's network namespace): unmodified nginx and python's http.server, a conflict reaching
// nginx as EADDRINUSE with the holder named, pool ports, a reuseport group of two processes, a
// static binary calling the raw bind syscall (the seccomp supervisor), refusals, pass-through,
// fd flags, and no fd leaked anywhere.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"

using namespace pbtest;

namespace {

constexpr uid_t kNobody = 65534;

constexpr const char* kPolicy = R"([[rule]]
name = "web"
users = [65534]
ports = [80, 443]
protocol = "tcp"

[[rule]]
name = "apps"
users = [65534]
ports = "8000-8099"

[[pool]]
name = "default"
ports = "20000-20099"
users = ["*"]
)";

std::map<std::string, std::string> tokens(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  for (std::string tok; in >> tok;) {
    auto eq = tok.find('=');
    if (eq != std::string::npos) out[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return out;
}

std::vector<std::string> intercepted(const std::vector<std::string>& cmd,
                                     const std::vector<std::string>& exec_args = {}) {
  std::vector<std::string> argv{cli_path(), "exec", "--intercept"};
  argv.insert(argv.end(), exec_args.begin(), exec_args.end());
  argv.push_back("--");
  argv.insert(argv.end(), cmd.begin(), cmd.end());
  return argv;
}

SpawnOptions as_nobody(const Daemon& d) {
  return {
      .uid = kNobody, .env = d.client_env(), .stdout_to_lines = true, .stdin_from_parent = true};
}

// A probe (dynamic or static) under `exec --intercept`, its first line parsed.
struct Probe {
  Child child;
  std::string line;
  std::map<std::string, std::string> t;
};

Probe start_probe(const std::string& binary, const std::vector<std::string>& args,
                  SpawnOptions opts, const std::vector<std::string>& exec_args = {}) {
  std::vector<std::string> cmd{binary};
  cmd.insert(cmd.end(), args.begin(), args.end());
  Child c = Child::exec(intercepted(cmd, exec_args), opts);
  auto line = c.read_line();
  REQUIRE_MESSAGE(line.has_value(), "the probe reported nothing: " << c.output());
  auto t = tokens(*line);
  return Probe{std::move(c), *line, std::move(t)};
}

void finish(Probe& p) {
  p.child.send_line("exit");
  ExitStatus st = p.child.wait();
  CHECK_MESSAGE(st.ok(), st.describe() << "\n" << p.child.output());
}

std::optional<portbroker::LeaseInfo> lease_on(Daemon& d, uint16_t port) {
  for (auto& l : d.leases()) {
    if (l.port == port) return l;
  }
  return std::nullopt;
}

// Until `server` (nginx, python: seconds to start on a loaded machine) holds a lease on `port`:
// round trips to the daemon, bounded by a deadline, and never past the server's exit.
bool wait_leased(Daemon& d, Child& server, uint16_t port) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    if (lease_on(d, port)) return true;
    if (wait_fd(server.pidfd(), POLLIN, Clock::now())) return false;  // it exited
  }
  return false;
}

// One HTTP/1.0 GET of "/" on 127.0.0.1:port: the whole response.
std::string http_get(uint16_t port) {
  UniqueFd conn = connect_tcp(port);
  if (!conn.valid()) return {};
  if (!send_all(conn.get(), "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")) return {};
  std::string response;
  while (auto line = recv_line(conn.get())) response += *line + "\n";
  return response;
}

// A scratch directory uid 65534 may write in.
std::unique_ptr<TempDir> open_dir() {
  auto dir = std::make_unique<TempDir>();
  REQUIRE(::chmod(dir->path().c_str(), 0777) == 0);
  return dir;
}

std::string nginx_config(const TempDir& dir, const std::string& listen) {
  std::string p = dir.path();
  std::string conf = p + "/nginx.conf";
  std::ofstream out(conf);
  out << "daemon off;\nmaster_process on;\nworker_processes 1;\npid " << p
      << "/nginx.pid;\nerror_log stderr notice;\nevents { worker_connections 64; }\n"
      << "http {\n  access_log off;\n"
      << "  client_body_temp_path " << p << "/body;\n  proxy_temp_path " << p << "/proxy;\n"
      << "  fastcgi_temp_path " << p << "/fastcgi;\n  uwsgi_temp_path " << p << "/uwsgi;\n"
      << "  scgi_temp_path " << p << "/scgi;\n"
      << "  server {\n    listen " << listen << ";\n"
      << "    location / { return 200 \"hello from nginx\\n\"; }\n  }\n}\n";
  out.close();
  REQUIRE(static_cast<bool>(out));
  return conf;
}

std::vector<std::string> nginx_cmd(const TempDir& dir, const std::string& conf) {
  return {"/usr/sbin/nginx", "-e", "stderr", "-p", dir.path(), "-c", conf};
}

}  // namespace

TEST_CASE("unmodified nginx serves port 80 as uid 65534, holding the lease itself") {
  REQUIRE_MESSAGE(path_exists("/usr/sbin/nginx"),
                  "nginx-light is not installed "
                  "(packaging/install-deps.sh installs it)");
  if (!can_switch_uid()) {
    FAIL("the tests must run as root to start nginx as uid 65534");
  }
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  auto dir = open_dir();
  std::string conf = nginx_config(*dir, "80");
  Child nginx =
      Child::exec(intercepted(nginx_cmd(*dir, conf)), {.uid = kNobody, .env = d.client_env()});
  REQUIRE_MESSAGE(wait_leased(d, nginx, 80), nginx.output());
  std::string response = http_get(80);
  CHECK_MESSAGE(contains(response, "200 OK"), response << "\n" << nginx.output());
  CHECK_MESSAGE(contains(response, "hello from nginx"), response);

  auto lease = lease_on(d, 80);
  REQUIRE(lease.has_value());
  CHECK(lease->holder.pid == nginx.pid());  // the master, exec'd in place
  CHECK(lease->holder.comm == "nginx");
  CHECK(lease->holder.uid == kNobody);
  CHECK(lease->mode == portbroker::Mode::kExclusive);
  CHECK(lease->address.to_string() == "0.0.0.0");

  nginx.kill(SIGQUIT);  // graceful stop
  ExitStatus st = nginx.wait();
  CHECK_MESSAGE(st.ok(), st.describe() << "\n" << nginx.output());
  CHECK(d.wait_port_unleased(80));
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(80, "0.0.0.0"); }));
  d.check_no_fd_leak();
}

TEST_CASE("a conflict reaches nginx as EADDRINUSE, with the holder named on its stderr") {
  REQUIRE(path_exists("/usr/sbin/nginx"));
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  Holder h = spawn_holder(d, "tcp:0.0.0.0:80", {.uid = kNobody, .name = "pbholder"});
  auto dir = open_dir();
  std::string conf = nginx_config(*dir, "80");
  // nginx retries a failed bind five times, half a second apart, then gives up.
  Child nginx =
      Child::exec(intercepted(nginx_cmd(*dir, conf)), {.uid = kNobody, .env = d.client_env()});
  ExitStatus st = nginx.wait(std::chrono::seconds(60));
  CHECK_MESSAGE(!st.ok(), st.describe());
  const std::string out = nginx.output();
  INFO(out);
  CHECK(contains(out, "portbroker exec: tcp 0.0.0.0:80 is leased exclusively by pid " +
                          std::to_string(h.child.pid()) + " (pbholder, uid 65534)"));
  CHECK(contains(out, "bind() to 0.0.0.0:80 failed (98: Address already in use)"));
  auto lease = lease_on(d, 80);
  REQUIRE(lease.has_value());
  CHECK(lease->holder.pid == h.child.pid());  // untouched
  h.child.send_line("exit");
  CHECK(h.child.wait().ok());
  CHECK(d.wait_port_unleased(80));
  d.check_no_fd_leak();
}

TEST_CASE("python's http.server serves through the broker") {
  REQUIRE_MESSAGE(path_exists("/usr/bin/python3"), "python3 is not installed");
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  auto dir = open_dir();
  { std::ofstream(dir->file("index.html")) << "hello from python\n"; }
  Child py = Child::exec(intercepted({"/usr/bin/python3", "-m", "http.server", "8000", "--bind",
                                      "127.0.0.1", "--directory", dir->path()}),
                         {.uid = kNobody, .env = d.client_env()});
  REQUIRE_MESSAGE(wait_leased(d, py, 8000), py.output());
  std::string response = http_get(8000);
  CHECK_MESSAGE(contains(response, "hello from python"), response << "\n" << py.output());
  auto lease = lease_on(d, 8000);
  REQUIRE(lease.has_value());
  CHECK(lease->holder.pid == py.pid());
  CHECK(lease->holder.comm == "python3");
  py.kill(SIGTERM);
  py.wait();
  CHECK(d.wait_port_unleased(8000));
  d.check_no_fd_leak();
}

TEST_CASE("dynamic and static binaries: the lease, its holder, fd flags, pool ports") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  for (const std::string& probe : {std::string(PB_PROBE_PATH), std::string(PB_STATIC_PROBE_PATH)}) {
    const bool is_static = probe == PB_STATIC_PROBE_PATH;
    INFO((is_static ? "static (seccomp supervisor)" : "dynamic (preload library)"));
    SUBCASE("port 80, flags as the app set them") {
      for (bool flags : {false, true}) {
        std::vector<std::string> args{"tcp", "0.0.0.0", "80"};
        if (flags) args.insert(args.end(), {"nonblock", "cloexec"});
        Probe p = start_probe(probe, args, as_nobody(d));
        INFO(p.line << "\n" << p.child.output());
        CHECK(p.t["port"] == "80");
        CHECK(p.t["listening"] == "1");
        CHECK(p.t["nonblock"] == (flags ? "1" : "0"));
        CHECK(p.t["cloexec"] == (flags ? "1" : "0"));
        auto lease = lease_on(d, 80);
        REQUIRE(lease.has_value());
        CHECK(std::to_string(lease->holder.pid) == p.t["pid"]);
        CHECK(lease->holder.comm == "intercept_probe");  // both binaries, cut to 15 characters
        p.child.send_line("echo");
        UniqueFd conn = connect_tcp(80);
        REQUIRE(conn.valid());
        REQUIRE(send_all(conn.get(), "through the broker\n"));
        CHECK(recv_line(conn.get()) == "through the broker");
        CHECK(p.child.read_line() == "echoed");
        finish(p);
        CHECK(d.wait_port_unleased(80));
      }
    }
    SUBCASE("port 0 gets a pool port; UDP too") {
      Probe tcp = start_probe(probe, {"tcp", "127.0.0.1", "0"}, as_nobody(d));
      Probe udp = start_probe(probe, {"udp", "127.0.0.1", "0"}, as_nobody(d));
      INFO(tcp.line << " / " << udp.line);
      for (Probe* p : {&tcp, &udp}) {
        int port = std::stoi(p->t["port"]);
        CHECK(port >= 20000);
        CHECK(port <= 20099);
        CHECK(lease_on(d, static_cast<uint16_t>(port)).has_value());
      }
      auto l = lease_on(d, static_cast<uint16_t>(std::stoi(udp.t["port"])));
      REQUIRE(l.has_value());
      CHECK(l->protocol == portbroker::Protocol::kUdp);
      finish(tcp);
      finish(udp);
    }
    SUBCASE("two SO_REUSEPORT processes form one reuseport group") {
      Probe a = start_probe(probe, {"tcp", "127.0.0.1", "8081", "reuseport"}, as_nobody(d));
      Probe b = start_probe(probe, {"tcp", "127.0.0.1", "8081", "reuseport"}, as_nobody(d));
      INFO(a.line << " / " << b.line);
      CHECK(a.t["port"] == "8081");
      CHECK(b.t["port"] == "8081");
      CHECK(a.t["reuseport"] == "1");
      auto leases = d.leases();
      int members = 0;
      for (const auto& l : leases) {
        if (l.port == 8081 && l.mode == portbroker::Mode::kReuseport) ++members;
      }
      CHECK(members == 2);
      finish(a);
      finish(b);
    }
    SUBCASE("an ungranted port fails with EACCES and the reason on stderr") {
      Probe p = start_probe(probe, {"tcp", "127.0.0.1", "81"}, as_nobody(d));
      CHECK(p.t["errno"] == "EACCES");
      CHECK(p.child.wait().code == 1);
      const std::string out = p.child.output();
      CHECK_MESSAGE(contains(out, "portbroker exec: "), out);
      CHECK_MESSAGE(contains(out, "81"), out);
      CHECK(!lease_on(d, 81).has_value());
    }
    SUBCASE("a conflict fails with EADDRINUSE naming the holder") {
      Holder h = spawn_holder(d, "tcp:127.0.0.1:8082", {.uid = kNobody, .name = "pbholder"});
      Probe p = start_probe(probe, {"tcp", "127.0.0.1", "8082"}, as_nobody(d));
      CHECK(p.t["errno"] == "EADDRINUSE");
      CHECK(p.child.wait().code == 1);
      CHECK_MESSAGE(contains(p.child.output(),
                             "portbroker exec: tcp 127.0.0.1:8082 is leased exclusively by pid " +
                                 std::to_string(h.child.pid()) + " (pbholder, uid 65534) since"),
                    p.child.output());
      h.child.send_line("exit");
      CHECK(h.child.wait().ok());
    }
    SUBCASE("admin-excluded loopback ports pass through to the kernel") {
      Probe p = start_probe(probe, {"tcp", "127.0.0.1", "8090"}, as_nobody(d),
                            {"--pass-loopback", "8090-8091"});
      CHECK(p.t["port"] == "8090");
      CHECK(!lease_on(d, 8090).has_value());
      finish(p);
    }
  }
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
  d.check_no_fd_leak();
}

TEST_CASE("preload: closing the socket ends the lease; AF_UNIX binds pass through") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  Probe p = start_probe(PB_PROBE_PATH, {"tcp", "127.0.0.1", "8083"}, as_nobody(d));
  REQUIRE(p.t["port"] == "8083");
  REQUIRE(lease_on(d, 8083).has_value());
  p.child.send_line("close");
  CHECK(p.child.read_line() == "closed");
  CHECK(d.wait_port_unleased(8083));
  finish(p);

  auto dir = open_dir();
  CommandResult unix_bind = run_command(
      intercepted({"/usr/bin/python3", "-c",
                   "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
                   "print('unix bound')",
                   dir->file("sock")}),
      {.uid = kNobody, .env = d.client_env()});
  CHECK_MESSAGE(unix_bind.status.ok(), unix_bind.describe());
  CHECK(contains(unix_bind.out, "unix bound"));
  CHECK(d.leases().empty());
  d.check_no_fd_leak();
}

TEST_CASE("an intercepted lease lingers after its holder dies, like any lease") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  for (const std::string& probe : {std::string(PB_PROBE_PATH), std::string(PB_STATIC_PROBE_PATH)}) {
    INFO(probe);
    Probe p = start_probe(probe, {"tcp", "127.0.0.1", "8084"}, as_nobody(d), {"--linger", "60"});
    REQUIRE(p.t["port"] == "8084");
    p.child.kill(SIGKILL);
    p.child.wait();
    CHECK(d.wait_until([](portbroker::Client& c) {
      auto l = c.list();
      return l.ok() && l->size() == 1 && (*l)[0].state == "lingering" && (*l)[0].linger_s == 60;
    }));
    auto l = d.leases();
    REQUIRE(l.size() == 1);
    CHECK(d.connect().release(l[0].id).ok());  // root revokes it for the next round
    CHECK(d.wait_port_unleased(8084));
  }
  d.check_no_fd_leak();
}

namespace {

// Sends one command to a probe and returns its reply line.
std::string ask(Probe& p, const std::string& command) {
  p.child.send_line(command);
  auto line = p.child.read_line();
  REQUIRE_MESSAGE(line.has_value(), command << ": no reply\n" << p.child.output());
  return *line;
}

// Sends a command whose reply carries `key=VALUE`, and returns VALUE.
std::string ask_value(Probe& p, const std::string& command, const std::string& key) {
  auto reply = tokens(ask(p, command));
  REQUIRE_MESSAGE(!reply[key].empty(), command << ": " << p.child.output());
  return reply[key];
}

// The dynamic probe, holding a lease on 127.0.0.1:port.
Probe leasing_probe(Daemon& d, uint16_t port) {
  Probe p = start_probe(PB_PROBE_PATH, {"tcp", "127.0.0.1", std::to_string(port)}, as_nobody(d));
  REQUIRE_MESSAGE(p.t["port"] == std::to_string(port), p.line << "\n" << p.child.output());
  return p;
}

// Whether `port` is leased once every release the probe sent has been handled: the probe's
// "sync" is a round trip on its own session, which the daemon answers in order.
bool leased_after_sync(Daemon& d, Probe& p, uint16_t port) {
  REQUIRE(ask(p, "sync") == "synced");
  return lease_on(d, port).has_value();
}

}  // namespace

TEST_CASE("preload: a copy of the socket keeps the lease; closing the last copy ends it") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  struct Way {
    std::string command;
    std::string fd;  // the copy's number, when the command names it
    std::string cloexec;
  };
  for (const Way& way : {Way{"dup", "", "0"}, Way{"dup2 40", "40", "0"}, Way{"dup3 41", "41", "1"},
                         Way{"dupfd 50", "50", "1"}}) {
    INFO(way.command);
    Probe p = leasing_probe(d, 8085);
    auto copy = tokens(ask(p, way.command));
    REQUIRE_MESSAGE(!copy["fd"].empty(), p.child.output());
    if (!way.fd.empty()) CHECK(copy["fd"] == way.fd);
    CHECK(copy["cloexec"] == way.cloexec);
    REQUIRE(ask(p, "close") == "closed");
    CHECK(leased_after_sync(d, p, 8085));  // the copy keeps it
    REQUIRE(ask(p, "closefd " + copy["fd"]) == "closed");
    CHECK(!leased_after_sync(d, p, 8085));  // the last copy: it ended at once
    finish(p);
    CHECK(d.wait_port_unleased(8085));
  }
  d.check_no_fd_leak();
}

TEST_CASE("preload: dup2 onto a brokered socket ends that socket's lease, as close would") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  Probe p = leasing_probe(d, 8086);
  const std::string second = ask_value(p, "listen 8087", "fd");
  CHECK(leased_after_sync(d, p, 8087));
  // The kernel closes 8087's only socket to put a copy of 8086's in its place.
  CHECK(ask_value(p, "dup2 " + second, "fd") == second);
  CHECK(!leased_after_sync(d, p, 8087));
  REQUIRE(ask(p, "close") == "closed");
  CHECK(leased_after_sync(d, p, 8086));  // the copy at 8087's old number keeps it
  REQUIRE(ask(p, "closefd " + second) == "closed");
  CHECK(!leased_after_sync(d, p, 8086));
  finish(p);
  d.check_no_fd_leak();
}

TEST_CASE("preload: dup, dup2, dup3 and fcntl of other fds behave exactly as libc's") {
  FdLeakCheck fds;
  CommandResult plain = run_command({PB_FDCALLS_PATH});
  REQUIRE_MESSAGE(plain.status.ok(), plain.describe());
  CommandResult wrapped =
      run_command({PB_FDCALLS_PATH}, {.env = {{"LD_PRELOAD", PB_INTERCEPT_LIBRARY_PATH}}});
  REQUIRE_MESSAGE(wrapped.status.ok(), wrapped.describe());  // exit 3: not preloaded
  CHECK(wrapped.out == plain.out);
  // What the calls must have done, so that two equally broken runs cannot pass.
  const std::string ebadf = "errno=" + std::to_string(EBADF);
  const std::string einval = "errno=" + std::to_string(EINVAL);
  INFO(plain.out);
  CHECK(contains(plain.out, "dup of -1 ret=-1 " + ebadf));
  CHECK(contains(plain.out, "dup2 onto itself ret=3 errno=77"));
  CHECK(contains(plain.out, "dup3 onto itself ret=-1 " + einval));
  CHECK(contains(plain.out, "F_DUPFD_CLOEXEC 60 ret=60 errno=77\n  its F_GETFD ret=1"));
  CHECK(contains(plain.out, "fcntl64 F_DUPFD_CLOEXEC 70 ret=70 errno=77"));
  CHECK(contains(plain.out, "F_SETPIPE_SZ 131072 ret=131072"));
  CHECK(contains(plain.out, "F_OFD_GETLK from another open ret=0 errno=77 type=" +
                                std::to_string(F_WRLCK) + " whence=0 start=0 len=10 pid=-1"));
  CHECK(contains(plain.out, "F_GETLK with a bad pointer ret=-1 errno=" + std::to_string(EFAULT)));
  CHECK(contains(plain.out, "an unknown command ret=-1 " + einval));
  CHECK(contains(plain.out, "type=" + std::to_string(F_OWNER_PGRP) + " same group=1"));
}

TEST_CASE("preload: a thread with a cancellation pending binds and releases, then is cancelled") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  Probe p = leasing_probe(d, 8088);
  // Talking to the broker passes through cancellation points (sendmsg, recvmsg): cancelled
  // there, the thread would unwind through the library and abort the process.
  auto r = tokens(ask(p, "cancelbind 8089"));
  CHECK(r["bound"] == "1");
  CHECK(r["released"] == "1");
  CHECK(r["cancelled"] == "1");
  CHECK(!leased_after_sync(d, p, 8089));
  CHECK(lease_on(d, 8088).has_value());
  finish(p);
  d.check_no_fd_leak();
}

TEST_CASE(
    "preload: a forked child binds on its own session; the parent's lease outlives its close") {
  REQUIRE(can_switch_uid());
  FdLeakCheck fds;
  Daemon d({.config_text = kPolicy});
  Probe p = leasing_probe(d, 8085);
  const std::string child = ask_value(p, "forkbind 8086", "pid");
  CHECK(child != p.t["pid"]);
  auto lease = lease_on(d, 8086);
  REQUIRE(lease.has_value());
  CHECK(std::to_string(lease->holder.pid) == child);  // not the parent's pid, cached
  // The child holds a copy of the parent's socket on 8085: the parent's close keeps the lease.
  REQUIRE(ask(p, "close") == "closed");
  CHECK(leased_after_sync(d, p, 8085));
  CHECK(ask(p, "reap") == "reaped");
  CHECK(d.wait_port_unleased(8086));  // the child's session ended with it
  finish(p);
  CHECK(d.wait_port_unleased(8085));
  d.check_no_fd_leak();
}
