// Every refusal is readable, and nothing a client does at will can be used as a weapon: a
// connection over a limit or arriving when the daemon is out of fds reads one error naming the
// limit; one uid cannot take so many of the daemon's fds that root is locked out; a flood of
// malformed records costs a bounded number of log lines with no raw client bytes; the socket's
// path is refused when any directory on it could be swapped by someone else.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "harness.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

using portbroker::ErrorCode;
using namespace pbtest;
namespace wire = portbroker::wire;

namespace {

std::vector<std::string> base_args(const TempDir& dir, const std::string& socket) {
  return {"--socket",        socket,     "--state-dir",
          dir.file("state"), "--config", dir.file("portbroker.toml")};
}

// The code and message of a refusal, as a line a child can send: "CODE MESSAGE".
std::string describe(const portbroker::Error& e) {
  return std::to_string(static_cast<int>(e.code)) + " " + e.message;
}

bool starts_with_code(const std::string& line, ErrorCode code) {
  return line.rfind(std::to_string(static_cast<int>(code)) + " ", 0) == 0;
}

}  // namespace

TEST_CASE("a connection over the per-uid cap reads the refusal naming the limit") {
  if (!can_switch_uid()) {
    MESSAGE("needs root to run a client as another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.args = {"--max-connections-per-uid", "2"}});
  const std::string path = d.socket_path();
  Child nobody = Child::run(
      [path](ChildIo& io) {
        auto a = portbroker::Client::connect(path);
        auto b = portbroker::Client::connect(path);
        if (!a || !b || !a->status() || !b->status()) {
          io.send_line("two not served");
          return 1;
        }
        io.send_line("two served");
        auto third = portbroker::Client::connect(path);
        if (!third) {
          io.send_line(describe(third.error()));
        } else if (auto st = third->status(); !st) {
          io.send_line(describe(st.error()));
        } else {
          io.send_line("third served");
        }
        io.read_line();  // holds its two connections until told
        return 0;
      },
      {.uid = 65534, .name = "pbcapped"});
  REQUIRE(nobody.read_line() == "two served");
  auto refusal = nobody.read_line();
  REQUIRE(refusal.has_value());
  CHECK_MESSAGE(starts_with_code(*refusal, ErrorCode::kLimitExceeded), *refusal);
  CHECK_MESSAGE(contains(*refusal, "uid 65534 already has 2 connections to portbrokerd (limit 2)"),
                *refusal);
  // The CLI says the same on stderr, not "Connection reset by peer".
  CommandResult cli = run_cli(d, {"status"}, {.uid = 65534});
  INFO("status as uid 65534: " << cli.describe());
  CHECK(cli.status.code == 1);
  CHECK(contains(cli.out, "(limit 2)"));
  CHECK_FALSE(contains(cli.out, "reset by peer"));
  nobody.send_line("done");
  CHECK(nobody.wait().ok());
}

TEST_CASE("a connection arriving when the daemon is out of fds reads why") {
  FdLeakCheck fds;
  Daemon d({.args = {"--max-connections-per-uid", "100000"}, .nofile_limit = 48});
  std::vector<UniqueFd> held;
  std::string refusal;
  for (int i = 0; i < 80 && refusal.empty(); ++i) {
    auto conn = portbroker::ipc::connect_to(d.socket_path());
    REQUIRE(conn.ok());
    capnp::MallocMessageBuilder msg;
    build_status(msg, wire::PROTOCOL_VERSION);
    REQUIRE(portbroker::ipc::send_message(conn->get(), msg).ok());
    portbroker::ipc::RecvBuffer buf;
    auto st = portbroker::ipc::recv_record(conn->get(), buf, true, false);
    if (st == portbroker::ipc::RecvStatus::kError && buf.error == ECONNRESET) {
      st = portbroker::ipc::recv_record(conn->get(), buf, true, false);
    }
    REQUIRE_MESSAGE(st == portbroker::ipc::RecvStatus::kRecord,
                    "connection " << i << " got neither a reply nor a refusal");
    capnp::FlatArrayMessageReader reader(buf.record(), portbroker::ipc::reader_options());
    auto reply = reader.getRoot<wire::Reply>();
    if (reply.isError()) {
      CHECK(reply.getError().getCode() == wire::ErrorCode::RESOURCE_EXHAUSTED);
      refusal = reply.getError().getMessage().cStr();
    } else {
      CHECK(reply.isStatus());
      held.push_back(std::move(conn).value());
    }
  }
  INFO("served " << held.size() << " connections before the refusal");
  CHECK_MESSAGE(contains(refusal, "out of file descriptors (its limit, RLIMIT_NOFILE, is 48)"),
                refusal);
  held.clear();
  CHECK(d.wait_until([](portbroker::Client& c) { return c.status().ok(); }));
}

TEST_CASE("one uid cannot take so many of the daemon's fds that root is locked out") {
  if (!can_switch_uid()) {
    MESSAGE("needs root to run a client as another uid");
    return;
  }
  FdLeakCheck fds;
  // 64 fds, as after `ulimit -n 64`: a uid's share is (64 - 32) / 2 = 16 (connections and
  // leases together).
  Daemon d({.nofile_limit = 64});
  const std::string path = d.socket_path();
  auto root_still_served = [&d] {
    std::vector<portbroker::Client> root;
    for (int i = 0; i < 4; ++i) {
      root.push_back(d.connect());
      auto st = root.back().status();
      CHECK_MESSAGE(st.ok(), st.error().message);
    }
    auto lease = root.front().acquire("tcp:127.0.0.1:0");
    CHECK_MESSAGE(lease.ok(), lease.error().message);
  };
  const uint32_t idle_sessions = d.connect().status()->sessions;

  SUBCASE("connections") {
    Child nobody = Child::run(
        [path](ChildIo& io) {
          std::vector<portbroker::Client> clients;
          for (int i = 0; i < 64; ++i) {
            auto c = portbroker::Client::connect(path);
            if (!c) {
              io.send_line("connect failed " + describe(c.error()));
              return 1;
            }
            if (auto st = c->status(); !st) {
              io.send_line("connection " + std::to_string(i) + " refused " + describe(st.error()));
              break;
            }
            clients.push_back(std::move(c).value());
          }
          io.read_line();
          return 0;
        },
        {.uid = 65534, .name = "pbgreedy"});
    auto refused = nobody.read_line();
    REQUIRE(refused.has_value());
    CHECK_MESSAGE(contains(*refused, "connection 16 refused " + std::to_string(static_cast<int>(
                                                                    ErrorCode::kLimitExceeded))),
                  *refused);
    CHECK_MESSAGE(contains(*refused, "one uid's share is 16 of its limit of 64"), *refused);
    root_still_served();
    nobody.send_line("done");
    CHECK(nobody.wait().ok());
  }
  SUBCASE("leases") {
    Child nobody = Child::run(
        [path](ChildIo& io) {
          auto c = portbroker::Client::connect(path);
          if (!c) return 1;
          std::vector<portbroker::Lease> leases;
          for (int i = 0; i < 64; ++i) {
            auto l = c->acquire("tcp:127.0.0.1:0");
            if (!l) {
              io.send_line("lease " + std::to_string(i) + " refused " + describe(l.error()));
              break;
            }
            leases.push_back(std::move(l).value());
          }
          io.read_line();
          return 0;
        },
        {.uid = 65534, .name = "pbgreedy"});
    auto refused = nobody.read_line();
    REQUIRE(refused.has_value());
    // One connection and 15 leases make 16.
    CHECK_MESSAGE(contains(*refused, "lease 15 refused"), *refused);
    CHECK_MESSAGE(contains(*refused, "share is 16"), *refused);
    root_still_served();
    nobody.send_line("done");
    CHECK(nobody.wait().ok());
  }
  CHECK(d.wait_until([&](portbroker::Client& c) {
    auto st = c.status();
    return st.ok() && st->sessions <= idle_sessions && st->leases == 0;
  }));
}

TEST_CASE("10,000 malformed records cost a bounded log, with no raw client bytes") {
  FdLeakCheck fds;
  Daemon d;  // logs at debug level
  // A segment table promising 1,000 words, then text where they should be.
  std::string record(32, '\0');
  record[4] = static_cast<char>(0xe8);  // 1000 = 0x3e8 words in segment 0
  record[5] = 0x03;
  std::memcpy(record.data() + 8, "EVILMARKER-in-the-log?", 22);
  const size_t log_before = d.log().size();
  RawConn c(d.socket_path());
  for (int i = 0; i < 10'000; ++i) {
    REQUIRE(c.send_raw(record.data(), record.size()) == 0);
    REQUIRE(c.recv(kDefaultTimeout) == RawConn::Got::kReply);
    REQUIRE(c.reply().isError());
  }
  CHECK(d.wait_until([](portbroker::Client& cl) { return cl.status().ok(); }));
  const std::string grown = d.log().substr(log_before);
  INFO("log after the flood:\n" << grown.substr(0, 4000));
  CHECK(grown.size() < 4096);
  CHECK_FALSE(contains(grown, "EVILMARKER"));
  CHECK(contains(grown, "malformed request: 00000000e8030000"));
}

TEST_CASE("the socket's path: every directory on it is checked, and who answers is named") {
  FdLeakCheck fds;
  TempDir dir;
  SUBCASE("a parent directory others may write to is refused, named") {
    const std::string open = dir.file("open");
    REQUIRE(::mkdir(open.c_str(), 0755) == 0);
    REQUIRE(::chmod(open.c_str(), 0777) == 0);
    FailedStart r = start_daemon_expect_failure(base_args(dir, open + "/run/portbroker.sock"), dir);
    INFO("daemon: " << r.result.describe());
    CHECK_FALSE(r.became_ready);
    CHECK(r.result.status.code != 0);
    CHECK(contains(r.result.out, "refusing to use " + open + ": others may write to it"));
  }
  SUBCASE("a parent directory of another user is refused, named") {
    const std::string theirs = dir.file("theirs");
    REQUIRE(::mkdir(theirs.c_str(), 0755) == 0);
    REQUIRE(::mkdir((theirs + "/run").c_str(), 0755) == 0);
    REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
    FailedStart r =
        start_daemon_expect_failure(base_args(dir, theirs + "/run/portbroker.sock"), dir);
    INFO("daemon: " << r.result.describe());
    CHECK_FALSE(r.became_ready);
    CHECK(contains(r.result.out, "refusing to use " + theirs + ": it belongs to uid 65534"));
  }
  SUBCASE("a root-owned sticky directory on the way is fine") {
    const std::string sticky = dir.file("sticky");
    REQUIRE(::mkdir(sticky.c_str(), 0755) == 0);
    REQUIRE(::chmod(sticky.c_str(), 01777) == 0);
    Daemon d({.dir = &dir, .socket_path = sticky + "/run/portbroker.sock"});
    CHECK(d.connect().status().ok());
  }
  SUBCASE("a process answering at the path is named, portbrokerd or not") {
    Daemon first({.dir = &dir});
    FailedStart twice = start_daemon_expect_failure(base_args(dir, first.socket_path()), dir);
    INFO("second daemon: " << twice.result.describe());
    CHECK_FALSE(twice.became_ready);
    CHECK(contains(twice.result.out,
                   "served by pid " + std::to_string(first.pid()) + " (portbrokerd, uid 0)"));

    const std::string foreign = dir.file("foreign.sock");
    UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, foreign.data(), foreign.size());
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listener.get(), 4) == 0);
    std::string comm = read_file("/proc/self/comm");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    FailedStart other = start_daemon_expect_failure(base_args(dir, foreign), dir);
    INFO("daemon: " << other.result.describe());
    CHECK_FALSE(other.became_ready);
    CHECK(contains(other.result.out,
                   "served by pid " + std::to_string(::getpid()) + " (" + comm + ", uid 0)"));
    ::unlink(foreign.c_str());
  }
}
