// Hostile and broken clients on the raw SEQPACKET protocol: each gets a clear error or a closed
// connection, changes nothing, costs the daemon no fd, and never stops it serving others.
#include <capnp/any.h>
#include <capnp/schema.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "harness.h"
#include "ipc/framing.h"
#include "ipc/wire.h"

using portbroker::ErrorCode;
using namespace pbtest;
namespace wire = portbroker::wire;

namespace {

// The daemon must answer with an error or hang up; a timeout means it neither did.
void expect_error_or_close(RawConn& c, const std::string& what,
                           std::optional<wire::ErrorCode> code = std::nullopt) {
  RawConn::Got got = c.recv(std::chrono::seconds(10));
  INFO("after " << what);
  switch (got) {
    case RawConn::Got::kClosed:
      break;
    case RawConn::Got::kReply: {
      auto r = c.reply();
      REQUIRE_MESSAGE(r.which() == wire::Reply::ERROR,
                      "expected an error reply, got " << c.describe_reply());
      CHECK(r.getError().getMessage().size() > 0);
      if (code) {
        CHECK_MESSAGE(r.getError().getCode() == *code, c.describe_reply());
      }
      CHECK(c.received_fds() == 0);
      break;
    }
    case RawConn::Got::kTimeout:
      FAIL("the daemon neither answered nor closed the connection within 10 s");
      break;
    default:
      FAIL("the daemon's answer was unreadable (" << static_cast<int>(got) << ")");
  }
}

// Another client is served normally.
void expect_serves_others(Daemon& d) {
  RawConn other(d.socket_path());
  capnp::MallocMessageBuilder msg;
  build_status(msg, wire::PROTOCOL_VERSION);
  REQUIRE(other.send_message(msg) == 0);
  REQUIRE_MESSAGE(other.recv(std::chrono::seconds(10)) == RawConn::Got::kReply,
                  "another client was not served");
  CHECK_MESSAGE(other.reply().which() == wire::Reply::STATUS, other.describe_reply());
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:0");
  CHECK_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().message));
}

// The daemon still serves, and holds no lease. (~Daemon then checks it leaked no fd, once the
// test's own clients are gone.)
void finish(Daemon& d) {
  expect_serves_others(d);
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
}

}  // namespace

TEST_CASE("garbage bytes") {
  FdLeakCheck fds;
  Daemon d;
  {
    RawConn c(d.socket_path());
    std::vector<uint8_t> junk(64, 0xff);  // segment count 2^32: not a Cap'n Proto message
    REQUIRE(c.send_raw(junk.data(), junk.size()) == 0);
    expect_error_or_close(c, "64 bytes of 0xff");
  }
  {
    RawConn c(d.socket_path());
    // A well-formed segment table announcing 1000 words, followed by only one.
    uint32_t words[4] = {0, 1000, 0, 0};
    REQUIRE(c.send_raw(words, sizeof(words)) == 0);
    expect_error_or_close(c, "a truncated message");
  }
  {
    RawConn c(d.socket_path());
    // A root pointer to a struct far outside the segment.
    uint32_t words[4] = {0, 1, 0x7ffffff0u << 2, 0x00010001u};
    REQUIRE(c.send_raw(words, sizeof(words)) == 0);
    expect_error_or_close(c, "an out-of-bounds pointer");
  }
  {
    RawConn c(d.socket_path());
    const char text[] = "GET / HTTP/1.0\r\n\r";  // 17 bytes: misaligned
    REQUIRE(c.send_raw(text, 17) == 0);
    expect_error_or_close(c, "a record whose length is not a whole number of words");
  }
  finish(d);
}

TEST_CASE("an oversize record") {
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  // A valid request padded beyond the 64 KiB record limit.
  capnp::MallocMessageBuilder msg;
  build_status(msg, wire::PROTOCOL_VERSION);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  std::vector<uint8_t> big(70000, 0);
  std::memcpy(big.data(), words.begin(), words.size() * sizeof(capnp::word));
  int one_meg = 1 << 20;
  ::setsockopt(c.fd(), SOL_SOCKET, SO_SNDBUF, &one_meg, sizeof(one_meg));
  REQUIRE(c.send_raw(big.data(), big.size()) == 0);
  expect_error_or_close(c, "a 70000-byte record");
  c.close();
  finish(d);
}

TEST_CASE("a record carrying an fd") {
  FdLeakCheck fds;
  Daemon d;
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  UniqueFd read_end(p[0]), write_end(p[1]);
  {
    RawConn c(d.socket_path());
    capnp::MallocMessageBuilder msg;
    build_status(msg, wire::PROTOCOL_VERSION);
    REQUIRE(c.send_message(msg, {write_end.get(), write_end.get()}) == 0);
    // Not served as if nothing were wrong: an error, or a hang-up.
    expect_error_or_close(c, "a status request carrying two fds");
  }
  // The daemon kept no copy: once ours is closed, the pipe has no writer left at all.
  write_end.reset();
  d.check_no_fd_leak();
  pollfd pfd{read_end.get(), POLLIN, 0};
  REQUIRE(::poll(&pfd, 1, 10000) == 1);
  char byte;
  CHECK_MESSAGE(::read(read_end.get(), &byte, 1) == 0,
                "a copy of the passed fd is still open somewhere (the daemon kept it)");
  finish(d);
}

TEST_CASE("an empty record") {
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  REQUIRE(c.send_raw("", 0) == 0);
  expect_error_or_close(c, "an empty record");
  c.close();
  finish(d);
}

TEST_CASE("an unknown request kind gets an error, not a disconnect") {
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  capnp::MallocMessageBuilder msg;
  build_status(msg, wire::PROTOCOL_VERSION);
  // Patch the union's discriminant to a member no version of the schema has (yet).
  auto node = capnp::Schema::from<wire::Request>().getProto().getStruct();
  auto data = capnp::AnyStruct::Builder(msg.getRoot<wire::Request>()).getDataSection();
  size_t at = node.getDiscriminantOffset() * 2;
  REQUIRE(at + 2 <= data.size());
  uint16_t unknown = 0x7fff;
  std::memcpy(data.begin() + at, &unknown, 2);
  REQUIRE(c.send_message(msg) == 0);
  REQUIRE(c.recv(std::chrono::seconds(10)) == RawConn::Got::kReply);
  auto r = c.reply();
  REQUIRE_MESSAGE(r.which() == wire::Reply::ERROR, c.describe_reply());
  CHECK_MESSAGE(r.getError().getCode() == wire::ErrorCode::UNKNOWN_REQUEST, c.describe_reply());

  // The connection stays usable.
  capnp::MallocMessageBuilder ok;
  build_status(ok, wire::PROTOCOL_VERSION);
  REQUIRE(c.send_message(ok) == 0);
  REQUIRE(c.recv(std::chrono::seconds(10)) == RawConn::Got::kReply);
  CHECK_MESSAGE(c.reply().which() == wire::Reply::STATUS, c.describe_reply());
  c.close();
  finish(d);
}

TEST_CASE("a connection that never sends a request is closed after --request-timeout") {
  FdLeakCheck fds;
  DaemonOptions opts;
  opts.args = {"--request-timeout", "0.2"};
  Daemon d(opts);
  RawConn silent(d.socket_path());
  // The daemon hangs up on its own; the bound is generous, the event is what is awaited.
  CHECK(silent.recv(std::chrono::seconds(20)) == RawConn::Got::kClosed);
  CHECK(d.log().find("no request within 200 ms") != std::string::npos);

  RawConn talker(d.socket_path());
  capnp::MallocMessageBuilder msg;
  build_status(msg, wire::PROTOCOL_VERSION);
  REQUIRE(talker.send_message(msg) == 0);
  REQUIRE(talker.recv(std::chrono::seconds(10)) == RawConn::Got::kReply);
  CHECK_MESSAGE(talker.reply().which() == wire::Reply::STATUS, talker.describe_reply());
  silent.close();
  talker.close();
  finish(d);
}

TEST_CASE("a wrong protocol version") {
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  capnp::MallocMessageBuilder msg;
  build_status(msg, 999);
  REQUIRE(c.send_message(msg) == 0);
  expect_error_or_close(c, "protocol version 999", wire::ErrorCode::UNSUPPORTED_VERSION);
  c.close();
  finish(d);
}

TEST_CASE("malformed acquire requests") {
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  {
    capnp::MallocMessageBuilder msg;
    auto req = msg.initRoot<wire::Request>();
    req.setVersion(wire::PROTOCOL_VERSION);
    auto list = req.initAcquire(1);
    list[0].setProtocol(wire::Protocol::TCP);
    list[0].initAddress(3);  // neither 4 nor 16 bytes
    list[0].setPort(18300);
    REQUIRE(c.send_message(msg) == 0);
    expect_error_or_close(c, "a 3-byte address", wire::ErrorCode::BAD_REQUEST);
  }
  {
    RawConn empty(d.socket_path());
    capnp::MallocMessageBuilder msg;
    auto req = msg.initRoot<wire::Request>();
    req.setVersion(wire::PROTOCOL_VERSION);
    req.initAcquire(0);
    REQUIRE(empty.send_message(msg) == 0);
    expect_error_or_close(empty, "an acquire of nothing");
  }
  {
    RawConn many(d.socket_path());
    std::vector<std::string> specs;
    for (int i = 0; i < 65; ++i) specs.push_back("tcp:127.0.0.1:" + std::to_string(18400 + i));
    capnp::MallocMessageBuilder msg;
    build_acquire(msg, specs);
    REQUIRE(many.send_message(msg) == 0);
    expect_error_or_close(many, "an acquire of 65 sockets (more than one record may carry)");
  }
  CHECK(d.leases().empty());
  finish(d);
}

TEST_CASE("a client that disconnects mid-request leaves nothing behind") {
  FdLeakCheck fds;
  Daemon d;
  for (int i = 0; i < 20; ++i) {
    RawConn c(d.socket_path());
    capnp::MallocMessageBuilder msg;
    build_acquire(msg, {"tcp:127.0.0.1:18300", "udp:127.0.0.1:18300"});
    REQUIRE(c.send_message(msg) == 0);
    c.close();  // before reading the grant (and its fds)
  }
  CHECK(d.wait_port_unleased(18300));
  CHECK(d.wait_until([](portbroker::Client&) { return port_free(18300); }));
  d.check_no_fd_leak();
  // The same from a process that dies right after asking.
  Child quitter = Child::run([path = d.socket_path()](ChildIo&) {
    auto fd = portbroker::ipc::connect_to(path);
    if (!fd) return 1;
    capnp::MallocMessageBuilder msg;
    auto req = msg.initRoot<wire::Request>();
    req.setVersion(wire::PROTOCOL_VERSION);
    auto spec = portbroker::parse_socket_spec("tcp:127.0.0.1:18300");
    if (!spec) return 2;
    portbroker::ipc::spec_to_wire(spec.value(), req.initAcquire(1)[0]);
    return portbroker::ipc::send_message(fd->get(), msg).ok() ? 0 : 3;
  });
  CHECK(quitter.wait().ok());
  CHECK(d.wait_port_unleased(18300));
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18300");
  CHECK_MESSAGE(lease.ok(), (lease.ok() ? "" : lease.error().message));
  lease = portbroker::Error{};
  finish(d);
}

TEST_CASE("the client library gives up on a daemon that never answers") {
  FdLeakCheck fds;
  TempDir dir;
  // A stand-in daemon that accepts and then says nothing.
  auto mute = portbroker::ipc::make_seqpacket_socket(false);
  REQUIRE(mute.ok());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string path = dir.file("mute.sock");
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  REQUIRE(::bind(mute->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(mute->get(), 4) == 0);

  ::setenv("PORTBROKER_TIMEOUT", "1", 1);
  auto client = portbroker::Client::connect(path);
  ::unsetenv("PORTBROKER_TIMEOUT");
  REQUIRE(client.ok());
  auto status = client->status();
  REQUIRE_FALSE(status.ok());
  CHECK(status.error().code == ErrorCode::kConnectionFailed);
  CHECK_MESSAGE(status.error().message.find("did not answer in time") != std::string::npos,
                status.error().message);
  // The connection was given up: a later request fails at once instead of reading a stale reply.
  auto again = client->status();
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().message.find("not connected") != std::string::npos);
}

TEST_CASE("a client that never reads its replies does not stall others") {
  FdLeakCheck fds;
  Daemon d;
  RawConn flooder(d.socket_path());
  RawConn idle(d.socket_path());  // connected, silent
  int fl = ::fcntl(flooder.fd(), F_GETFL);
  ::fcntl(flooder.fd(), F_SETFL, fl | O_NONBLOCK);
  capnp::MallocMessageBuilder msg;
  msg.initRoot<wire::Request>().setVersion(wire::PROTOCOL_VERSION);
  msg.getRoot<wire::Request>().setList();
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  // Hold some leases so that each list reply has some weight.
  portbroker::Client holder = d.connect();
  std::vector<portbroker::Lease> held;
  for (int i = 0; i < 20; ++i) {
    auto l = holder.acquire("tcp:127.0.0.1:" + std::to_string(18500 + i));
    REQUIRE_MESSAGE(l.ok(), l.error().message);
    held.push_back(std::move(l).value());
  }
  int sent = 0;
  for (; sent < 100000; ++sent) {
    ssize_t n = ::send(flooder.fd(), words.begin(), words.size() * sizeof(capnp::word),
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) break;
  }
  INFO("queued " << sent << " unread list requests");
  // Meanwhile another client is served promptly.
  RawConn other(d.socket_path());
  capnp::MallocMessageBuilder status;
  build_status(status, wire::PROTOCOL_VERSION);
  REQUIRE(other.send_message(status) == 0);
  CHECK_MESSAGE(other.recv(std::chrono::seconds(10)) == RawConn::Got::kReply,
                "a client that does not read its replies stalled the daemon");
  auto s = holder.status();
  CHECK(s.ok());
  flooder.close();
  idle.close();
  other.close();
  held.clear();
  finish(d);
}

TEST_CASE("small replies kept while a client does not read arrive whole, in order, once it does") {
  // The daemon writes a short reply in stack scratch; one its client's socket cannot take yet
  // is kept as a copy until the client reads.
  FdLeakCheck fds;
  Daemon d;
  RawConn c(d.socket_path());
  int fl = ::fcntl(c.fd(), F_GETFL);
  ::fcntl(c.fd(), F_SETFL, fl | O_NONBLOCK);
  capnp::MallocMessageBuilder status;
  build_status(status, wire::PROTOCOL_VERSION);
  int sent = 0;
  while (sent < 20000 && c.send_message(status) == 0) ++sent;
  INFO("sent " << sent << " status requests without reading");
  REQUIRE(sent > 100);
  ::fcntl(c.fd(), F_SETFL, fl);
  // The send failed because the daemon stopped reading: a reply of this client was waiting
  // for room. Every reply comes, in order.
  for (int got = 0; got < sent; ++got) {
    REQUIRE_MESSAGE(c.recv(std::chrono::seconds(10)) == RawConn::Got::kReply, "reply " << got);
    REQUIRE_MESSAGE(c.reply().which() == wire::Reply::STATUS, c.describe_reply());
    CHECK(c.reply().getStatus().getSocketPath() == d.socket_path());
  }
  c.close();
  finish(d);
}

TEST_CASE("per-uid limits: connections and leases") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: not root, so no child can become another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.args = {"--max-connections-per-uid", "3", "--max-leases-per-uid", "2"}});
  Child nobody = Child::run(
      [path = d.socket_path()](ChildIo& io) {
        std::vector<portbroker::Client> clients;
        for (int i = 0; i < 3; ++i) {
          auto c = portbroker::Client::connect(path);
          if (!c) {
            io.send_line("connect " + std::to_string(i) + " failed: " + c.error().message);
            return 1;
          }
          auto s = c->status();
          if (!s) {
            io.send_line("status " + std::to_string(i) + " failed: " + s.error().message);
            return 1;
          }
          clients.push_back(std::move(c).value());
        }
        io.send_line("three served");
        // A fourth connection of the same uid is refused.
        auto fourth = portbroker::Client::connect(path);
        if (fourth) {
          auto s = fourth->status();
          io.send_line(s ? "fourth served" : "fourth refused: " + s.error().message);
        } else {
          io.send_line("fourth refused: " + fourth.error().message);
        }
        // Leases: two granted, the third refused.
        std::vector<portbroker::Lease> leases;
        for (int i = 0; i < 3; ++i) {
          auto l = clients[0].acquire("tcp:127.0.0.1:0");
          if (l) {
            leases.push_back(std::move(l).value());
          } else {
            io.send_line("lease " + std::to_string(i) + " refused " +
                         std::to_string(static_cast<int>(l.error().code)) + ": " +
                         l.error().message);
          }
        }
        io.send_line("leases " + std::to_string(leases.size()));
        if (!io.read_line()) return 0;  // parent checks root is served meanwhile
        // Once its connections are gone, the uid may connect again.
        leases.clear();
        clients.clear();
        fourth = portbroker::Error{};
        for (int i = 0; i < 2000; ++i) {
          auto again = portbroker::Client::connect(path);
          if (again && again->status()) {
            io.send_line("served again");
            return 0;
          }
        }
        io.send_line("still refused");
        return 0;
      },
      {.uid = 65534, .name = "pbnobody"});
  CHECK(nobody.read_line() == "three served");
  auto fourth = nobody.read_line();
  REQUIRE(fourth.has_value());
  CHECK_MESSAGE(fourth->rfind("fourth refused", 0) == 0, *fourth);
  auto lease_refusal = nobody.read_line();
  REQUIRE(lease_refusal.has_value());
  CHECK_MESSAGE(
      lease_refusal->rfind(
          "lease 2 refused " + std::to_string(static_cast<int>(ErrorCode::kLimitExceeded)), 0) == 0,
      *lease_refusal);
  CHECK(nobody.read_line() == "leases 2");
  // Root is still served while uid 65534 is at its limit.
  portbroker::Client root = d.connect();
  CHECK(root.status().ok());
  auto rl = root.acquire("tcp:127.0.0.1:0");
  CHECK(rl.ok());
  rl = portbroker::Error{};
  nobody.send_line("continue");
  CHECK(nobody.read_line() == "served again");
  CHECK(nobody.wait().ok());
  finish(d);
}

TEST_CASE("running out of fds (EMFILE) is survived") {
  FdLeakCheck fds;
  Daemon d({.args = {"--max-connections-per-uid", "100000"}, .nofile_limit = 48});
  // A session established before the daemon runs out of fds.
  portbroker::Client c = d.connect();
  REQUIRE(c.status().ok());
  std::vector<UniqueFd> conns;
  int connected = 0;
  for (int i = 0; i < 60; ++i) {
    auto fd = portbroker::ipc::make_seqpacket_socket(/*nonblocking=*/true);
    REQUIRE(fd.ok());
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, d.socket_path().data(), d.socket_path().size());
    if (::connect(fd->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) break;
    ++connected;
    capnp::MallocMessageBuilder msg;
    build_status(msg, wire::PROTOCOL_VERSION);
    kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
    ::send(fd->get(), words.begin(), words.size() * sizeof(capnp::word), MSG_NOSIGNAL);
    conns.push_back(std::move(fd).value());
  }
  INFO("opened " << connected << " connections against a 48-fd limit");
  CHECK(connected > 48);
  // An acquire on an established session either works or fails cleanly.
  auto l = c.acquire("tcp:127.0.0.1:0");
  if (!l.ok()) {
    CHECK_MESSAGE(l.error().code == ErrorCode::kResourceExhausted,
                  "acquire at the fd limit: " << l.error().message);
  }
  l = portbroker::Error{};
  CHECK(d.alive());
  conns.clear();
  // Once the fds are back, everyone is served again.
  bool served = false;
  for (int i = 0; i < 2000 && !served; ++i) {
    auto again = portbroker::Client::connect(d.socket_path());
    served = again.ok() && again->status().ok();
  }
  CHECK_MESSAGE(served, "the daemon does not serve again after running out of fds");
  finish(d);
}
