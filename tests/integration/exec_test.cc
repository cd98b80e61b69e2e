// The `portbroker` CLI: exec hands sockets over exactly as systemd socket activation does; list,
// status and release; exit codes 0 / 1 / 2.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "harness.h"

using namespace pbtest;

namespace {

std::map<std::string, std::string> parse_tokens(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  for (std::string tok; in >> tok;) {
    auto eq = tok.find('=');
    if (eq != std::string::npos) out[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  return out;
}

// The JSON document contains, somewhere, a number equal to `port` under a key named "port".
bool json_mentions_port(const nlohmann::json& j, int port) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "port" && it.value().is_number_integer() && it.value().get<int>() == port) {
        return true;
      }
      if (json_mentions_port(it.value(), port)) return true;
    }
  } else if (j.is_array()) {
    for (const auto& e : j) {
      if (json_mentions_port(e, port)) return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("exec passes LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES as systemd does") {
  FdLeakCheck fds;
  Daemon d;
  SpawnOptions opts{.env = d.client_env(), .stdout_to_lines = true};
  Child server = Child::exec({cli_path(), "exec", "--listen", "web=tcp:127.0.0.1:18080", "--",
                              self_exe(), "--pb-listen-fds-probe"},
                             opts);
  auto line = server.read_line();
  REQUIRE_MESSAGE(line.has_value(), "the probe reported nothing: " << server.output());
  auto t = parse_tokens(*line);
  INFO("probe: " << *line);
  CHECK(t["LISTEN_FDS"] == "1");
  CHECK(t["LISTEN_PID"] == t["PID"]);
  CHECK(t["PID"] == std::to_string(server.pid()));  // exec'd in place: same process
  CHECK(t["LISTEN_FDNAMES"] == "web");
  CHECK(t["fd3.type"] == "stream");
  CHECK(t["fd3.listening"] == "1");
  CHECK(t["fd3.port"] == "18080");
  CHECK(t["fd3.cloexec"] == "0");

  // While the command runs, the lease is listed with it as the holder.
  CommandResult list = run_cli(d, {"list"});
  CHECK_MESSAGE(list.status.ok(), list.describe());
  CHECK_MESSAGE(contains(list.out, "18080"), list.out);
  CommandResult json = run_cli(d, {"list", "--json"});
  REQUIRE_MESSAGE(json.status.ok(), json.describe());
  auto doc = nlohmann::json::parse(json.out, nullptr, /*allow_exceptions=*/false);
  REQUIRE_MESSAGE(!doc.is_discarded(), "list --json is not JSON:\n" << json.out);
  CHECK_MESSAGE(json_mentions_port(doc, 18080), json.out);
  auto leases = d.leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].port == 18080);
  CHECK(leases[0].name == "web");

  // A real connection is accepted and served.
  UniqueFd conn = connect_tcp(18080);
  REQUIRE(conn.valid());
  REQUIRE(send_all(conn.get(), "hello through exec\n"));
  CHECK(recv_line(conn.get()) == "hello through exec");
  conn.reset();

  ExitStatus st = server.wait();
  CHECK_MESSAGE(st.ok(), st.describe() << "\n" << server.output());
  // The leases lasted as long as the command ran, and no longer.
  CHECK(d.wait_port_unleased(18080));
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(18080); }));
  d.check_no_fd_leak();
}

TEST_CASE("exec with several sockets, TCP and UDP, in order") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "23000-23099"}});
  SpawnOptions opts{.env = d.client_env(), .stdout_to_lines = true};
  Child server = Child::exec(
      {cli_path(), "exec", "--listen", "a=tcp:127.0.0.1:0", "--listen", "b=udp:127.0.0.1:0",
       "--listen", "tcp:127.0.0.1:18081", "--", self_exe(), "--pb-listen-fds-probe"},
      opts);
  auto line = server.read_line();
  REQUIRE_MESSAGE(line.has_value(), server.output());
  auto t = parse_tokens(*line);
  INFO("probe: " << *line);
  CHECK(t["LISTEN_FDS"] == "3");
  CHECK(t["fd3.type"] == "stream");
  CHECK(t["fd4.type"] == "dgram");
  CHECK(t["fd5.type"] == "stream");
  CHECK(t["fd5.port"] == "18081");
  // Names in order; an unnamed socket is "unknown" in systemd's convention (or empty).
  CHECK((t["LISTEN_FDNAMES"] == "a:b:unknown" || t["LISTEN_FDNAMES"] == "a:b:"));
  int p3 = std::stoi(t["fd3.port"]);
  CHECK(p3 >= 23000);
  CHECK(p3 <= 23099);
  UniqueFd conn = connect_tcp(static_cast<uint16_t>(p3));
  REQUIRE(conn.valid());
  REQUIRE(send_all(conn.get(), "x\n"));
  CHECK(recv_line(conn.get()) == "x");
  CHECK(server.wait().ok());
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
  d.check_no_fd_leak();
}

TEST_CASE("exec passes on only stdio, the sockets and the session, unless --keep-fds") {
  FdLeakCheck fds;
  Daemon d;
  // An fd this process would pass on to anything it executes (no FD_CLOEXEC), at a number well
  // above the ones exec places.
  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  UniqueFd stray(::fcntl(read_end.get(), F_DUPFD_CLOEXEC, 40));
  REQUIRE(stray.valid());
  const std::string stray_fd = std::to_string(stray.get());

  for (bool keep : {false, true}) {
    CAPTURE(keep);
    SpawnOptions opts{.env = d.client_env(), .stdout_to_lines = true, .keep_fds = {stray.get()}};
    std::vector<std::string> argv = {cli_path(), "exec", "--listen", "tcp:127.0.0.1:18085"};
    if (keep) argv.push_back("--keep-fds");
    argv.insert(argv.end(), {"--", self_exe(), "--pb-listen-fds-probe"});
    Child server = Child::exec(argv, opts);
    auto line = server.read_line();
    REQUIRE_MESSAGE(line.has_value(), server.output());
    auto t = parse_tokens(*line);
    INFO("probe: " << *line);
    CHECK(t["LISTEN_FDS"] == "1");
    CHECK(t["fd3.listening"] == "1");
    // fd 3 the socket, fd 4 the session (PORTBROKER_SESSION_FD), and nothing else unless kept.
    CHECK(t["fds"] == (keep ? "3,4," + stray_fd : "3,4"));
    UniqueFd conn = connect_tcp(18085);
    REQUIRE(conn.valid());
    REQUIRE(send_all(conn.get(), "x\n"));
    CHECK(recv_line(conn.get()) == "x");
    CHECK(server.wait().ok());
    CHECK(d.wait_port_unleased(18085));
  }
  d.check_no_fd_leak();
}

TEST_CASE("exec: the command's exit code is passed through; failures exit 1, usage errors 2") {
  FdLeakCheck fds;
  Daemon d;
  CommandResult seven =
      run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:18082", "--", "/bin/sh", "-c", "exit 7"});
  CHECK_MESSAGE(seven.status.code == 7, seven.describe());
  CHECK(d.wait_port_unleased(18082));

  CommandResult missing =
      run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:18083", "--", "/nonexistent/program"});
  CHECK_MESSAGE(missing.status.code != 0, missing.describe());
  CHECK(contains(missing.out, "/nonexistent/program"));
  CHECK(d.wait_port_unleased(18083));

  CommandResult no_listen = run_cli(d, {"exec", "--", "/bin/true"});
  CHECK_MESSAGE(no_listen.status.code == 2, no_listen.describe());
  CommandResult bad_spec = run_cli(d, {"exec", "--listen", "tcp:nowhere:80", "--", "/bin/true"});
  CHECK_MESSAGE(bad_spec.status.code == 2, bad_spec.describe());
  CommandResult no_cmd = run_cli(d, {"exec", "--listen", "tcp:127.0.0.1:18084"});
  CHECK_MESSAGE(no_cmd.status.code == 2, no_cmd.describe());
  CommandResult unknown = run_cli(d, {"bogus"});
  CHECK_MESSAGE(unknown.status.code == 2, unknown.describe());
  CHECK(contains(unknown.out, "unknown command 'bogus'"));
  CHECK(d.leases().empty());
  d.check_no_fd_leak();
}

TEST_CASE("list, status and release from the CLI") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18090");

  CommandResult list = run_cli(d, {"list"});
  CHECK_MESSAGE(list.status.ok(), list.describe());
  CHECK(contains(list.out, "18090"));
  CHECK(contains(list.out, std::to_string(h.child.pid())));
  CHECK(contains(list.out, "pbholder"));

  CommandResult status = run_cli(d, {"status", "--json"});
  REQUIRE_MESSAGE(status.status.ok(), status.describe());
  auto doc = nlohmann::json::parse(status.out, nullptr, false);
  CHECK_MESSAGE(!doc.is_discarded(), "status --json is not JSON:\n" << status.out);
  CommandResult plain = run_cli(d, {"status"});
  CHECK_MESSAGE(plain.status.ok(), plain.describe());
  CHECK(contains(plain.out, std::to_string(d.pid())));

  // --socket works before or after the subcommand, without the environment variable.
  for (auto args :
       std::vector<std::vector<std::string>>{{cli_path(), "--socket", d.socket_path(), "list"},
                                             {cli_path(), "list", "--socket", d.socket_path()}}) {
    CommandResult r = run_command(args, {.unset_env = {"PORTBROKER_SOCKET"}});
    CHECK_MESSAGE(r.status.ok(), r.describe());
    CHECK(contains(r.out, "18090"));
  }
  // No daemon there: exit 1 with a reason.
  CommandResult nowhere = run_command({cli_path(), "--socket", d.dir() + "/nope.sock", "list"}, {});
  CHECK_MESSAGE(nowhere.status.code == 1, nowhere.describe());
  CHECK(contains(nowhere.out, "nope.sock"));

  CommandResult release = run_cli(d, {"release", std::to_string(h.lease.id)});
  CHECK_MESSAGE(release.status.ok(), release.describe());
  CHECK(d.wait_port_unleased(18090));
  CommandResult again = run_cli(d, {"release", std::to_string(h.lease.id)});
  CHECK_MESSAGE(again.status.code == 1, again.describe());
  CommandResult junk = run_cli(d, {"release", "not-a-number"});
  CHECK_MESSAGE(junk.status.code == 2, junk.describe());

  CHECK(run_cli(d, {"frobnicate"}).status.code == 2);
  CHECK(run_cli(d, {}).status.code == 2);
  for (const char* sub : {"list", "status", "release", "exec"}) {
    CommandResult help = run_cli(d, {sub, "--help"});
    CHECK_MESSAGE(help.status.ok(), sub << " --help: " << help.describe());
  }
  h.child.close_input();
  CHECK(h.child.wait().ok());
  d.check_no_fd_leak();
}
