// The codec (ipc/codec.h): every request and reply kind survives a trip through a flat record
// read back under the production reader limits, and hostile values decode to an Error.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "ipc/codec.h"
#include "ipc/framing.h"

namespace portbroker {
namespace {

// Encodes into a fresh message, flattens it as send_message does, reads it back as the peer
// would and hands the root to `decode`. Decoded values own their data, so they outlive the
// reader.
template <typename Root, typename Encode, typename Decode>
auto round_trip(Encode encode, Decode decode) {
  capnp::MallocMessageBuilder message;
  encode(message.initRoot<Root>());
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
  capnp::FlatArrayMessageReader reader(flat, ipc::reader_options());
  return decode(reader.getRoot<Root>());
}

IpAddress ip(const char* text) { return IpAddress::parse(text).value(); }

SocketSpec spec(const char* text) {
  auto parsed = parse_socket_spec(text);
  REQUIRE_MESSAGE(parsed, parsed.error().message);
  return parsed.value();
}

LeaseInfo sample_lease(uint64_t id) {
  LeaseInfo l;
  l.id = id;
  l.name = "web";
  l.protocol = Protocol::kUdp;
  l.address = ip("2001:db8::7");
  l.port = 5353;
  l.mode = Mode::kReuseport;
  l.holder = Holder{4242, 1000, 100, "nginx", "/system.slice/nginx.service"};
  l.session = 17;
  l.created_at_ms = 1700000000123;
  l.state = "lingering";
  l.linger_s = 30;
  l.linger_until_ms = 1700000030123;
  l.token = "0123456789abcdef0123456789abcdef";
  l.no_copy = true;
  return l;
}

ReservationInfo sample_reservation() {
  ReservationInfo r;
  r.name = "db";
  r.target = "both:[::1]:5432-5433";
  r.tcp = true;
  r.udp = true;
  r.address = ip("::1");
  r.port_first = 5432;
  r.port_last = 5433;
  r.users = {"postgres", "1001"};
  r.groups = {"db"};
  r.hold = true;
  r.origin = "/etc/portbroker/portbroker.toml:12";
  r.principals = "user postgres, uid 1001, group db";
  return r;
}

OutsideHolder sample_outside() {
  OutsideHolder o;
  o.protocol = Protocol::kTcp;
  o.address = ip("127.0.0.1");
  o.port = 8080;
  o.state = "listen";
  o.pid = 99;
  o.uid = 33;
  o.comm = "python3 +1";
  return o;
}

void check_same(const LeaseInfo& a, const LeaseInfo& b) {
  CHECK(a.id == b.id);
  CHECK(a.name == b.name);
  CHECK(a.protocol == b.protocol);
  CHECK(a.address == b.address);
  CHECK(a.port == b.port);
  CHECK(a.mode == b.mode);
  CHECK(a.holder.pid == b.holder.pid);
  CHECK(a.holder.uid == b.holder.uid);
  CHECK(a.holder.gid == b.holder.gid);
  CHECK(a.holder.comm == b.holder.comm);
  CHECK(a.holder.cgroup == b.holder.cgroup);
  CHECK(a.session == b.session);
  CHECK(a.created_at_ms == b.created_at_ms);
  CHECK(a.state == b.state);
  CHECK(a.linger_s == b.linger_s);
  CHECK(a.linger_until_ms == b.linger_until_ms);
  CHECK(a.token == b.token);
  CHECK(a.no_copy == b.no_copy);
}

void check_same(const ReservationInfo& a, const ReservationInfo& b) {
  CHECK(a.name == b.name);
  CHECK(a.target == b.target);
  CHECK(a.tcp == b.tcp);
  CHECK(a.udp == b.udp);
  CHECK(a.address == b.address);
  CHECK(a.port_first == b.port_first);
  CHECK(a.port_last == b.port_last);
  CHECK(a.users == b.users);
  CHECK(a.groups == b.groups);
  CHECK(a.hold == b.hold);
  CHECK(a.origin == b.origin);
  CHECK(a.principals == b.principals);
}

void check_same(const OutsideHolder& a, const OutsideHolder& b) {
  CHECK(a.protocol == b.protocol);
  CHECK(a.address == b.address);
  CHECK(a.port == b.port);
  CHECK(a.state == b.state);
  CHECK(a.pid == b.pid);
  CHECK(a.uid == b.uid);
  CHECK(a.comm == b.comm);
}

void check_bad(const Error& e, const std::string& says) {
  CHECK(e.code == ErrorCode::kBadRequest);
  CHECK_MESSAGE(e.message.find(says) != std::string::npos, e.message);
}

// --- requests -----------------------------------------------------------------------------

TEST_CASE("acquire request: every spec and option survives the trip") {
  std::vector<SocketSpec> specs = {
      spec("http=tcp:0.0.0.0:80,backlog=1024,reuseaddr=false,freebind,defer_accept=5,"
           "fastopen=16,keepalive,rcvbuf=65536,sndbuf=32768,device=lo,linger=30,token="
           "0123456789abcdef0123456789abcdef"),
      spec("udp:[::1]:0,v6only,reuseport"),
  };
  auto decoded =
      round_trip<wire::Request>([&](wire::Request::Builder r) { ipc::acquire_to_wire(specs, r); },
                                [](wire::Request::Reader r) {
                                  REQUIRE(r.isAcquire());
                                  return ipc::acquire_from_wire(r.getAcquire());
                                });
  REQUIRE(decoded);
  REQUIRE(decoded->size() == specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    CHECK(format_socket_spec((*decoded)[i]) == format_socket_spec(specs[i]));
  }
}

TEST_CASE("acquire request: the count is bounded and a bad spec is named by its index") {
  auto decode = [](size_t count, auto&& edit) {
    return round_trip<wire::Request>(
        [&](wire::Request::Builder r) {
          std::vector<SocketSpec> specs(count, spec("tcp:127.0.0.1:0"));
          ipc::acquire_to_wire(specs, r);
          edit(r.getAcquire());
        },
        [](wire::Request::Reader r) { return ipc::acquire_from_wire(r.getAcquire()); });
  };
  auto unchanged = [](auto) {};
  check_bad(decode(0, unchanged).error(), "1 to 64 sockets, not 0");
  check_bad(decode(ipc::kMaxSocketsPerRequest + 1, unchanged).error(), "not 65");
  CHECK(decode(ipc::kMaxSocketsPerRequest, unchanged));

  auto second_bad = decode(3, [](auto list) { list[1].setProtocol(wire::Protocol(7)); });
  check_bad(second_bad.error(), "socket 2: unknown protocol 7");
  auto only_bad = decode(1, [](auto list) { list[0].setMode(wire::Mode(9)); });
  check_bad(only_bad.error(), "unknown mode 9");
  CHECK(only_bad.error().message.find("socket 1") == std::string::npos);
  auto short_address = decode(1, [](auto list) {
    list[0].setAddress(capnp::Data::Reader(reinterpret_cast<const kj::byte*>("\x7f\0\0"), 3));
  });
  check_bad(short_address.error(), "address must be 4 or 16 bytes, got 3");
}

TEST_CASE("who request: round trip; port 0 and an unknown protocol are refused") {
  auto decode = [](auto&& encode) {
    return round_trip<wire::WhoRequest>(encode, ipc::who_query_from_wire);
  };
  auto who = decode([](wire::WhoRequest::Builder b) {
    ipc::who_query_to_wire(ipc::WhoQuery{Protocol::kUdp, 53}, b);
  });
  REQUIRE(who);
  CHECK(who->protocol == Protocol::kUdp);
  CHECK(who->port == 53);
  check_bad(decode([](wire::WhoRequest::Builder b) {
              ipc::who_query_to_wire(ipc::WhoQuery{Protocol::kTcp, 0}, b);
            }).error(),
            "port from 1 to 65535");
  check_bad(decode([](wire::WhoRequest::Builder b) {
              b.setProtocol(wire::Protocol(2));
              b.setPort(80);
            }).error(),
            "unknown protocol 2");
}

TEST_CASE("reserve request and reservation replies: round trip, with and without an address") {
  auto decode = [](const ReservationInfo& r) {
    return round_trip<wire::Reservation>(
        [&](wire::Reservation::Builder b) { ipc::reservation_to_wire(r, b); },
        ipc::reservation_from_wire);
  };
  ReservationInfo full = sample_reservation();
  auto back = decode(full);
  REQUIRE(back);
  check_same(*back, full);

  ReservationInfo any;
  any.name = "dns";
  any.target = "udp:any:53";
  any.udp = true;
  any.port_first = any.port_last = 53;
  auto any_back = decode(any);
  REQUIRE(any_back);
  CHECK_FALSE(any_back->address.has_value());
  check_same(*any_back, any);
}

TEST_CASE("reservation: an inverted range or a bad address is refused") {
  auto decode = [](auto&& edit) {
    return round_trip<wire::Reservation>(
        [&](wire::Reservation::Builder b) {
          ipc::reservation_to_wire(sample_reservation(), b);
          edit(b);
        },
        ipc::reservation_from_wire);
  };
  check_bad(decode([](wire::Reservation::Builder b) {
              b.setPortFirst(9000);
              b.setPortLast(8000);
            }).error(),
            "9000-8000, inverted");
  check_bad(decode([](wire::Reservation::Builder b) { b.initAddress(5); }).error(),
            "address must be 4 or 16 bytes, got 5");
}

TEST_CASE("requests with a scalar or no body keep their kind and payload") {
  auto kind_of = [](auto&& fill) {
    return round_trip<wire::Request>(
        [&](wire::Request::Builder r) {
          r.setVersion(wire::PROTOCOL_VERSION);
          fill(r);
        },
        [](wire::Request::Reader r) {
          CHECK(r.getVersion() == wire::PROTOCOL_VERSION);
          std::string payload = r.isRelease()     ? std::to_string(r.getRelease())
                                : r.isUnreserve() ? ipc::text_from_wire(r.getUnreserve())
                                : r.isShutdown()  ? std::to_string(r.getShutdown().getRevokeAll())
                                                  : "";
          return std::make_pair(r.which(), payload);
        });
  };
  using K = wire::Request::Which;
  CHECK(kind_of([](auto r) { r.setRelease(1ull << 40); }) ==
        std::make_pair(K::RELEASE, std::to_string(1ull << 40)));
  CHECK(kind_of([](auto r) { r.setUnreserve("db"); }) ==
        std::make_pair(K::UNRESERVE, std::string("db")));
  CHECK(kind_of([](auto r) { r.setList(); }).first == K::LIST);
  CHECK(kind_of([](auto r) { r.setStatus(); }).first == K::STATUS);
  CHECK(kind_of([](auto r) { r.setReload(); }).first == K::RELOAD);
  CHECK(kind_of([](auto r) { r.setCheck(); }).first == K::CHECK);
  CHECK(kind_of([](auto r) { r.setReservations(); }).first == K::RESERVATIONS);
  CHECK(kind_of([](auto r) { r.initShutdown().setRevokeAll(true); }) ==
        std::make_pair(K::SHUTDOWN, std::string("1")));
  CHECK(kind_of([](auto r) { r.initShutdown(); }) == std::make_pair(K::SHUTDOWN, std::string("0")));
}

// --- replies ------------------------------------------------------------------------------

TEST_CASE("error reply: code and message; an empty message reads as the code's name") {
  auto decode = [](auto&& encode) { return round_trip<wire::Reply>(encode, ipc::error_from_wire); };
  Error e = decode([](wire::Reply::Builder r) {
    ipc::error_to_wire(make_error(ErrorCode::kConflict, "tcp 0.0.0.0:80 is held by nginx"), r);
  });
  CHECK(e.code == ErrorCode::kConflict);
  CHECK(e.message == "tcp 0.0.0.0:80 is held by nginx");
  Error unnamed = decode([](wire::Reply::Builder r) {
    ipc::error_to_wire(make_error(ErrorCode::kNoFreePort, ""), r);
  });
  CHECK(unnamed.code == ErrorCode::kNoFreePort);
  CHECK(unnamed.message == error_code_name(ErrorCode::kNoFreePort));
  // A code from a newer daemon still reads as an error, with its message.
  Error newer = decode([](wire::Reply::Builder r) {
    r.initError().setCode(wire::ErrorCode(400));
    r.getError().setMessage("something new");
  });
  CHECK(newer.code == ErrorCode::kInternal);
  CHECK(newer.message == "something new");
}

TEST_CASE("released and done replies keep their kind") {
  auto kind_of = [](auto&& fill) {
    return round_trip<wire::Reply>(fill, [](wire::Reply::Reader r) { return r.which(); });
  };
  CHECK(kind_of([](wire::Reply::Builder r) { r.setReleased(); }) == wire::Reply::RELEASED);
  CHECK(kind_of([](wire::Reply::Builder r) { r.setDone(); }) == wire::Reply::DONE);
}

TEST_CASE("leases reply: every field of every lease") {
  std::vector<LeaseInfo> leases = {sample_lease(1), sample_lease(2)};
  leases[1].protocol = Protocol::kTcp;
  leases[1].address = ip("10.0.0.1");
  leases[1].mode = Mode::kShared;
  leases[1].state = "active";
  leases[1].token.clear();
  auto back = round_trip<wire::Reply>(
      [&](wire::Reply::Builder r) { ipc::leases_to_wire(leases, r); },
      [](wire::Reply::Reader r) { return ipc::leases_from_wire(r.getLeases()); });
  REQUIRE(back);
  REQUIRE(back->size() == 2);
  check_same((*back)[0], leases[0]);
  check_same((*back)[1], leases[1]);
}

TEST_CASE("lease view: the holder's current command stands for the one it connected with") {
  LeaseInfo lease = sample_lease(5);
  ipc::LeaseView view = ipc::view_of(lease);
  view.comm = "nginx-new";
  auto back = round_trip<wire::LeaseInfo>(
      [&](wire::LeaseInfo::Builder b) { ipc::lease_to_wire(view, b); }, ipc::lease_from_wire);
  REQUIRE(back);
  lease.holder.comm = "nginx-new";
  check_same(*back, lease);
}

TEST_CASE("lease: unknown enumerants and a bad address are errors, not crashes") {
  auto decode = [](auto&& edit) {
    return round_trip<wire::LeaseInfo>(
        [&](wire::LeaseInfo::Builder b) {
          ipc::lease_to_wire(sample_lease(1), b);
          edit(b);
        },
        ipc::lease_from_wire);
  };
  check_bad(decode([](auto b) { b.setProtocol(wire::Protocol(3)); }).error(), "unknown protocol 3");
  check_bad(decode([](auto b) { b.setMode(wire::Mode(3)); }).error(), "unknown mode 3");
  check_bad(decode([](auto b) { b.initAddress(15); }).error(), "got 15");
  check_bad(decode([](auto b) { b.initAddress(0); }).error(), "got 0");
}

TEST_CASE("acquire reply: grants in order, each with its own fd") {
  std::vector<LeaseInfo> leases = {sample_lease(10), sample_lease(11), sample_lease(12)};
  const std::vector<uint32_t> fd_index = {2, 0, 1};
  auto back = round_trip<wire::Reply>(
      [&](wire::Reply::Builder r) {
        auto list = r.initAcquired(3);
        for (unsigned i = 0; i < 3; ++i) {
          ipc::grant_to_wire(ipc::view_of(leases[i]), fd_index[i], list[i]);
        }
      },
      [](wire::Reply::Reader r) { return ipc::grants_from_wire(r.getAcquired(), 3, 3); });
  REQUIRE(back);
  REQUIRE(back->size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK((*back)[i].fd_index == fd_index[i]);
    check_same((*back)[i].lease, leases[i]);
  }
}

TEST_CASE("acquire reply: grants that do not match the request are refused") {
  auto decode = [](std::vector<uint32_t> fd_index, size_t asked, size_t fds) {
    return round_trip<wire::Reply>(
        [&](wire::Reply::Builder r) {
          auto list = r.initAcquired(static_cast<unsigned>(fd_index.size()));
          for (unsigned i = 0; i < fd_index.size(); ++i) {
            ipc::grant_to_wire(ipc::view_of(sample_lease(i)), fd_index[i], list[i]);
          }
        },
        [&](wire::Reply::Reader r) { return ipc::grants_from_wire(r.getAcquired(), asked, fds); });
  };
  check_bad(decode({0, 1}, 3, 3).error(), "asked for 3 sockets, granted 2");
  check_bad(decode({0, 1}, 2, 1).error(), "2 sockets granted but 1 fds received");
  check_bad(decode({1, 1}, 2, 2).error(), "bad or repeated fd index 1");
  check_bad(decode({0, 2}, 2, 2).error(), "bad or repeated fd index 2");
  auto bad_lease = round_trip<wire::Reply>(
      [](wire::Reply::Builder r) {
        auto g = r.initAcquired(1)[0];
        ipc::grant_to_wire(ipc::view_of(sample_lease(1)), 0, g);
        g.getLease().setMode(wire::Mode(5));
      },
      [](wire::Reply::Reader r) { return ipc::grants_from_wire(r.getAcquired(), 1, 1); });
  check_bad(bad_lease.error(), "unknown mode 5");
}

TEST_CASE("status reply: every field") {
  DaemonStatus s;
  s.version = "0.1.0";
  s.pid = 321;
  s.started_at_ms = 1700000000000;
  s.sessions = 4;
  s.leases = 9;
  s.pool_low = 20000;
  s.pool_high = 29999;
  s.open_fds = 57;
  s.socket_path = "/run/portbroker/portbroker.sock";
  DaemonStatus back = round_trip<wire::Status>(
      [&](wire::Status::Builder b) { ipc::status_to_wire(s, b); }, ipc::status_from_wire);
  CHECK(back.version == s.version);
  CHECK(back.pid == s.pid);
  CHECK(back.started_at_ms == s.started_at_ms);
  CHECK(back.sessions == s.sessions);
  CHECK(back.leases == s.leases);
  CHECK(back.pool_low == s.pool_low);
  CHECK(back.pool_high == s.pool_high);
  CHECK(back.open_fds == s.open_fds);
  CHECK(back.socket_path == s.socket_path);
}

TEST_CASE("reservations reply: every reservation") {
  std::vector<ReservationInfo> rs = {sample_reservation(), sample_reservation()};
  rs[1].name = "cache";
  rs[1].address.reset();
  rs[1].users.clear();
  auto back = round_trip<wire::Reply>(
      [&](wire::Reply::Builder r) { ipc::reservations_to_wire(rs, r); },
      [](wire::Reply::Reader r) { return ipc::reservations_from_wire(r.getReservations()); });
  REQUIRE(back);
  REQUIRE(back->size() == 2);
  check_same((*back)[0], rs[0]);
  check_same((*back)[1], rs[1]);
}

TEST_CASE("reloaded reply: source and refused leases") {
  ReloadReport report{"/etc/portbroker/portbroker.toml", {"lease 3 (tcp 0.0.0.0:80): denied"}};
  ReloadReport back = round_trip<wire::ReloadResult>(
      [&](wire::ReloadResult::Builder b) { ipc::reload_to_wire(report, b); },
      ipc::reload_from_wire);
  CHECK(back.source == report.source);
  CHECK(back.refused_leases == report.refused_leases);
}

TEST_CASE("who reply: leases, outside holders, reservations, pools and flags") {
  WhoReport w;
  w.protocol = Protocol::kUdp;
  w.port = 5353;
  w.leases = {sample_lease(7)};
  w.outside = {sample_outside()};
  w.reservations = {sample_reservation()};
  w.pools = {"default", "high"};
  w.in_ephemeral_range = true;
  w.guarded = false;
  w.held = true;
  auto back = round_trip<wire::WhoReply>([&](wire::WhoReply::Builder b) { ipc::who_to_wire(w, b); },
                                         ipc::who_from_wire);
  REQUIRE(back);
  CHECK(back->protocol == w.protocol);
  CHECK(back->port == w.port);
  REQUIRE(back->leases.size() == 1);
  check_same(back->leases[0], w.leases[0]);
  REQUIRE(back->outside.size() == 1);
  check_same(back->outside[0], w.outside[0]);
  REQUIRE(back->reservations.size() == 1);
  check_same(back->reservations[0], w.reservations[0]);
  CHECK(back->pools == w.pools);
  CHECK(back->in_ephemeral_range);
  CHECK_FALSE(back->guarded);
  CHECK(back->held);
}

TEST_CASE("who reply: a bad element anywhere makes the whole reply an error") {
  auto decode = [](auto&& edit) {
    WhoReport w;
    w.port = 80;
    w.leases = {sample_lease(1)};
    w.outside = {sample_outside()};
    w.reservations = {sample_reservation()};
    return round_trip<wire::WhoReply>(
        [&](wire::WhoReply::Builder b) {
          ipc::who_to_wire(w, b);
          edit(b);
        },
        ipc::who_from_wire);
  };
  check_bad(decode([](auto b) { b.setProtocol(wire::Protocol(4)); }).error(), "unknown protocol 4");
  check_bad(decode([](auto b) { b.getLeases()[0].setMode(wire::Mode(8)); }).error(),
            "unknown mode 8");
  check_bad(decode([](auto b) { b.getOutside()[0].initAddress(6); }).error(), "got 6");
  check_bad(decode([](auto b) { b.getOutside()[0].setProtocol(wire::Protocol(5)); }).error(),
            "unknown protocol 5");
  check_bad(decode([](auto b) { b.getReservations()[0].setPortLast(1); }).error(), "inverted");
}

TEST_CASE("problems reply: kind and message of each") {
  std::vector<Problem> problems = {{"held-outside", "port 80 is held by nginx"},
                                   {"policy-lint", "rule 3 is shadowed by rule 1"}};
  auto back = round_trip<wire::Reply>(
      [&](wire::Reply::Builder r) { ipc::problems_to_wire(problems, r); },
      [](wire::Reply::Reader r) { return ipc::problems_from_wire(r.getProblems()); });
  REQUIRE(back.size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(back[i].kind == problems[i].kind);
    CHECK(back[i].message == problems[i].message);
  }
}

}  // namespace
}  // namespace portbroker
