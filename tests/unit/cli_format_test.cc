// How the CLI renders what the daemon reports: `who`, `check`, `reservations`, `reload`.
//
// The renderers are the library portbroker_cli_format, shared with the CLI. Times are left at
// 0 ("-") so that nothing depends on the time zone.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "cli.h"

namespace portbroker::cli {
namespace {

IpAddress ip(const char* text) {
  auto a = IpAddress::parse(text);
  REQUIRE_MESSAGE(a.ok(), text);
  return *a;
}

bool contains_line_ending(const std::string& text, const std::string& end) {
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    if (std::string_view(text).substr(start, nl - start).ends_with(end)) return true;
    start = nl + 1;
  }
  return false;
}

ReservationInfo web_reservation() {
  ReservationInfo r;
  r.name = "web";
  r.target = "tcp:any:8080";
  r.tcp = true;
  r.port_first = r.port_last = 8080;
  r.hold = true;
  r.principals = "user www-data";
  r.origin = "/etc/portbroker/portbroker.toml:12";
  return r;
}

TEST_CASE("who: nobody holds a free port, and the ephemeral range is described") {
  WhoReport w;
  w.port = 8080;
  CHECK(format_who(w) == "nobody holds tcp port 8080\n  ephemeral range: outside\n");
  w.protocol = Protocol::kUdp;
  w.in_ephemeral_range = true;
  CHECK(format_who(w) ==
        "nobody holds udp port 8080\n"
        "  ephemeral range: inside and NOT protected: the kernel may hand it out as a source "
        "port\n");
  w.guarded = true;
  CHECK(format_who(w) ==
        "nobody holds udp port 8080\n"
        "  ephemeral range: inside, protected by ip_local_reserved_ports\n");
}

TEST_CASE("who: leases, outside holders, reservations and pools, one line each") {
  WhoReport w;
  w.port = 8080;
  LeaseInfo l;
  l.id = 3;
  l.address = ip("0.0.0.0");
  l.port = 8080;
  l.holder.pid = 4242;
  l.holder.uid = 1000;
  l.holder.comm = "myserver";
  w.leases.push_back(l);
  l.id = 4;
  l.name = "api";
  l.mode = Mode::kReuseport;
  l.address = ip("::1");
  w.leases.push_back(l);
  w.outside.push_back({Protocol::kTcp, ip("0.0.0.0"), 8080, "LISTEN", 777, 0, "nginx"});
  w.outside.push_back({Protocol::kTcp, ip("::"), 8080, "LISTEN", 0, 5, ""});
  w.reservations.push_back(web_reservation());
  w.pools = {"default", "ci"};
  CHECK(format_who(w) ==
        "tcp port 8080\n"
        "  leased: lease 3 exclusive 0.0.0.0:8080 by pid 4242 (myserver, uid 1000) since -\n"
        "  leased: lease 4 \"api\" reuseport [::1]:8080 by pid 4242 (myserver, uid 1000) since -\n"
        "  outside the broker: LISTEN 0.0.0.0:8080 by pid 777 (nginx, uid 0)\n"
        "  outside the broker: LISTEN [::]:8080 by a process of uid 5\n"
        "  reserved: web (tcp:any:8080, hold) for user www-data, from "
        "/etc/portbroker/portbroker.toml:12\n"
        "  pools: default, ci\n"
        "  ephemeral range: outside\n");
}

TEST_CASE("containers: who names the holder's cgroup and container; list adds a column") {
  WhoReport w;
  w.port = 8080;
  LeaseInfo l;
  l.id = 3;
  l.address = ip("0.0.0.0");
  l.port = 8080;
  l.holder.pid = 4242;
  l.holder.comm = "python3";
  l.holder.cgroup = "/machine.slice/libpod-3f2a1b4c5d6e7f80.scope";
  w.leases.push_back(l);
  l.id = 4;
  l.holder.cgroup = "/system.slice/envoy.service";
  w.leases.push_back(l);
  l.id = 5;
  l.holder.cgroup = "/";
  w.leases.push_back(l);
  CHECK(format_who(w) ==
        "tcp port 8080\n"
        "  leased: lease 3 exclusive 0.0.0.0:8080 by pid 4242 (python3, uid 0) since -\n"
        "    container: podman 3f2a1b4c5d6e (cgroup /machine.slice/libpod-3f2a1b4c5d6e7f80.scope)\n"
        "  leased: lease 4 exclusive 0.0.0.0:8080 by pid 4242 (python3, uid 0) since -\n"
        "    cgroup: /system.slice/envoy.service\n"
        "  leased: lease 5 exclusive 0.0.0.0:8080 by pid 4242 (python3, uid 0) since -\n"
        "  ephemeral range: outside\n");

  const std::string table = format_lease_table(w.leases);
  CHECK(table.substr(0, table.find('\n')).ends_with("CONTAINER"));
  CHECK(contains_line_ending(table, "podman 3f2a1b4c5d6e"));
  w.leases.erase(w.leases.begin());
  const std::string plain = format_lease_table(w.leases);
  CHECK(plain.find("CONTAINER") == std::string::npos);

  auto j = leases_to_json({w.leases.front()});
  CHECK(j[0]["holder"]["container"].is_null());
  l.holder.cgroup = "/docker/0123456789abcdef0123";
  j = leases_to_json({l});
  CHECK(j[0]["holder"]["container"]["runtime"] == "docker");
  CHECK(j[0]["holder"]["container"]["name"] == "0123456789ab");
}

TEST_CASE("who: a port the daemon holds for a reservation is not free") {
  WhoReport w;
  w.port = 1433;
  w.held = true;
  CHECK(format_who(w).starts_with("tcp port 1433\n  held: by portbrokerd"));
}

TEST_CASE("who --json carries every field") {
  WhoReport w;
  w.protocol = Protocol::kUdp;
  w.port = 53;
  w.outside.push_back({Protocol::kUdp, ip("127.0.0.1"), 53, "UNCONN", 9, 101, "unbound"});
  w.pools = {"default"};
  w.guarded = true;
  auto j = who_to_json(w);
  CHECK(j["protocol"] == "udp");
  CHECK(j["port"] == 53);
  CHECK(j["leases"].empty());
  CHECK(j["outside"][0]["comm"] == "unbound");
  CHECK(j["outside"][0]["address"] == "127.0.0.1");
  CHECK(j["pools"][0] == "default");
  CHECK(j["guarded"] == true);
  CHECK(j["held"] == false);
  CHECK(j["in_ephemeral_range"] == false);
}

TEST_CASE("check: one KIND: message line per problem, or none") {
  CHECK(format_problems({}) == "no problems found\n");
  CHECK(format_problems({{"held-outside", "port 1433 of reservation mssql is held"},
                         {"unprotected", "reservation db: ports 40000"}}) ==
        "held-outside: port 1433 of reservation mssql is held\n"
        "unprotected: reservation db: ports 40000\n");
  CHECK(problems_to_json({}).dump() == "[]");
  CHECK(problems_to_json({{"policy", "x"}}).dump() == R"([{"kind":"policy","message":"x"}])");
}

TEST_CASE("reservations: a table, and JSON with a null address for any") {
  ReservationInfo api;
  api.name = "api";
  api.udp = true;
  api.address = ip("127.0.0.1");
  api.port_first = 9000;
  api.port_last = 9010;
  // No target from the daemon: rebuilt from the fields.
  CHECK(format_reservation_table({web_reservation(), api}) ==
        "NAME  TARGET                   HOLD  PRINCIPALS     ORIGIN\n"
        "web   tcp:any:8080             yes   user www-data  /etc/portbroker/portbroker.toml:12\n"
        "api   udp:127.0.0.1:9000-9010  no    -              -\n");
  auto j = reservations_to_json({web_reservation(), api});
  CHECK(j[0]["address"].is_null());
  CHECK(j[0]["hold"] == true);
  CHECK(j[1]["address"] == "127.0.0.1");
  CHECK(j[1]["target"] == "udp:127.0.0.1:9000-9010");
  CHECK(j[1]["port_last"] == 9010);
}

TEST_CASE("reload: the source, then the leases the new policy would refuse") {
  CHECK(format_reload({"/etc/portbroker/portbroker.toml", {}}) ==
        "policy reloaded from /etc/portbroker/portbroker.toml\n");
  CHECK(format_reload({"<embedded default>", {"lease 2 (tcp 127.0.0.1:5000): no rule"}}) ==
        "policy reloaded from <embedded default>\n"
        "1 lease(s) the new policy would refuse (kept):\n"
        "  lease 2 (tcp 127.0.0.1:5000): no rule\n");
}

}  // namespace
TEST_CASE("events: one logfmt line each, the same fields in JSON") {
  Event e;
  e.seq = 42;
  e.kind = "refused";
  e.name = "web";
  e.endpoint = "tcp 127.0.0.1:80";
  e.port = 80;
  e.mode = "exclusive";
  e.pid = 7;
  e.uid = 1000;
  e.comm = "nginx";
  e.code = ErrorCode::kConflict;
  e.reason = "port 80 is \"taken\"";
  e.conflicts_with = "lease 3 (tcp 127.0.0.1:80, pid 6 nginx, uid 1000)";
  CHECK(format_event(e) ==
        "42 - refused name=web endpoint=\"tcp 127.0.0.1:80\" mode=exclusive pid=7 uid=1000 "
        "comm=nginx code=conflict reason=\"port 80 is \\\"taken\\\"\" "
        "conflicts_with=\"lease 3 (tcp 127.0.0.1:80, pid 6 nginx, uid 1000)\"\n");
  auto j = event_to_json(e);
  CHECK(j["seq"] == 42);
  CHECK(j["code"] == "conflict");
  CHECK(j["uid"] == 1000);
  CHECK(j["reason"] == "port 80 is \"taken\"");
  CHECK_FALSE(j.contains("lease"));
  CHECK_FALSE(j.contains("count"));

  Event lost;
  lost.seq = 9;
  lost.kind = "lost";
  lost.count = 5;
  CHECK(format_event(lost) == "9 - lost count=5\n");
  CHECK(event_to_json(lost)["count"] == 5);
  CHECK_FALSE(event_to_json(lost).contains("uid"));  // about no one's lease
}

}  // namespace portbroker::cli
