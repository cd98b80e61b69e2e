#include "broker/core/policy.h"

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace portbroker;
using namespace portbroker::broker;

namespace {

// A fixed passwd/group table, so that tests do not depend on the host's accounts.
class FakeNames final : public NameResolver {
 public:
  std::optional<uint32_t> uid_of(std::string_view user) const override {
    static const std::map<std::string, uint32_t, std::less<>> users = {
        {"root", 0},      {"alice", 1000},   {"bob", 1001}, {"www-data", 33}, {"mssql", 996},
        {"unbound", 101}, {"postgres", 102}, {"mail", 8},   {"nobody", 65534}};
    auto it = users.find(user);
    return it == users.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
  std::optional<uint32_t> gid_of(std::string_view group) const override {
    static const std::map<std::string, uint32_t, std::less<>> groups = {
        {"root", 0}, {"web", 2000}, {"staff", 50}, {"www-data", 33}, {"mssql", 996}};
    auto it = groups.find(group);
    return it == groups.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
};

const FakeNames kNames;

Policy must_parse(std::string_view text, std::string_view file = "policy.toml") {
  auto p = parse_policy(text, file, kNames);
  if (!p) FAIL("unexpected parse error: " << p.error().message);
  return std::move(p).value();
}

IpAddress ip(std::string_view text) { return IpAddress::parse(text).value(); }

Principal user(uint32_t uid, uint32_t gid = 100, std::vector<uint32_t> groups = {},
               std::string cgroup = "/user.slice") {
  return Principal{uid, gid, std::move(groups), std::move(cgroup)};
}

const Principal kRoot = user(0, 0, {}, "/system.slice/foo.service");
const Principal kAlice = user(1000);
const Principal kBob = user(1001);
const Principal kCarolWeb = user(1002, 100, {7, 2000});  // supplementary group web
const Principal kDaveWebPrimary = user(1003, 2000);
const Principal kEve = user(1004);
const Principal kStaff = user(1005, 50);
const Principal kContainer = user(100000, 100000, {}, "/machine.slice/libpod-abc.scope");
const Principal kContainerChild =
    user(100000, 100000, {}, "/machine.slice/libpod-abc.scope/container");
const Principal kOtherScope = user(100000, 100000, {}, "/machine.slice/other.scope");
const Principal kSlashInGlob = user(100000, 100000, {}, "/machine.slice/libpod-x/y.scope");

// Line numbers matter: reservation messages name them.
constexpr std::string_view kPolicy = R"([daemon]
root_unrestricted = true

[limits]
max_leases_per_uid = 10

[[rule]]
name = "web"
users = ["alice"]
groups = ["web"]
ports = [80, 443]
protocol = "tcp"
modes = ["exclusive", "reuseport"]
max_leases = 2

[[rule]]
name = "dns"
users = [1001]
ports = 53
protocol = "udp"
address = "127.0.0.1"

[[rule]]
name = "containers"
cgroups = ["/machine.slice/libpod-*.scope"]
ports = "8000-8099"

[[rule]]
users = ["*"]
ports = "10000-19999"
modes = "shared"

[[reservation]]
name = "mssql"
ports = 1433
protocol = "tcp"
users = ["bob"]
hold = true

[[reservation]]
name = "internal"
ports = "8050-8059"
address = "10.0.0.1"
groups = ["staff"]

[[reservation]]
name = "rootonly"
ports = 15000
users = [0]
modes = ["exclusive"]

[[pool]]
name = "dyn"
ports = "30000-30099"
groups = ["web"]
protocol = "tcp"

[[pool]]
name = "everyone"
ports = "31000-31009"
users = ["*"]
)";

struct MatchCase {
  const char* what;
  Principal who;
  Protocol protocol;
  const char* address;
  uint16_t port;
  Mode mode;
  bool from_pool;
  size_t held_on_80;      // leases already held on tcp 0.0.0.0:80
  size_t held_elsewhere;  // leases already held on tcp 0.0.0.0:12345
  bool allowed;
  ErrorCode code;
  const char* reason;  // substring of Decision::reason
  const char* reservation;
  const char* pool;
};

constexpr auto kTcp = Protocol::kTcp;
constexpr auto kUdp = Protocol::kUdp;
constexpr auto kExcl = Mode::kExclusive;
constexpr auto kShared = Mode::kShared;
constexpr auto kReuse = Mode::kReuseport;
constexpr auto kOk = ErrorCode::kOk;
constexpr auto kDenied = ErrorCode::kPermissionDenied;
constexpr auto kLimit = ErrorCode::kLimitExceeded;

const MatchCase kMatchCases[] = {
    // users and groups
    {"named user", kAlice, kTcp, "0.0.0.0", 80, kExcl, false, 0, 0, true, kOk,
     "allowed by rule 'web' (policy.toml:7)", "", ""},
    {"named user, other protocol", kAlice, kUdp, "0.0.0.0", 80, kExcl, false, 0, 0, false, kDenied,
     "no rule in policy.toml grants uid 1000 udp 0.0.0.0:80 (deny by default)", "", ""},
    {"named user, specific address", kAlice, kTcp, "192.0.2.1", 443, kExcl, false, 0, 0, true, kOk,
     "rule 'web'", "", ""},
    {"supplementary group", kCarolWeb, kTcp, "::", 443, kReuse, false, 0, 0, true, kOk,
     "rule 'web'", "", ""},
    {"primary group", kDaveWebPrimary, kTcp, "0.0.0.0", 80, kExcl, false, 0, 0, true, kOk,
     "rule 'web'", "", ""},
    {"stranger", kEve, kTcp, "0.0.0.0", 80, kExcl, false, 0, 0, false, kDenied,
     "no rule in policy.toml grants uid 1004 tcp 0.0.0.0:80 (deny by default)", "", ""},
    {"port next to a granted one", kAlice, kTcp, "0.0.0.0", 81, kExcl, false, 0, 0, false, kDenied,
     "deny by default", "", ""},
    // modes
    {"mode not granted", kAlice, kTcp, "0.0.0.0", 80, kShared, false, 0, 0, false, kDenied,
     "rule 'web' (policy.toml:7) grants uid 1000 tcp 0.0.0.0:80 only in modes exclusive, "
     "reuseport, not shared",
     "", ""},
    {"anyone, shared only: shared", kEve, kTcp, "0.0.0.0", 12000, kShared, false, 0, 0, true, kOk,
     "allowed by rule #4 (policy.toml:28)", "", ""},
    {"anyone, shared only: exclusive", kEve, kUdp, "0.0.0.0", 12000, kExcl, false, 0, 0, false,
     kDenied, "rule #4", "", ""},
    // addresses
    {"exact address", kBob, kUdp, "127.0.0.1", 53, kExcl, false, 0, 0, true, kOk, "rule 'dns'", "",
     ""},
    {"v4-mapped spelling of the address", kBob, kUdp, "::ffff:127.0.0.1", 53, kExcl, false, 0, 0,
     true, kOk, "rule 'dns'", "", ""},
    {"wildcard is not the granted address", kBob, kUdp, "0.0.0.0", 53, kExcl, false, 0, 0, false,
     kDenied, "deny by default", "", ""},
    {"other address", kBob, kUdp, "127.0.0.2", 53, kExcl, false, 0, 0, false, kDenied,
     "deny by default", "", ""},
    // cgroups
    {"cgroup glob", kContainer, kTcp, "0.0.0.0", 8000, kExcl, false, 0, 0, true, kOk,
     "rule 'containers'", "", ""},
    {"cgroup glob covers sub-cgroups", kContainerChild, kTcp, "0.0.0.0", 8099, kShared, false, 0, 0,
     true, kOk, "rule 'containers'", "", ""},
    {"cgroup glob, other scope", kOtherScope, kTcp, "0.0.0.0", 8000, kExcl, false, 0, 0, false,
     kDenied, "deny by default", "", ""},
    {"cgroup glob '*' does not cross '/'", kSlashInGlob, kTcp, "0.0.0.0", 8000, kExcl, false, 0, 0,
     false, kDenied, "deny by default", "", ""},
    // max_leases and limits
    {"under max_leases", kAlice, kTcp, "0.0.0.0", 443, kExcl, false, 1, 5, true, kOk, "rule 'web'",
     "", ""},
    {"max_leases reached", kAlice, kTcp, "0.0.0.0", 443, kExcl, false, 2, 0, false, kLimit,
     "uid 1000 already holds 2 leases under rule 'web' (policy.toml:7), its max_leases", "", ""},
    {"max_leases counts only the rule's ports", kAlice, kTcp, "0.0.0.0", 443, kExcl, false, 1, 8,
     true, kOk, "rule 'web'", "", ""},
    {"max_leases_per_uid", kAlice, kTcp, "0.0.0.0", 80, kExcl, false, 0, 10, false, kLimit,
     "uid 1000 already holds 10 leases, the most allowed ([limits] max_leases_per_uid = 10 in "
     "policy.toml)",
     "", ""},
    // reservations
    {"reservation's principal", kBob, kTcp, "0.0.0.0", 1433, kExcl, false, 0, 0, true, kOk,
     "port 1433 is reserved for 'mssql' (reservation mssql in policy.toml:33) and uid 1001 is "
     "among its principals",
     "mssql", ""},
    {"reserved for someone else", kAlice, kTcp, "127.0.0.1", 1433, kExcl, false, 0, 0, false,
     kDenied,
     "port 1433 is reserved for 'mssql' (reservation mssql in policy.toml:33); uid 1000 is not "
     "among its principals",
     "mssql", ""},
    {"reservations bind unrestricted root", kRoot, kTcp, "0.0.0.0", 1433, kExcl, false, 0, 0, false,
     kDenied, "uid 0 is not among its principals", "mssql", ""},
    {"reservation is per protocol", kBob, kUdp, "0.0.0.0", 1433, kExcl, false, 0, 0, false, kDenied,
     "deny by default", "", ""},
    {"reservation beats a rule: same address", kContainer, kTcp, "10.0.0.1", 8050, kExcl, false, 0,
     0, false, kDenied,
     "port 8050 is reserved for 'internal' (reservation internal in policy.toml:40)", "internal",
     ""},
    {"reservation beats a rule: wildcard collides", kContainer, kTcp, "0.0.0.0", 8059, kExcl, false,
     0, 0, false, kDenied, "reserved for 'internal'", "internal", ""},
    {"reservation beats a rule: v6 wildcard collides", kContainer, kTcp, "::", 8055, kExcl, false,
     0, 0, false, kDenied, "reserved for 'internal'", "internal", ""},
    {"reservation on another address", kContainer, kTcp, "10.0.0.2", 8050, kExcl, false, 0, 0, true,
     kOk, "rule 'containers'", "", ""},
    {"reservation grants without a rule", kStaff, kUdp, "10.0.0.1", 8055, kShared, false, 0, 0,
     true, kOk, "reserved for 'internal'", "internal", ""},
    {"reservation mode", kRoot, kTcp, "0.0.0.0", 15000, kShared, false, 0, 0, false, kDenied,
     "port 15000 is reserved for 'rootonly' (reservation rootonly in policy.toml:46) in modes "
     "exclusive only, not shared",
     "rootonly", ""},
    {"reservation for root", kRoot, kTcp, "0.0.0.0", 15000, kExcl, false, 0, 0, true, kOk,
     "reserved for 'rootonly'", "rootonly", ""},
    {"reservation beats anyone-rule", kEve, kTcp, "0.0.0.0", 15000, kShared, false, 0, 0, false,
     kDenied, "uid 1004 is not among its principals", "rootonly", ""},
    // root
    {"unrestricted root", kRoot, kTcp, "0.0.0.0", 22, kShared, false, 0, 0, true, kOk,
     "root is unrestricted ([daemon] root_unrestricted in policy.toml)", "", ""},
    {"unrestricted root ignores limits", kRoot, kTcp, "0.0.0.0", 22, kExcl, false, 0, 50, true, kOk,
     "root is unrestricted", "", ""},
    // pools
    {"port 0: pool for anyone", kAlice, kTcp, "0.0.0.0", 0, kExcl, false, 0, 0, true, kOk,
     "allowed by pool 'everyone' (policy.toml:58)", "", "everyone"},
    {"port 0: first matching pool", kCarolWeb, kTcp, "0.0.0.0", 0, kExcl, false, 0, 0, true, kOk,
     "pool 'dyn'", "", "dyn"},
    {"port 0: pool protocol", kCarolWeb, kUdp, "0.0.0.0", 0, kExcl, false, 0, 0, true, kOk,
     "pool 'everyone'", "", "everyone"},
    {"pool pick", kCarolWeb, kTcp, "0.0.0.0", 30005, kExcl, true, 0, 0, true, kOk, "pool 'dyn'", "",
     "dyn"},
    {"pool pick outside caller's pools", kAlice, kTcp, "0.0.0.0", 30005, kExcl, true, 0, 0, false,
     kDenied, "port 30005 is in no pool open to uid 1000 for tcp", "", ""},
    {"pool port asked for explicitly", kAlice, kTcp, "0.0.0.0", 31000, kExcl, false, 0, 0, false,
     kDenied, "deny by default", "", ""},
    {"pool pick by root", kRoot, kTcp, "0.0.0.0", 30001, kExcl, true, 0, 0, true, kOk,
     "root is unrestricted", "", "dyn"},
    {"pool pick on a reserved port", kBob, kTcp, "0.0.0.0", 1433, kExcl, true, 0, 0, false, kDenied,
     "reserved ports are never handed out from a pool", "mssql", ""},
};

}  // namespace

TEST_CASE("policy: matching, table-driven") {
  const Policy policy = must_parse(kPolicy);
  for (const auto& c : kMatchCases) {
    CAPTURE(c.what);
    std::vector<HeldLease> held;
    for (size_t i = 0; i < c.held_on_80; ++i) held.push_back({kTcp, ip("0.0.0.0"), 80});
    for (size_t i = 0; i < c.held_elsewhere; ++i) held.push_back({kTcp, ip("0.0.0.0"), 12345});
    Request req{c.protocol, ip(c.address), c.port, c.mode, c.from_pool};
    Decision d = policy.check(c.who, req, held);
    CAPTURE(d.reason);
    CHECK(d.allowed == c.allowed);
    CHECK(static_cast<bool>(d) == c.allowed);
    CHECK(d.code == c.code);
    CHECK(d.reason.find(c.reason) != std::string::npos);
    CHECK(d.reservation == c.reservation);
    CHECK(d.pool == c.pool);
  }
}

TEST_CASE("policy: root can be restricted") {
  const Policy policy = must_parse(R"([daemon]
root_unrestricted = false

[limits]
max_leases_per_uid = 1

[[rule]]
name = "ssh"
users = ["root"]
ports = 22
)");
  auto check = [&](uint16_t port, size_t held_count = 0) {
    std::vector<HeldLease> held(held_count, HeldLease{kTcp, ip("::"), 9});
    return policy.check(kRoot, Request{kTcp, ip("::"), port, kExcl, false}, held);
  };
  CHECK(check(22).allowed);
  CHECK(check(22).reason == "allowed by rule 'ssh' (policy.toml:7)");
  CHECK_FALSE(check(80).allowed);
  CHECK(check(80).reason == "no rule in policy.toml grants uid 0 tcp [::]:80 (deny by default)");
  CHECK(check(22, 1).code == kLimit);
  // No [[pool]]: the default pool serves everyone.
  REQUIRE(policy.pools.size() == 1);
  CHECK(policy.pools[0].name == "default");
  CHECK(check(0).pool == "default");
  CHECK(policy.pools_for(kRoot, kUdp).size() == 1);
}

TEST_CASE("policy: embedded default") {
  const Policy policy = embedded_default_policy();
  auto check = [&](const Principal& who, uint16_t port, Mode mode = kExcl) {
    return policy.check(who, Request{kTcp, ip("0.0.0.0"), port, mode, false}, {});
  };
  CHECK(check(kRoot, 80).allowed);
  CHECK(check(kRoot, 1).allowed);
  CHECK_FALSE(check(kAlice, 80).allowed);
  CHECK(check(kAlice, 80).reason ==
        "uid 1000 may not lease tcp 0.0.0.0:80: ports below 1024 are for root only under the "
        "embedded default policy (no policy file; a rule in one can grant it)");
  CHECK_FALSE(check(kAlice, 1023).allowed);
  CHECK(check(kAlice, 1024).allowed);
  CHECK(check(kAlice, 1024).reason == "allowed by rule 'unprivileged-ports' (<embedded default>)");
  CHECK(check(kAlice, 65535, kReuse).allowed);
  CHECK(check(kAlice, 0).pool == "default");
  auto pools = policy.pools_for(kAlice, kUdp);
  REQUIRE(pools.size() == 1);
  CHECK(pools[0]->ports == std::vector<PortRange>{{20000, 29999}});
  CHECK(policy.guarded_ports() == std::vector<PortRange>{{20000, 29999}});
  CHECK(policy.lint().empty());
}

TEST_CASE("policy: pools_for, reservations_at, pools_at, guarded_ports") {
  Policy policy = must_parse(kPolicy);
  auto names = [](const auto& list) {
    std::string s;
    for (const auto* x : list) s += (s.empty() ? "" : ",") + x->name;
    return s;
  };
  CHECK(names(policy.pools_for(kAlice, kTcp)) == "everyone");
  CHECK(names(policy.pools_for(kCarolWeb, kTcp)) == "dyn,everyone");
  CHECK(names(policy.pools_for(kCarolWeb, kUdp)) == "everyone");
  CHECK(names(policy.pools_for(kRoot, kTcp)) == "dyn,everyone");
  CHECK(names(policy.reservations_at(kTcp, 1433)) == "mssql");
  CHECK(names(policy.reservations_at(kUdp, 1433)) == "");
  CHECK(names(policy.reservations_at(kUdp, 8052)) == "internal");
  CHECK(names(policy.pools_at(kTcp, 30099)) == "dyn");
  CHECK(names(policy.pools_at(kUdp, 30099)) == "");
  CHECK(names(policy.pools_at(kUdp, 31009)) == "everyone");
  CHECK(policy.guarded_ports() ==
        std::vector<PortRange>{
            {1433, 1433}, {8050, 8059}, {15000, 15000}, {30000, 30099}, {31000, 31009}});
  policy.daemon.ephemeral_guard = false;
  CHECK(policy.guarded_ports().empty());
}

TEST_CASE("policy: valid files") {
  struct Case {
    const char* what;
    const char* text;
  };
  const Case cases[] = {
      {"empty file", ""},
      {"comments only", "# nothing here\n"},
      {"daemon and limits",
       "[daemon]\nroot_unrestricted = false\nephemeral_guard = false\n"
       "[limits]\nmax_connections_per_uid = 8\nmax_leases_per_uid = 16\n"},
      {"numeric ids and digit strings",
       "[[rule]]\nusers = [1000, \"1001\"]\ngroups = [50]\n"
       "ports = 80\n"},
      {"inline array of tables", "rule = [{ users = [\"*\"], ports = [1, \"2-3\"] }]\n"},
      {"address list",
       "[[rule]]\nusers = [\"*\"]\nports = 80\naddress = [\"::1\", \"[::2]\", "
       "\"127.0.0.1\"]\n"},
      {"reservation with no principals", "[[reservation]]\nname = \"block\"\nports = 25\n"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto p = parse_policy(c.text, "policy.toml", kNames);
    CHECK_MESSAGE(p.ok(), (p.ok() ? "" : p.error().message));
  }

  Policy p = must_parse(
      "[daemon]\nroot_unrestricted = false\nephemeral_guard = false\n"
      "[limits]\nmax_connections_per_uid = 8\nmax_leases_per_uid = 16\n"
      "[[rule]]\nusers = [1000, \"1001\", \"alice\"]\ngroups = [\"web\", 7]\n"
      "cgroups = \"/system.slice/x.service\"\nports = [\"80\", 443, "
      "\"8000-8099\"]\naddress = \"::1\"\nprotocol = \"udp\"\nmodes = "
      "[\"shared\"]\nmax_leases = 3\n");
  CHECK_FALSE(p.daemon.root_unrestricted);
  CHECK_FALSE(p.daemon.ephemeral_guard);
  CHECK(p.limits.max_connections_per_uid == 8);
  CHECK(p.limits.max_leases_per_uid == 16);
  REQUIRE(p.rules.size() == 1);
  const Rule& r = p.rules[0];
  CHECK(r.name == "#1");
  CHECK(r.origin.to_string() == "policy.toml:7");
  CHECK(r.principals.to_string() ==
        "uid 1000, uid 1001, user alice, group web, gid 7, cgroup /system.slice/x.service");
  CHECK(r.ports == std::vector<PortRange>{{80, 80}, {443, 443}, {8000, 8099}});
  CHECK(r.addresses == std::vector<IpAddress>{ip("::1")});
  CHECK(r.protocols.to_string() == "udp");
  CHECK(r.modes.to_string() == "shared");
  CHECK(r.max_leases == 3u);
}

TEST_CASE("policy: the example file parses and lints clean") {
  std::string here = __FILE__;
  std::string path =
      here.substr(0, here.rfind("/tests/unit/")) + "/packaging/portbroker.toml.example";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::stringstream text;
  text << in.rdbuf();
  Policy p = must_parse(text.str(), "portbroker.toml.example");
  CHECK(!p.rules.empty());
  CHECK(!p.reservations.empty());
  CHECK(!p.pools.empty());
  for (const auto& line : p.lint()) MESSAGE("lint: " << line);
  CHECK(p.lint().empty());
}

TEST_CASE("policy: invalid files name the line and the problem") {
  struct Case {
    const char* what;
    const char* text;
    const char* where;    // "policy.toml:LINE:COLUMN:"
    const char* problem;  // substring of the message
  };
  const Case cases[] = {
      {"TOML syntax error", "[[rule]\nports = 1\n", "policy.toml:1:", "TOML syntax error"},
      {"TOML syntax error on a later line", "[daemon]\nroot_unrestricted = true\nx = = 3\n",
       "policy.toml:3:", "TOML syntax error"},
      {"TOML duplicate key", "[daemon]\nroot_unrestricted = true\nroot_unrestricted = false\n",
       "policy.toml:3:", "TOML syntax error"},
      {"unknown top-level key", "\nrules = 5\n",
       "policy.toml:2:1:", "unknown key 'rules'; did you mean 'rule'?"},
      {"unknown key, far from any", "zzzzzzzz = 1\n", "policy.toml:1:1:",
       "unknown key 'zzzzzzzz'; expected one of: daemon limits events rule reservation pool share"},
      {"unknown key in a rule", "[[rule]]\nusers = [\"*\"]\nprots = 80\n",
       "policy.toml:3:1:", "unknown key 'prots' in [[rule]]; did you mean 'ports'?"},
      {"unknown key in daemon", "[daemon]\nroot_unrestrict = true\n", "policy.toml:2:1:",
       "unknown key 'root_unrestrict' in [daemon]; did you mean 'root_unrestricted'?"},
      {"unknown key in events", "[events]\nuser = [\"alice\"]\n",
       "policy.toml:2:1:", "unknown key 'user' in [events]; did you mean 'users'?"},
      {"unknown user in events", "[events]\nusers = [\"mallory\"]\n",
       "policy.toml:2:", "unknown user 'mallory'"},
      {"unknown key in limits", "[limits]\nmax_leases = 3\n",
       "policy.toml:2:1:", "unknown key 'max_leases' in [limits]"},
      {"unknown key in a reservation", "[[reservation]]\nname = \"a\"\nports = 1\nheld = true\n",
       "policy.toml:4:1:", "unknown key 'held' in [[reservation]]; did you mean 'hold'?"},
      {"unknown key in a pool", "[[pool]]\nname = \"p\"\nports = 1\nusers = [\"*\"]\nmode = 1\n",
       "policy.toml:5:1:", "unknown key 'mode' in [[pool]]"},
      {"bool as string", "[daemon]\nroot_unrestricted = \"yes\"\n",
       "policy.toml:2:21:", "'root_unrestricted' must be true or false, not a string"},
      {"count as string", "[[rule]]\nusers = [\"*\"]\nports = 80\nmax_leases = \"2\"\n",
       "policy.toml:4:14:", "'max_leases' must be an integer, not a string"},
      {"count zero", "[limits]\nmax_leases_per_uid = 0\n",
       "policy.toml:2:22:", "'max_leases_per_uid' must be from 1 to 1000000, not 0"},
      {"count negative", "[[rule]]\nusers = [\"*\"]\nports = 80\nmax_leases = -1\n",
       "policy.toml:4:14:", "must be from 1 to 1000000, not -1"},
      {"port out of range", "[[rule]]\nusers = [\"*\"]\nports = [80, 70000]\n",
       "policy.toml:3:14:", "port 70000 is out of range (1-65535)"},
      {"port zero", "[[rule]]\nusers = [\"*\"]\nports = 0\n",
       "policy.toml:3:9:", "port 0 is out of range (1-65535)"},
      {"port zero in a range", "[[rule]]\nusers = [\"*\"]\nports = \"0-5\"\n",
       "policy.toml:3:9:", "port 0 is out of range (1-65535)"},
      {"range end out of range", "[[rule]]\nusers = [\"*\"]\nports = \"60000-65536\"\n",
       "policy.toml:3:9:", "port 65536 is out of range"},
      {"inverted range", "[[rule]]\nusers = [\"*\"]\nports = \"9000-8000\"\n",
       "policy.toml:3:9:", "port range '9000-8000' is inverted (first > last)"},
      {"garbage port", "[[rule]]\nusers = [\"*\"]\nports = \"80x\"\n",
       "policy.toml:3:9:", "'80x' is not a port or port range (PORT or FIRST-LAST)"},
      {"spaces in a range", "[[rule]]\nusers = [\"*\"]\nports = \"80 - 90\"\n",
       "policy.toml:3:9:", "is not a port or port range"},
      {"float port", "[[rule]]\nusers = [\"*\"]\nports = 80.5\n",
       "policy.toml:3:9:", "a port must be an integer or a \"FIRST-LAST\" string, not a float"},
      {"empty ports", "[[rule]]\nusers = [\"*\"]\nports = []\n",
       "policy.toml:3:9:", "'ports' must not be empty"},
      {"missing ports", "[[rule]]\nname = \"x\"\nusers = [\"*\"]\n",
       "policy.toml:1:1:", "rule 'x' needs 'ports'"},
      {"unknown user", "[[rule]]\nusers = [\"alice\", \"mallory\"]\nports = 80\n",
       "policy.toml:2:19:", "unknown user 'mallory'"},
      {"unknown group", "\n[[rule]]\ngroups = [\"nogroup\"]\nports = 80\n",
       "policy.toml:3:11:", "unknown group 'nogroup'"},
      {"uid out of range", "[[rule]]\nusers = [-1]\nports = 80\n",
       "policy.toml:2:10:", "uid -1 is out of range (0-4294967294)"},
      {"user of the wrong type", "[[rule]]\nusers = [true]\nports = 80\n",
       "policy.toml:2:10:", "a user must be a name or a numeric id, not a boolean"},
      {"star in groups", "[[rule]]\ngroups = [\"*\"]\nports = 80\n",
       "policy.toml:2:11:", "use users = [\"*\"] for anyone"},
      {"bad mode", "[[rule]]\nusers = [\"*\"]\nports = 80\nmodes = [\"exclusiv\"]\n",
       "policy.toml:4:10:", "unknown mode 'exclusiv'; expected exclusive, shared or reuseport"},
      {"empty modes", "[[rule]]\nusers = [\"*\"]\nports = 80\nmodes = []\n",
       "policy.toml:4:9:", "'modes' must not be empty"},
      {"bad protocol", "[[rule]]\nusers = [\"*\"]\nports = 80\nprotocol = \"sctp\"\n",
       "policy.toml:4:12:", "unknown protocol 'sctp'; expected tcp, udp or both"},
      {"protocol list", "[[rule]]\nusers = [\"*\"]\nports = 80\nprotocol = [\"tcp\"]\n",
       "policy.toml:4:12:", "'protocol' must be a string, not an array"},
      {"host name as address", "[[rule]]\nusers = [\"*\"]\nports = 80\naddress = \"localhost\"\n",
       "policy.toml:4:11:", "'localhost' is not an IPv4 or IPv6 address or \"any\""},
      {"any with addresses",
       "[[rule]]\nusers = [\"*\"]\nports = 80\naddress = [\"any\", \"::1\"]\n",
       "policy.toml:4:11:", "\"any\" already covers every address"},
      {"relative cgroup", "[[rule]]\ncgroups = [\"system.slice/x.service\"]\nports = 80\n",
       "policy.toml:2:12:", "cgroup 'system.slice/x.service' must be an absolute path"},
      {"rule for nobody", "[daemon]\n[[rule]]\nports = 80\n",
       "policy.toml:2:1:", "rule #1 grants nobody"},
      {"rule as a plain table", "[rule]\nports = 80\n",
       "policy.toml:1:1:", "'rule' must be written [[rule]] (an array of tables), not a table"},
      {"rule array of integers", "rule = [1]\n",
       "policy.toml:1:9:", "each 'rule' must be a table, not an integer"},
      {"daemon not a table", "daemon = 5\n",
       "policy.toml:1:10:", "'daemon' must be a table ([daemon]), not an integer"},
      {"limits as array of tables", "[[limits]]\n",
       "policy.toml:1:", "'limits' must be a table ([limits]), not an array"},
      {"reservation without name", "[[reservation]]\nports = 80\n",
       "policy.toml:1:1:", "a [[reservation]] needs a 'name'"},
      {"reservation name with a space", "[[reservation]]\nname = \"my db\"\nports = 80\n",
       "policy.toml:2:8:", "invalid name 'my db'"},
      {"reservation name of the wrong type", "[[reservation]]\nname = 5\nports = 80\n",
       "policy.toml:2:8:", "'name' must be a string, not an integer"},
      {"hold as string", "[[reservation]]\nname = \"a\"\nports = 80\nhold = \"yes\"\n",
       "policy.toml:4:8:", "'hold' must be true or false, not a string"},
      {"duplicate reservation names",
       "[[reservation]]\nname = \"db\"\nports = 5432\n\n[[reservation]]\nname = \"db\"\nports = "
       "5433\n",
       "policy.toml:6:8:", "duplicate reservation name 'db' (first defined at policy.toml:1)"},
      {"duplicate rule names",
       "[[rule]]\nname = \"r\"\nusers = [\"*\"]\nports = 1\n[[rule]]\nname = \"r\"\nusers = "
       "[\"*\"]\nports = 2\n",
       "policy.toml:6:8:", "duplicate rule name 'r' (first defined at policy.toml:1)"},
      {"duplicate pool names",
       "[[pool]]\nname = \"p\"\nusers = [\"*\"]\nports = 1\n[[pool]]\nname = \"p\"\nusers = "
       "[\"*\"]\nports = 2\n",
       "policy.toml:6:8:", "duplicate pool name 'p' (first defined at policy.toml:1)"},
      {"pool without name", "[[pool]]\nusers = [\"*\"]\nports = 1\n",
       "policy.toml:1:1:", "a [[pool]] needs a 'name'"},
      {"pool for nobody", "[[pool]]\nname = \"p\"\nports = 1\n",
       "policy.toml:1:1:", "pool 'p' is open to nobody"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto p = parse_policy(c.text, "policy.toml", kNames);
    REQUIRE_FALSE(p.ok());
    const std::string& msg = p.error().message;
    CAPTURE(msg);
    CHECK(p.error().code == ErrorCode::kBadRequest);
    // Every error is reported, one a line: this case's is among them.
    bool found = false;
    std::istringstream lines(msg);
    for (std::string line; std::getline(lines, line);) {
      CHECK(line.starts_with("policy.toml:"));
      found = found || (line.starts_with(c.where) && line.find(c.problem) != std::string::npos);
    }
    CHECK(found);
  }
}

TEST_CASE("policy: every error in a file is reported, one a line, in file order") {
  // Errors in several tables, several in one table, several in one list, and at the top level.
  auto p = parse_policy(R"(colour = "blue"
[limits]
max_leases_per_uid = 0

[[rule]]
name = "a"
users = ["nosuch", "alice", "nobody-either"]
ports = 70000
protocl = "tcp"

[[rule]]
name = "a"
users = ["*"]
ports = 80
modes = ["exclusive", "exclusiv"]

[[reservation]]
users = ["bob"]
ports = 1433

[[pool]]
name = "p"
ports = "1-2"
)",
                        "policy.toml", kNames);
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().code == ErrorCode::kBadRequest);
  std::vector<std::string> lines;
  std::istringstream in(p.error().message);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  const std::vector<std::string> want = {
      "policy.toml:1:1: unknown key 'colour'",
      "policy.toml:3:22: 'max_leases_per_uid' must be from 1",
      "policy.toml:7:10: unknown user 'nosuch'",
      "policy.toml:7:29: unknown user 'nobody-either'",
      "policy.toml:8:9: port 70000 is out of range",
      "policy.toml:9:1: unknown key 'protocl' in [[rule]]; did you mean 'protocol'?",
      "policy.toml:15:23: unknown mode 'exclusiv'",
      "policy.toml:17:1: a [[reservation]] needs a 'name'",
      "policy.toml:21:1: pool 'p' is open to nobody",
  };
  CAPTURE(p.error().message);
  REQUIRE(lines.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CAPTURE(i);
    CHECK(lines[i].starts_with(want[i]));
  }
}

TEST_CASE("policy: lint reports overlapping and contradictory definitions") {
  const Policy p = must_parse(R"([limits]
max_leases_per_uid = 5

[[rule]]
name = "a"
users = ["alice"]
ports = "8000-8010"

[[rule]]
name = "b"
users = ["alice", "bob"]
ports = "8005-8020"
protocol = "tcp"
max_leases = 9

[[rule]]
name = "c"
users = ["alice"]
ports = "8000-8010"

[[rule]]
name = "elsewhere"
users = ["alice"]
ports = "8000-8010"
address = "10.0.0.1"

[[rule]]
name = "elsewhere2"
users = ["alice"]
ports = "8000-8010"
address = "10.0.0.2"

[[reservation]]
name = "r1"
ports = "9000-9009"
protocol = "tcp"

[[reservation]]
name = "r2"
ports = 9005
address = "127.0.0.1"

[[reservation]]
name = "r3"
ports = 9005
protocol = "udp"

[[reservation]]
name = "r4"
ports = 9008
address = "127.0.0.1"
protocol = "udp"

[[pool]]
name = "p1"
users = ["*"]
ports = "9008-9100"

[[pool]]
name = "p2"
users = ["*"]
ports = "9050-9200"
protocol = "udp"
)");
  const std::vector<std::string> want = {
      "reservation 'r1' (policy.toml:33) and reservation 'r2' (policy.toml:38) both claim tcp "
      "port 9005",
      "reservation 'r2' (policy.toml:38) and reservation 'r3' (policy.toml:43) both claim udp "
      "port 9005",
      "pool 'p1' (policy.toml:54) contains ports 9008-9009 reserved by reservation 'r1' "
      "(policy.toml:33); reserved ports are never handed out from a pool",
      "pool 'p1' (policy.toml:54) contains port 9008 reserved by reservation 'r4' "
      "(policy.toml:48); reserved ports are never handed out from a pool",
      "pool 'p1' (policy.toml:54) and pool 'p2' (policy.toml:59) overlap on ports 9050-9100",
      "rule 'a' (policy.toml:4) and rule 'b' (policy.toml:9) both grant user alice ports "
      "8005-8010 with different modes or max_leases; either one suffices, since rules only grant",
      "rule 'a' (policy.toml:4) and rule 'c' (policy.toml:16) both grant user alice ports "
      "8000-8010 (redundant)",
      "rule 'a' (policy.toml:4) and rule 'elsewhere' (policy.toml:21) both grant user alice "
      "ports 8000-8010 (redundant)",
      "rule 'a' (policy.toml:4) and rule 'elsewhere2' (policy.toml:27) both grant user alice "
      "ports 8000-8010 (redundant)",
      "rule 'b' (policy.toml:9) and rule 'c' (policy.toml:16) both grant user alice ports "
      "8005-8010 with different modes or max_leases; either one suffices, since rules only grant",
      "rule 'b' (policy.toml:9) and rule 'elsewhere' (policy.toml:21) both grant user alice "
      "ports 8005-8010 with different modes or max_leases; either one suffices, since rules "
      "only grant",
      "rule 'b' (policy.toml:9) and rule 'elsewhere2' (policy.toml:27) both grant user alice "
      "ports 8005-8010 with different modes or max_leases; either one suffices, since rules "
      "only grant",
      "rule 'b' (policy.toml:9) allows max_leases = 9, more than [limits] max_leases_per_uid = "
      "5; the smaller limit applies",
      "rule 'c' (policy.toml:16) and rule 'elsewhere' (policy.toml:21) both grant user alice "
      "ports 8000-8010 (redundant)",
      "rule 'c' (policy.toml:16) and rule 'elsewhere2' (policy.toml:27) both grant user alice "
      "ports 8000-8010 (redundant)",
  };
  auto got = p.lint();
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == want[i]);
}

TEST_CASE("policy: runtime reservations") {
  Policy p = must_parse(kPolicy);

  SUBCASE("make_runtime_reservation parses the CLI's arguments") {
    std::vector<std::string> users = {"alice", "4242"}, groups = {"staff"};
    auto r = make_runtime_reservation("db", "tcp:127.0.0.1:5432", users, groups, true, kNames);
    REQUIRE(r.ok());
    CHECK(r->name == "db");
    CHECK(r->runtime);
    CHECK(r->hold);
    CHECK(r->origin.to_string() == "portbroker reserve");
    CHECK(r->protocols.to_string() == "tcp");
    CHECK(r->addresses == std::vector<IpAddress>{ip("127.0.0.1")});
    CHECK(r->ports == std::vector<PortRange>{{5432, 5432}});
    CHECK(r->principals.to_string() == "user alice, uid 4242, group staff");

    auto both = make_runtime_reservation("web", "both:any:8080-8090", {}, {}, false, kNames);
    REQUIRE(both.ok());
    CHECK(both->protocols.to_string() == "tcp/udp");
    CHECK(both->addresses.empty());
    CHECK(both->ports == std::vector<PortRange>{{8080, 8090}});
    CHECK(both->principals.to_string() == "nobody");

    auto v6 = make_runtime_reservation("dns", "udp:[::1]:53", {}, {}, false, kNames);
    REQUIRE(v6.ok());
    CHECK(v6->addresses == std::vector<IpAddress>{ip("::1")});
  }

  SUBCASE("make_runtime_reservation refuses bad arguments") {
    struct Case {
      const char* name;
      const char* target;
      const char* user;
      const char* problem;
    };
    const Case cases[] = {
        {"db", "tcp:1.2.3.4", "", "expected PROTO:ADDRESS:PORT[-PORT]"},
        {"db", "sctp:any:1", "", "unknown protocol 'sctp'"},
        {"db", "tcp:any:0", "", "port 0 is out of range"},
        {"db", "tcp:any:90-80", "", "is inverted"},
        {"db", "tcp:example.com:80", "", "not an IPv4 or IPv6 address"},
        {"db", "tcp:any:80", "mallory", "unknown user 'mallory'"},
        {"", "tcp:any:80", "", "invalid reservation name ''"},
        {"a/b", "tcp:any:80", "", "invalid reservation name 'a/b'"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.target);
      std::vector<std::string> users;
      if (*c.user) users.push_back(c.user);
      auto r = make_runtime_reservation(c.name, c.target, users, {}, false, kNames);
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().message);
      CHECK(r.error().code == ErrorCode::kBadRequest);
      CHECK(r.error().message.find(c.problem) != std::string::npos);
    }
  }

  SUBCASE("add and remove") {
    auto dup = make_runtime_reservation("mssql", "tcp:any:1", {}, {}, false, kNames);
    auto res = p.add_reservation(dup.value());
    REQUIRE_FALSE(res.ok());
    CHECK(res.error().code == ErrorCode::kConflict);
    CHECK(res.error().message == "reservation 'mssql' already exists (policy.toml:33)");

    auto overlap =
        make_runtime_reservation("sql2", "tcp:127.0.0.1:1400-1500", {}, {}, false, kNames);
    res = p.add_reservation(overlap.value());
    REQUIRE_FALSE(res.ok());
    CHECK(res.error().code == ErrorCode::kConflict);
    CHECK(res.error().message ==
          "reservation 'sql2' overlaps 'mssql' (reservation mssql in policy.toml:33) on port "
          "1433");

    std::vector<std::string> bob = {"bob"};
    auto udp = make_runtime_reservation("sql-udp", "udp:any:1433", bob, {}, true, kNames);
    REQUIRE(p.add_reservation(udp.value()).ok());
    CHECK(p.runtime_reservations().size() == 1);
    Decision d = p.check(kAlice, Request{kUdp, ip("0.0.0.0"), 1433, kExcl, false}, {});
    CHECK_FALSE(d.allowed);
    CHECK(d.reason ==
          "port 1433 is reserved for 'sql-udp' (reservation sql-udp in portbroker reserve); uid "
          "1000 is not among its principals");
    CHECK(p.check(kBob, Request{kUdp, ip("0.0.0.0"), 1433, kExcl, false}, {}).allowed);
    CHECK(p.guarded_ports().front() == PortRange{1433, 1433});

    res = p.remove_reservation("mssql");
    REQUIRE_FALSE(res.ok());
    CHECK(res.error().code == ErrorCode::kPermissionDenied);
    CHECK(res.error().message.find("is defined in policy.toml:33") != std::string::npos);
    res = p.remove_reservation("nope");
    REQUIRE_FALSE(res.ok());
    CHECK(res.error().code == ErrorCode::kNotFound);
    REQUIRE(p.remove_reservation("sql-udp").ok());
    CHECK(p.runtime_reservations().empty());
    CHECK(p.check(kAlice, Request{kUdp, ip("0.0.0.0"), 1433, kExcl, false}, {})
              .reason.find("deny by default") != std::string::npos);
  }
}

TEST_CASE("policy: state file round trip") {
  std::vector<Reservation> list;
  std::vector<std::string> users = {"alice", "7"}, groups = {"staff"};
  list.push_back(
      make_runtime_reservation("db", "tcp:127.0.0.1:5432", users, groups, true, kNames).value());
  list.push_back(
      make_runtime_reservation("dns", "both:[::1]:53-54", {}, {}, false, kNames).value());
  list.back().principals.anyone = true;
  list.back().principals.cgroups = {"/system.slice/\"quoted\".service"};
  list.back().modes = ModeSet{false, true, true};

  std::string text = to_state_toml(list);
  CAPTURE(text);
  auto back = parse_state(text, "/var/lib/portbroker/reservations.toml");
  REQUIRE_MESSAGE(back.ok(), (back.ok() ? "" : back.error().message));
  REQUIRE(back->size() == 2);
  const Reservation& db = (*back)[0];
  CHECK(db.name == "db");
  CHECK(db.runtime);
  CHECK(db.hold);
  CHECK(db.origin.file == "/var/lib/portbroker/reservations.toml");
  CHECK(db.origin.line > 0);
  CHECK(db.protocols.to_string() == "tcp");
  CHECK(db.addresses == std::vector<IpAddress>{ip("127.0.0.1")});
  CHECK(db.ports == std::vector<PortRange>{{5432, 5432}});
  CHECK(db.principals.to_string() == "uid 1000, uid 7, gid 50");  // ids, not names
  CHECK(db.modes.to_string() == "exclusive, shared, reuseport");
  const Reservation& dns = (*back)[1];
  CHECK(dns.protocols.to_string() == "tcp/udp");
  CHECK(dns.addresses == std::vector<IpAddress>{ip("::1")});
  CHECK(dns.ports == std::vector<PortRange>{{53, 54}});
  CHECK_FALSE(dns.hold);
  CHECK(dns.principals.anyone);
  CHECK(dns.principals.cgroups == std::vector<std::string>{"/system.slice/\"quoted\".service"});
  CHECK(dns.modes.to_string() == "shared, reuseport");

  auto empty = parse_state(to_state_toml({}), "s.toml");
  REQUIRE(empty.ok());
  CHECK(empty->empty());
}

TEST_CASE("policy: invalid state files") {
  struct Case {
    const char* text;
    const char* problem;
  };
  const Case cases[] = {
      {"", "s.toml:1:1: state file has no 'version'"},
      {"version = 2\n", "s.toml:1:11: unsupported state file version"},
      {"version = 1\nextra = 1\n", "s.toml:2:1: unknown key 'extra'"},
      {"version = 1\n[[reservation]]\nname = \"a\"\nports = 1\nusers = [\"alice\"]\n",
       "s.toml:5:10: unknown user 'alice' (state files store numeric ids)"},
      {"version = 1\n[[reservation]]\nname = \"a\"\nports = 1\n[[reservation]]\nname = "
       "\"a\"\nports = 2\n",
       "s.toml:6:8: duplicate reservation name 'a'"},
      {"version = 1\n[[reservation]\n", "s.toml:2:"},
  };
  for (const auto& c : cases) {
    auto r = parse_state(c.text, "s.toml");
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    CHECK(r.error().message.starts_with(c.problem));
  }
}

TEST_CASE("policy: port ranges") {
  CHECK(parse_port_range("1").value() == PortRange{1, 1});
  CHECK(parse_port_range("65535").value() == PortRange{65535, 65535});
  CHECK(parse_port_range("10-20").value() == PortRange{10, 20});
  for (const char* bad : {"", "-", "0", "65536", "1-", "-1", "1-2-3", "a", "+1", " 1", "1 ",
                          "99999999999999999999"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_port_range(bad).ok());
  }
  CHECK(normalize_ports({{10, 20}, {5, 9}, {30, 30}, {15, 25}, {31, 40}, {50, 50}}) ==
        std::vector<PortRange>{{5, 25}, {30, 40}, {50, 50}});
  CHECK(normalize_ports({{65535, 65535}, {1, 65534}}) == std::vector<PortRange>{{1, 65535}});
  CHECK(PortRange{8000, 8099}.to_string() == "8000-8099");
  CHECK(PortRange{80, 80}.to_string() == "80");
}

TEST_CASE("policy: [events] names who sees every uid's events") {
  Policy none = must_parse("");
  CHECK(none.event_readers.empty());
  CHECK_FALSE(none.event_readers.matches(kAlice));
  Policy p = must_parse("[events]\nusers = [\"alice\"]\ngroups = [\"web\"]\n");
  CHECK(p.event_readers.matches(kAlice));
  CHECK(p.event_readers.matches(kCarolWeb));
  CHECK_FALSE(p.event_readers.matches(kBob));
}
