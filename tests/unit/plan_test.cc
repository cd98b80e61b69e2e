// client/intercept/plan: which binds `exec --intercept` brokers, the spec read off the app's
// socket, and the errno a refusal becomes.
#include "client/intercept/plan.h"

#include <doctest/doctest.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>
#include <unistd.h>

using namespace portbroker;
using namespace portbroker::intercept;

namespace {

sockaddr_in v4(uint16_t port, uint32_t host_order_addr) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(host_order_addr);
  return a;
}

}  // namespace

TEST_CASE("plan: only whole AF_INET / AF_INET6 addresses are brokered") {
  sockaddr_in a = v4(80, INADDR_ANY);
  auto t = bind_target(reinterpret_cast<sockaddr*>(&a), sizeof(a));
  REQUIRE(t.has_value());
  CHECK(t->port == 80);
  CHECK(t->address.to_string() == "0.0.0.0");
  CHECK(!bind_target(reinterpret_cast<sockaddr*>(&a), sizeof(a) - 1).has_value());
  CHECK(!bind_target(nullptr, 0).has_value());

  sockaddr_un u{};
  u.sun_family = AF_UNIX;
  CHECK(!bind_target(reinterpret_cast<sockaddr*>(&u), sizeof(u)).has_value());

  sockaddr_in6 s6{};
  s6.sin6_family = AF_INET6;
  s6.sin6_port = htons(8080);
  auto t6 = bind_target(reinterpret_cast<sockaddr*>(&s6), sizeof(s6));
  REQUIRE(t6.has_value());
  CHECK(t6->port == 8080);
  s6.sin6_scope_id = 2;  // link-local with a scope: the kernel's
  CHECK(!bind_target(reinterpret_cast<sockaddr*>(&s6), sizeof(s6)).has_value());
}

TEST_CASE("plan: the loopback pass list") {
  auto pass = PassList::parse("8000-8099,9000");
  REQUIRE(pass.ok());
  auto lo = IpAddress::parse("127.0.0.5");
  auto any = IpAddress::parse("0.0.0.0");
  auto lo6 = IpAddress::parse("::1");
  REQUIRE((lo.ok() && any.ok() && lo6.ok()));
  CHECK(pass->passes(*lo, 8050));
  CHECK(pass->passes(*lo6, 9000));
  CHECK(!pass->passes(*lo, 9001));
  CHECK(!pass->passes(*any, 8050));  // loopback only
  for (const char* bad : {"", "x", "0", "90-80", "80,", "1-70000"}) {
    INFO(bad);
    CHECK(!PassList::parse(bad).ok());
  }
}

TEST_CASE("plan: the spec read off a socket carries the app's pre-bind options") {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  int one = 1, buf = 100000, defer = 5;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  ::setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer));
  BindTarget target{IpAddress::parse("::").value(), 0};
  auto spec = spec_for_socket(fd, target);
  REQUIRE(spec.has_value());
  CHECK(spec->protocol == Protocol::kTcp);
  CHECK(spec->mode == Mode::kReuseport);
  CHECK(spec->options.v6only == true);
  CHECK(spec->options.rcvbuf == 100000);
  CHECK(spec->options.defer_accept.value_or(0) >= 5);
  CHECK(validate_socket_spec(*spec).ok());
  // The address family must match the socket's.
  CHECK(!spec_for_socket(fd, BindTarget{IpAddress::parse("0.0.0.0").value(), 0}).has_value());
  ::close(fd);

  int raw = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
  if (raw >= 0) {  // not TCP or UDP: the kernel's
    CHECK(!spec_for_socket(raw, BindTarget{IpAddress::parse("0.0.0.0").value(), 0}).has_value());
    ::close(raw);
  }
  CHECK(!spec_for_socket(-1, BindTarget{IpAddress::parse("0.0.0.0").value(), 0}).has_value());
}

TEST_CASE("plan: buffer sizes are carried only when the app set them, for every family and type") {
  // The defaults are learned once per process (family, type); each socket is read twice so the
  // second read answers from what the first learned.
  for (int family : {AF_INET, AF_INET6}) {
    for (int type : {SOCK_STREAM, SOCK_DGRAM}) {
      INFO("family " << family << " type " << type);
      BindTarget target{IpAddress::parse(family == AF_INET ? "127.0.0.1" : "::1").value(), 0};
      int fresh = ::socket(family, type | SOCK_CLOEXEC, 0);
      int sized = ::socket(family, type | SOCK_CLOEXEC, 0);
      REQUIRE((fresh >= 0 && sized >= 0));
      int rcv = 50000, snd = 60000;
      REQUIRE(::setsockopt(sized, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) == 0);
      REQUIRE(::setsockopt(sized, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) == 0);
      for (int round = 0; round < 2; ++round) {
        auto plain = spec_for_socket(fresh, target);
        REQUIRE(plain.has_value());
        CHECK(!plain->options.rcvbuf.has_value());
        CHECK(!plain->options.sndbuf.has_value());
        auto spec = spec_for_socket(sized, target);
        REQUIRE(spec.has_value());
        CHECK(spec->options.rcvbuf == 50000);
        CHECK(spec->options.sndbuf == 60000);
      }
      ::close(fresh);
      ::close(sized);
    }
  }
}

TEST_CASE("plan: refusals become the kernel's errnos") {
  CHECK(errno_for({ErrorCode::kConflict, ""}) == EADDRINUSE);
  CHECK(errno_for({ErrorCode::kInUseOutside, ""}) == EADDRINUSE);
  CHECK(errno_for({ErrorCode::kNoFreePort, ""}) == EADDRINUSE);
  CHECK(errno_for({ErrorCode::kPermissionDenied, ""}) == EACCES);
  CHECK(errno_for({ErrorCode::kAddressUnavailable, ""}) == EADDRNOTAVAIL);
  CHECK(refusal_line({ErrorCode::kConflict, "tcp 0.0.0.0:80 is leased"}) ==
        "portbroker exec: tcp 0.0.0.0:80 is leased\n");
}
