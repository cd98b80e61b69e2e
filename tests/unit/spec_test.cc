// The socket spec grammar: the one set of rules the CLI, the client library and the daemon
// (through spec_from_wire) share.
#include "portbroker/spec.hpp"

#include <arpa/inet.h>
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <string>

#include "ipc/wire.h"

namespace portbroker {
namespace {

bool same_options(const SocketOptions& a, const SocketOptions& b) {
  return a.backlog == b.backlog && a.v6only == b.v6only && a.reuseaddr == b.reuseaddr &&
         a.freebind == b.freebind && a.defer_accept == b.defer_accept && a.fastopen == b.fastopen &&
         a.keepalive == b.keepalive && a.rcvbuf == b.rcvbuf && a.sndbuf == b.sndbuf &&
         a.device == b.device;
}

bool same_spec(const SocketSpec& a, const SocketSpec& b) {
  return a.name == b.name && a.protocol == b.protocol && a.address == b.address &&
         a.port == b.port && a.mode == b.mode && same_options(a.options, b.options) &&
         a.linger == b.linger && a.token == b.token;
}

IpAddress ip(const char* text) {
  auto a = IpAddress::parse(text);
  REQUIRE_MESSAGE(a.ok(), text);
  return *a;
}

TEST_CASE("IpAddress parses IPv4 and IPv6, bracketed or not") {
  struct Case {
    const char* text;
    int family;
    const char* canonical;
    bool any;
  };
  const Case cases[] = {
      {"127.0.0.1", AF_INET, "127.0.0.1", false},
      {"0.0.0.0", AF_INET, "0.0.0.0", true},
      {"255.255.255.255", AF_INET, "255.255.255.255", false},
      {"::1", AF_INET6, "::1", false},
      {"[::1]", AF_INET6, "::1", false},
      {"::", AF_INET6, "::", true},
      {"[::]", AF_INET6, "::", true},
      {"0:0:0:0:0:0:0:1", AF_INET6, "::1", false},
      {"FE80::1", AF_INET6, "fe80::1", false},
      {"::ffff:10.0.0.1", AF_INET6, "::ffff:10.0.0.1", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto a = IpAddress::parse(c.text);
    REQUIRE(a.ok());
    CHECK(a->family == c.family);
    CHECK(a->to_string() == c.canonical);
    CHECK(a->is_any() == c.any);
  }
}

TEST_CASE("IpAddress rejects what is not a numeric address") {
  const char* cases[] = {
      "",         "[]",       "localhost", "1.2.3",        "1.2.3.4.5",  "256.0.0.1",
      "1.2.3.-4", " 1.2.3.4", "1.2.3.4 ",  "::g",          ":::",        "1::2::3",
      "[::1",     "::1]",     "[1.2.3.4]", "fe80::1%eth0", "1.2.3.4:80", "[[::1]]",
  };
  for (const char* text : cases) {
    CAPTURE(text);
    auto a = IpAddress::parse(text);
    REQUIRE_FALSE(a.ok());
    CHECK(a.error().code == ErrorCode::kBadRequest);
  }
}

TEST_CASE("IpAddress compares by value, not by spelling") {
  CHECK(ip("::1") == ip("0:0:0:0:0:0:0:1"));
  CHECK(ip("[::1]") == ip("::1"));
  CHECK_FALSE(ip("127.0.0.1") == ip("127.0.0.2"));
  CHECK_FALSE(ip("0.0.0.0") == ip("::"));  // different families, both "any"
  CHECK(ip("10.0.0.1") < ip("10.0.0.2"));
  CHECK(ip("255.255.255.255") < ip("::"));  // all IPv4 sort before IPv6
  CHECK_FALSE(ip("::1") < ip("::1"));
}

TEST_CASE("format_endpoint brackets IPv6 only") {
  CHECK(format_endpoint(Protocol::kTcp, ip("0.0.0.0"), 80) == "tcp 0.0.0.0:80");
  CHECK(format_endpoint(Protocol::kUdp, ip("::1"), 53) == "udp [::1]:53");
  CHECK(format_endpoint(Protocol::kUdp, ip("255.255.255.255"), 65535) ==
        "udp 255.255.255.255:65535");
  CHECK(format_endpoint(Protocol::kTcp, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), 0) ==
        "tcp [ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:0");
}

TEST_CASE("IpAddress::to_string writes what inet_ntop writes, and ? for no family") {
  // A dotted quad is formatted by hand (no sprintf): each octet's 1, 2 and 3 digit forms.
  for (unsigned v : {0u, 7u, 10u, 99u, 100u, 199u, 255u}) {
    for (size_t at = 0; at < 4; ++at) {
      IpAddress a;
      a.family = AF_INET;
      a.bytes = {1, 22, 133, 4};
      a.bytes[at] = static_cast<uint8_t>(v);
      char want[INET_ADDRSTRLEN];
      REQUIRE(::inet_ntop(AF_INET, a.bytes.data(), want, sizeof(want)) != nullptr);
      CHECK(a.to_string() == want);
    }
  }
  CHECK(ip("::ffff:10.0.0.1").to_string() == "::ffff:10.0.0.1");
  CHECK(IpAddress{}.to_string() == "?");
}

TEST_CASE("parse_decimal and parse_port take digits only") {
  CHECK(parse_decimal("0") == 0u);
  CHECK(parse_decimal("18446744073709551615") == UINT64_MAX);
  CHECK(parse_decimal("4294967294", 4294967294) == 4294967294u);
  CHECK_FALSE(parse_decimal("4294967295", 4294967294));
  for (const char* bad :
       {"", "-0", "-1", "+1", " 1", "1 ", "0x10", "1.0", "1e3", "a", "18446744073709551616"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_decimal(bad));
    CHECK_FALSE(parse_port(bad));
  }
  CHECK(parse_port("0") == 0);
  CHECK(parse_port("65535") == 65535);
  CHECK(parse_port("080") == 80);
  CHECK_FALSE(parse_port("65536"));
}

TEST_CASE("parse_port_range names what is wrong") {
  CHECK(parse_port_range("53").value() == PortRange{53, 53});
  CHECK(parse_port_range("8000-8099").value() == PortRange{8000, 8099});
  CHECK(PortRange{8000, 8099}.to_string() == "8000-8099");
  CHECK(PortRange{53, 53}.to_string() == "53");
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"0", "port 0 is out of range (1-65535)"},
      {"1-70000", "port 70000 is out of range (1-65535)"},
      {"90-80", "port range '90-80' is inverted (first > last)"},
      {"80x", "'80x' is not a port or port range (PORT or FIRST-LAST)"},
      {"80 - 90", "'80 - 90' is not a port or port range (PORT or FIRST-LAST)"},
  };
  for (const auto& c : cases) {
    auto r = parse_port_range(c.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kBadRequest);
    CHECK(r.error().message == c.message);
  }
}

TEST_CASE("ReservationTarget reads PROTO:ADDRESS:PORT[-PORT]") {
  auto tcp = ReservationTarget::parse("tcp:127.0.0.1:5432");
  REQUIRE(tcp.ok());
  CHECK(tcp->tcp);
  CHECK_FALSE(tcp->udp);
  CHECK(tcp->address == ip("127.0.0.1"));
  CHECK(tcp->ports == PortRange{5432, 5432});

  auto both = ReservationTarget::parse("both:any:8080-8090");
  REQUIRE(both.ok());
  CHECK(both->tcp);
  CHECK(both->udp);
  CHECK_FALSE(both->address);
  CHECK(both->ports == PortRange{8080, 8090});

  auto star = ReservationTarget::parse("udp:*:53");
  REQUIRE(star.ok());
  CHECK_FALSE(star->tcp);
  CHECK(star->udp);
  CHECK_FALSE(star->address);

  auto v6 = ReservationTarget::parse("udp:[::1]:53");
  REQUIRE(v6.ok());
  CHECK(v6->address == ip("::1"));

  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"tcp:1.2.3.4",
       "invalid reservation target 'tcp:1.2.3.4': expected PROTO:ADDRESS:PORT[-PORT]"},
      {"sctp:any:1",
       "invalid reservation target 'sctp:any:1': unknown protocol 'sctp' (tcp, udp or "
       "both)"},
      {"tcp:any:notaport",
       "invalid reservation target 'tcp:any:notaport': 'notaport' is not a port or port range "
       "(PORT or FIRST-LAST)"},
      {"tcp:any:90-80",
       "invalid reservation target 'tcp:any:90-80': port range '90-80' is inverted (first > last)"},
      {"tcp:example.com:80",
       "invalid reservation target 'tcp:example.com:80': 'example.com' is not an IPv4 or IPv6 "
       "address"},
  };
  for (const auto& c : cases) {
    auto r = ReservationTarget::parse(c.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kBadRequest);
    CHECK(r.error().message == c.message);
  }
}

TEST_CASE("parse_socket_spec accepts the documented forms") {
  struct Case {
    const char* text;
    const char* name;
    Protocol protocol;
    const char* address;
    uint16_t port;
    Mode mode;
  };
  const Case cases[] = {
      {"tcp:0.0.0.0:80", "", Protocol::kTcp, "0.0.0.0", 80, Mode::kExclusive},
      {"http=tcp:0.0.0.0:80", "http", Protocol::kTcp, "0.0.0.0", 80, Mode::kExclusive},
      {"tcp:[::]:0,reuseport,backlog=1024", "", Protocol::kTcp, "::", 0, Mode::kReuseport},
      {"udp:127.0.0.1:5353,shared", "", Protocol::kUdp, "127.0.0.1", 5353, Mode::kShared},
      {"tcp:127.0.0.1:65535", "", Protocol::kTcp, "127.0.0.1", 65535, Mode::kExclusive},
      {"tcp:127.0.0.1:0,exclusive", "", Protocol::kTcp, "127.0.0.1", 0, Mode::kExclusive},
      {"dns=udp:[::1]:53", "dns", Protocol::kUdp, "::1", 53, Mode::kExclusive},
      {"a-b_c.d=tcp:10.1.2.3:8080,shared", "a-b_c.d", Protocol::kTcp, "10.1.2.3", 8080,
       Mode::kShared},
      {"tcp:127.0.0.1:0080", "", Protocol::kTcp, "127.0.0.1", 80, Mode::kExclusive},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto spec = parse_socket_spec(c.text);
    REQUIRE_MESSAGE(spec.ok(), (spec.ok() ? "" : spec.error().message));
    CHECK(spec->name == c.name);
    CHECK(spec->protocol == c.protocol);
    CHECK(spec->address == ip(c.address));
    CHECK(spec->port == c.port);
    CHECK(spec->mode == c.mode);
  }
}

TEST_CASE("parse_socket_spec reads every option") {
  auto spec = parse_socket_spec(
      "tcp:[::1]:1,backlog=0,v6only=false,reuseaddr=off,freebind=yes,defer_accept=5,"
      "fastopen=16,keepalive=1,rcvbuf=4096,sndbuf=8192,device=lo");
  REQUIRE(spec.ok());
  const auto& o = spec->options;
  CHECK(o.backlog == 0);
  CHECK(o.v6only == false);
  CHECK(o.reuseaddr == false);
  CHECK(o.freebind == true);
  CHECK(o.defer_accept == 5);
  CHECK(o.fastopen == 16);
  CHECK(o.keepalive == true);
  CHECK(o.rcvbuf == 4096);
  CHECK(o.sndbuf == 8192);
  CHECK(o.device == "lo");

  auto bare = parse_socket_spec("tcp:[::1]:1,v6only,keepalive");
  REQUIRE(bare.ok());
  CHECK(bare->options.v6only == true);  // a bare boolean means true
  CHECK(bare->options.keepalive == true);
  CHECK_FALSE(bare->options.backlog.has_value());  // unset stays unset: the daemon decides

  auto udp = parse_socket_spec("udp:0.0.0.0:53,reuseaddr,rcvbuf=1,freebind=no");
  REQUIRE(udp.ok());
  CHECK(udp->options.rcvbuf == 1);
}

TEST_CASE("parse_socket_spec rejects malformed specs with a reason") {
  struct Case {
    std::string text;
    const char* why;  // a fragment of the message
  };
  const Case cases[] = {
      {"", "expected PROTO:ADDRESS:PORT"},
      {"tcp", "expected PROTO:ADDRESS:PORT"},
      {"tcp:127.0.0.1", "expected PROTO:ADDRESS:PORT"},
      {"tcp:127.0.0.1:", "port"},
      {"sctp:127.0.0.1:80", "protocol"},
      {"TCP:127.0.0.1:80", "protocol"},
      {":127.0.0.1:80", "protocol"},
      {"tcp:127.0.0.1:65536", "port"},
      {"tcp:127.0.0.1:-1", "port"},
      {"tcp:127.0.0.1:+80", "port"},
      {"tcp:127.0.0.1:80x", "port"},
      {"tcp:127.0.0.1: 80", "port"},
      {"tcp:127.0.0.1:99999999999999999999", "port"},
      {"tcp:::1:80", "brackets"},
      {"tcp:fe80::1:80", "brackets"},
      {"tcp:[::1:80", "brackets"},
      {"tcp:[::1]80", "brackets"},
      {"tcp::80", "address"},
      {"tcp:localhost:80", "address"},
      {"tcp:[127.0.0.1]:80", "address"},
      {"tcp:[fe80::1%eth0]:80", "address"},
      {"tcp:127.0.0.1:80,bogus", "unknown option 'bogus'"},
      {"tcp:127.0.0.1:80,Shared", "unknown option"},
      {"tcp:127.0.0.1:80,shared,reuseport", "more than one mode"},
      {"tcp:127.0.0.1:80,shared,shared", "more than one mode"},
      {"tcp:127.0.0.1:80,exclusive,shared", "more than one mode"},
      {"tcp:127.0.0.1:80,shared=1", "takes no value"},
      {"udp:127.0.0.1:53,backlog=5", "TCP options"},
      {"udp:127.0.0.1:53,defer_accept=1", "TCP options"},
      {"udp:127.0.0.1:53,fastopen=1", "TCP options"},
      {"udp:127.0.0.1:53,keepalive", "TCP options"},
      {"tcp:127.0.0.1:80,backlog", "needs a value"},
      {"tcp:127.0.0.1:80,backlog=", "whole number"},
      {"tcp:127.0.0.1:80,backlog=65536", "whole number"},
      {"tcp:127.0.0.1:80,backlog=-1", "whole number"},
      {"tcp:127.0.0.1:80,backlog=abc", "whole number"},
      {"tcp:127.0.0.1:80,defer_accept=3601", "whole number"},
      {"tcp:127.0.0.1:80,rcvbuf=0", "whole number"},
      {"tcp:127.0.0.1:80,sndbuf=2147483648", "whole number"},
      {"tcp:127.0.0.1:80,keepalive=maybe", "true or false"},
      {"tcp:127.0.0.1:80,v6only", "IPv6 addresses only"},
      {"tcp:127.0.0.1:80,,", "empty option"},
      {"tcp:127.0.0.1:80,", "empty option"},
      {"tcp:127.0.0.1:80,shared,", "empty option"},
      {"tcp:127.0.0.1:80,,shared", "empty option"},
      {"tcp:127.0.0.1:80,device=", "interface name"},
      {"tcp:127.0.0.1:80,device", "interface name"},
      {"tcp:127.0.0.1:80,device=abcdefghijklmnop", "interface name"},
      {"tcp:127.0.0.1:80,device=a/b", "interface name"},
      {"=tcp:127.0.0.1:80", "name"},
      {"a b=tcp:127.0.0.1:80", "name"},
      {"a:b=tcp:127.0.0.1:80", "name"},
      {"caf\xc3\xa9=tcp:127.0.0.1:80", "name"},
      {std::string(256, 'n') + "=tcp:127.0.0.1:80", "name"},
      {"x=y=tcp:127.0.0.1:80", "protocol"},
      {"tcp:127.0.0.1:80,device=" + std::string(1100, 'd'), "longer than 1024"},
      {"tcp:127.0.0.1:80,linger=3601", "seconds from 0 to 3600"},
      {"tcp:127.0.0.1:80,linger", "seconds from 0 to 3600"},
      {"tcp:127.0.0.1:80,token=abc", "32 hex digits"},
      {"tcp:127.0.0.1:80,token=0123456789ABCDEF0123456789ABCDEF", "32 hex digits"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto spec = parse_socket_spec(c.text);
    REQUIRE_FALSE(spec.ok());
    CHECK(spec.error().code == ErrorCode::kBadRequest);
    CHECK_MESSAGE(spec.error().message.rfind("invalid socket spec", 0) == 0, spec.error().message);
    CHECK_MESSAGE(spec.error().message.find(c.why) != std::string::npos, spec.error().message);
  }
}

TEST_CASE("a name of 255 characters is the longest allowed") {
  CHECK(parse_socket_spec(std::string(255, 'n') + "=tcp:127.0.0.1:80").ok());
}

const char* const kRoundTrip[] = {
    "tcp:0.0.0.0:80",
    "http=tcp:0.0.0.0:80",
    "tcp:[::]:0,reuseport,backlog=1024",
    "udp:127.0.0.1:5353,shared",
    "dns=udp:[::1]:53,reuseaddr=false,rcvbuf=65536",
    "tcp:[::1]:1,backlog=0,v6only=false,reuseaddr=true,freebind=true,defer_accept=5,"
    "fastopen=16,keepalive=true,rcvbuf=4096,sndbuf=8192,device=lo",
    "web=tcp:0.0.0.0:8080,linger=30,token=0123456789abcdef0123456789abcdef",
};

TEST_CASE("format_socket_spec is the inverse of parse_socket_spec") {
  for (const char* text : kRoundTrip) {
    CAPTURE(text);
    auto spec = parse_socket_spec(text);
    REQUIRE(spec.ok());
    CHECK(format_socket_spec(*spec) == text);  // these are already in canonical form
    auto again = parse_socket_spec(format_socket_spec(*spec));
    REQUIRE(again.ok());
    CHECK(same_spec(*spec, *again));
  }
}

TEST_CASE("format_socket_spec writes the canonical form") {
  struct Case {
    const char* text;
    const char* canonical;
  };
  const Case cases[] = {
      {"tcp:0.0.0.0:80,exclusive", "tcp:0.0.0.0:80"},
      {"tcp:[0:0::0]:080", "tcp:[::]:80"},
      {"tcp:[::1]:1,v6only,keepalive=on", "tcp:[::1]:1,v6only=true,keepalive=true"},
      {"tcp:1.2.3.4:5,sndbuf=1,backlog=7,shared", "tcp:1.2.3.4:5,shared,backlog=7,sndbuf=1"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    auto spec = parse_socket_spec(c.text);
    REQUIRE(spec.ok());
    CHECK(format_socket_spec(*spec) == c.canonical);
  }
}

// Serializes `spec` the way a client does and reads it back the way the daemon does.
Result<SocketSpec> through_wire(const SocketSpec& spec) {
  capnp::MallocMessageBuilder message;
  ipc::spec_to_wire(spec, message.initRoot<wire::SocketRequest>());
  auto words = capnp::messageToFlatArray(message);
  capnp::FlatArrayMessageReader reader(words);
  return ipc::spec_from_wire(reader.getRoot<wire::SocketRequest>());
}

TEST_CASE("specs survive spec_to_wire / spec_from_wire unchanged") {
  for (const char* text : kRoundTrip) {
    CAPTURE(text);
    auto spec = parse_socket_spec(text);
    REQUIRE(spec.ok());
    auto back = through_wire(*spec);
    REQUIRE_MESSAGE(back.ok(), (back.ok() ? "" : back.error().message));
    CHECK(same_spec(*spec, *back));
  }
}

TEST_CASE("spec_from_wire applies the text rules to what the wire carries") {
  auto base = parse_socket_spec("tcp:127.0.0.1:80");
  REQUIRE(base.ok());

  SUBCASE("UDP with a TCP-only option") {
    SocketSpec s = *base;
    s.protocol = Protocol::kUdp;
    s.options.backlog = 5;
    auto r = through_wire(s);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kInvalidOption);
  }
  SUBCASE("a name that cannot go into LISTEN_FDNAMES") {
    SocketSpec s = *base;
    s.name = "a:b";
    CHECK_FALSE(through_wire(s).ok());
  }
  SUBCASE("v6only on an IPv4 address") {
    SocketSpec s = *base;
    s.options.v6only = true;
    CHECK_FALSE(through_wire(s).ok());
  }
  SUBCASE("an out-of-range option value") {
    SocketSpec s = *base;
    s.options.backlog = -1;
    CHECK_FALSE(through_wire(s).ok());
  }
}

TEST_CASE("spec_from_wire rejects malformed wire fields") {
  auto base = parse_socket_spec("tcp:127.0.0.1:80");
  REQUIRE(base.ok());
  auto read_back = [](capnp::MallocMessageBuilder& message) {
    auto words = capnp::messageToFlatArray(message);
    capnp::FlatArrayMessageReader reader(words);
    return ipc::spec_from_wire(reader.getRoot<wire::SocketRequest>());
  };

  SUBCASE("an address of the wrong length") {
    capnp::MallocMessageBuilder message;
    auto req = message.initRoot<wire::SocketRequest>();
    ipc::spec_to_wire(*base, req);
    const uint8_t five[5] = {1, 2, 3, 4, 5};
    req.setAddress(capnp::Data::Reader(five, sizeof(five)));
    auto r = read_back(message);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::kBadRequest);
  }
  SUBCASE("no address at all") {
    capnp::MallocMessageBuilder message;
    auto req = message.initRoot<wire::SocketRequest>();
    req.setPort(80);
    CHECK_FALSE(read_back(message).ok());
  }
  SUBCASE("an unknown protocol") {
    capnp::MallocMessageBuilder message;
    auto req = message.initRoot<wire::SocketRequest>();
    ipc::spec_to_wire(*base, req);
    req.setProtocol(static_cast<wire::Protocol>(7));
    CHECK_FALSE(read_back(message).ok());
  }
  SUBCASE("an unknown mode") {
    capnp::MallocMessageBuilder message;
    auto req = message.initRoot<wire::SocketRequest>();
    ipc::spec_to_wire(*base, req);
    req.setMode(static_cast<wire::Mode>(9));
    CHECK_FALSE(read_back(message).ok());
  }
}

TEST_CASE("error codes map to and from the wire") {
  for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
    auto code = static_cast<ErrorCode>(c);
    CAPTURE(c);
    CHECK(ipc::error_code_from_wire(ipc::error_code_to_wire(code)) == code);
    CHECK(std::string(error_code_name(code)) != "unknown");
  }
  // A newer daemon's code that this client does not know degrades to kInternal.
  CHECK(ipc::error_code_from_wire(static_cast<wire::ErrorCode>(999)) == ErrorCode::kInternal);
}

}  // namespace
}  // namespace portbroker
