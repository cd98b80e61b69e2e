// The examples shipped with portbroker really work against the daemon.
#include <doctest/doctest.h>

#include <cstdlib>

#include "harness.h"

using namespace pbtest;

namespace {

// Runs an echo-server example with `--count 1`: it must print "listening on PORT", echo one
// line over a real connection, hold a lease while it runs, and exit 0 releasing it.
void check_echo_server(Daemon& d, const std::string& program, const std::string& spec) {
  CAPTURE(program);
  SpawnOptions opts{.env = d.client_env(), .stdout_to_lines = true};
  Child server = Child::exec({example_path(program), spec, "--count", "1"}, opts);
  auto line = server.read_line();
  REQUIRE_MESSAGE(line.has_value(), "no output; " << server.output());
  REQUIRE_MESSAGE(line->rfind("listening on ", 0) == 0, *line);
  int port = std::atoi(line->c_str() + 13);
  REQUIRE(port > 0);

  auto leases = d.leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].port == port);
  CHECK(leases[0].holder.pid == server.pid());

  UniqueFd conn = connect_tcp(static_cast<uint16_t>(port));
  REQUIRE(conn.valid());
  REQUIRE(send_all(conn.get(), "hello from " + program + "\n"));
  CHECK(recv_line(conn.get()) == "hello from " + program);
  conn.reset();  // --count 1: the server exits after this connection
  ExitStatus st = server.wait();
  CHECK_MESSAGE(st.ok(), st.describe() << "\n" << server.output());
  CHECK(d.wait_port_unleased(static_cast<uint16_t>(port)));
}

}  // namespace

TEST_CASE("the C++ echo server gets its port from the library") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "24000-24009"}});
  check_echo_server(d, "echo_server", "tcp:127.0.0.1:0");
  check_echo_server(d, "echo_server", "tcp:127.0.0.1:18600");
  d.check_no_fd_leak();
}

TEST_CASE("the C echo server gets its port through the C ABI") {
  FdLeakCheck fds;
  Daemon d({.args = {"--pool", "24000-24009"}});
  check_echo_server(d, "echo_server_c", "tcp:127.0.0.1:0");
  d.check_no_fd_leak();
}

TEST_CASE("an echo server refused its port says why and exits 1") {
  FdLeakCheck fds;
  Daemon d;
  Holder h = spawn_holder(d, "tcp:127.0.0.1:18601");
  for (const char* program : {"echo_server", "echo_server_c"}) {
    CommandResult r =
        run_command({example_path(program), "tcp:127.0.0.1:18601"}, {.env = d.client_env()});
    CHECK_MESSAGE(r.status.code == 1, program << ": " << r.describe());
    CHECK_MESSAGE(r.out.find(std::to_string(h.child.pid())) != std::string::npos,
                  program << " should name the holder: " << r.out);
  }
  h.child.close_input();
  CHECK(h.child.wait().ok());
  d.check_no_fd_leak();
}

TEST_CASE("the LISTEN_FDS server runs unchanged under portbroker exec") {
  FdLeakCheck fds;
  Daemon d;
  SpawnOptions opts{.env = d.client_env(), .stdout_to_lines = true};
  Child server = Child::exec({cli_path(), "exec", "--listen", "echo=tcp:127.0.0.1:18602", "--",
                              example_path("listen_fds_server"), "--count", "1"},
                             opts);
  auto line = server.read_line();
  REQUIRE_MESSAGE(line.has_value(), "no output; " << server.output());
  CHECK(*line == "got 1 fds: echo");
  UniqueFd conn = connect_tcp(18602);
  REQUIRE(conn.valid());
  REQUIRE(send_all(conn.get(), "socket activated\n"));
  CHECK(recv_line(conn.get()) == "socket activated");
  conn.reset();
  ExitStatus st = server.wait();
  CHECK_MESSAGE(st.ok(), st.describe() << "\n" << server.output());
  CHECK(d.wait_port_unleased(18602));

  // Started without portbroker exec it refuses, as a socket-activated server does.
  CommandResult alone = run_command({example_path("listen_fds_server")});
  CHECK(alone.status.code == 1);
  d.check_no_fd_leak();
}
