// Policy [[share]] (ports several uids join together) and held reservations that never listen.
#include <doctest/doctest.h>

#include <map>
#include <string>

#include "broker/core/policy.h"

using namespace portbroker;
using namespace portbroker::broker;

namespace {

class ShareNames final : public NameResolver {
 public:
  std::optional<uint32_t> uid_of(std::string_view user) const override {
    static const std::map<std::string, uint32_t, std::less<>> users = {
        {"app", 1100}, {"envoy", 1101}, {"mallory", 1102}};
    auto it = users.find(user);
    return it == users.end() ? std::nullopt : std::optional<uint32_t>(it->second);
  }
  std::optional<uint32_t> gid_of(std::string_view) const override { return std::nullopt; }
};

const ShareNames kNames;

Principal principal(uint32_t uid, std::string cgroup = "/user.slice") {
  return Principal{uid, uid, {}, std::move(cgroup)};
}

const Principal kApp = principal(1100);
const Principal kEnvoy = principal(1101);
const Principal kMallory = principal(1102);
const Principal kPodA = principal(100000, "/machine.slice/libpod-aaaaaaaaaaaa.scope");
const Principal kPodB = principal(100001, "/machine.slice/libpod-bbbbbbbbbbbb.scope");

constexpr std::string_view kShares = R"([[share]]
name = "edge"
users = ["app", "envoy"]
ports = [8443]
protocol = "tcp"
modes = ["reuseport", "shared"]

[[share]]
name = "pods"
cgroups = ["/machine.slice/libpod-*.scope"]
ports = "9000-9009"
modes = ["reuseport"]
)";

Policy must_parse(std::string_view text) {
  auto p = parse_policy(text, "policy.toml", kNames);
  if (!p) FAIL("unexpected parse error: " << p.error().message);
  return std::move(p).value();
}

Request request(uint16_t port, Mode mode, Protocol proto = Protocol::kTcp) {
  return Request{proto, IpAddress::parse("0.0.0.0").value(), port, mode, false};
}

}  // namespace

TEST_CASE("share: parsed with its defaults") {
  Policy p = must_parse(kShares);
  REQUIRE(p.shares.size() == 2);
  CHECK(p.shares[0].name == "edge");
  CHECK(p.shares[0].origin.to_string() == "policy.toml:1");
  CHECK(p.shares[0].principals.to_string() == "user app, user envoy");
  CHECK(p.shares[0].modes.to_string() == "shared, reuseport");
  CHECK(p.shares[0].protocols.to_string() == "tcp");
  CHECK(p.shares[1].modes.to_string() == "reuseport");
  auto defaults = must_parse("[[share]]\nname = \"s\"\nusers = [\"app\"]\nports = 1\n");
  CHECK(defaults.shares[0].modes.to_string() == "shared, reuseport");
  CHECK(defaults.shares[0].protocols.to_string() == "tcp/udp");
}

TEST_CASE("share: invalid tables name the line and the problem") {
  struct Case {
    const char* text;
    const char* problem;
  };
  const Case cases[] = {
      {"[[share]]\nusers = [\"app\"]\nports = 1\n", "policy.toml:1:1: a [[share]] needs"},
      {"[[share]]\nname = \"s\"\nports = 1\n", "share 's' shares with nobody"},
      {"[[share]]\nname = \"s\"\nusers = [\"app\"]\n", "share 's' needs 'ports'"},
      {"[[share]]\nname = \"s\"\nusers = [\"app\"]\nports = 1\nmodes = [\"exclusive\"]\n",
       "policy.toml:5:9: a [[share]] cannot share an exclusive lease"},
      {"[[share]]\nname = \"s\"\nusers = [\"app\"]\nports = 1\nmax_leases = 3\n",
       "policy.toml:5:1: unknown key 'max_leases' in [[share]]"},
      {"[[share]]\nname = \"s\"\nusers = [\"nobody-here\"]\nports = 1\n", "nobody-here"},
      {"[[share]]\nname = \"s\"\nusers = [\"app\"]\nports = 1\n"
       "[[share]]\nname = \"s\"\nusers = [\"app\"]\nports = 2\n",
       "duplicate share name 's' (first defined at policy.toml:1)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.text);
    auto p = parse_policy(c.text, "policy.toml", kNames);
    REQUIRE_FALSE(p.ok());
    CHECK_MESSAGE(p.error().message.find(c.problem) != std::string::npos, p.error().message);
  }
}

TEST_CASE("share: who may join whose group") {
  Policy p = must_parse(kShares);
  struct Row {
    const char* what;
    Principal joiner, creator;
    Request req;
    bool allowed;
    const char* reason_part;
  };
  const Row rows[] = {
      {"sidecar joins the app", kEnvoy, kApp, request(8443, Mode::kReuseport), true, "'edge'"},
      {"app joins the sidecar, shared", kApp, kEnvoy, request(8443, Mode::kShared), true, "edge"},
      {"a uid not granted", kMallory, kApp, request(8443, Mode::kReuseport), false,
       "uid 1102 is not among the principals of share 'edge' (policy.toml:1) (user app, user "
       "envoy)"},
      {"a creator not granted", kApp, kMallory, request(8443, Mode::kReuseport), false,
       "uid 1102 is not among the principals of share 'edge'"},
      {"not on another port", kEnvoy, kApp, request(8444, Mode::kReuseport), false,
       "only uid 1100 or root may join it (no [[share]] in policy.toml covers tcp 0.0.0.0:8444 "
       "in mode reuseport)"},
      {"not for udp", kEnvoy, kApp, request(8443, Mode::kReuseport, Protocol::kUdp), false,
       "no [[share]]"},
      {"containers by cgroup", kPodB, kPodA, request(9005, Mode::kReuseport), true, "'pods'"},
      {"not in a mode the share lacks", kPodB, kPodA, request(9005, Mode::kShared), false,
       "no [[share]]"},
      {"a host process may not join a container's group", kApp, kPodA,
       request(9005, Mode::kReuseport), false,
       "uid 1100 is not among the principals of share 'pods'"},
  };
  for (const Row& r : rows) {
    CAPTURE(r.what);
    Decision d = p.may_join(r.joiner, r.creator, r.req);
    CHECK(d.allowed == r.allowed);
    if (!r.allowed) CHECK(d.code == ErrorCode::kConflict);
    CHECK_MESSAGE(d.reason.find(r.reason_part) != std::string::npos, d.reason);
  }
}

TEST_CASE("share: grants its principals the port in its modes, as a rule") {
  Policy p = must_parse(kShares);
  Decision granted = p.check(kEnvoy, request(8443, Mode::kReuseport), {});
  CHECK(granted.allowed);
  CHECK(granted.reason == "allowed by share 'edge' (policy.toml:1)");
  CHECK_FALSE(p.check(kEnvoy, request(8443, Mode::kExclusive), {}).allowed);
  CHECK_FALSE(p.check(kMallory, request(8443, Mode::kReuseport), {}).allowed);
  CHECK(p.check(kPodA, request(9009, Mode::kReuseport), {}).allowed);
  CHECK_FALSE(p.check(kPodA, request(9010, Mode::kReuseport), {}).allowed);
}

TEST_CASE("reservation: listen = false holds without listening, only with hold") {
  Policy p = must_parse(
      "[[reservation]]\nname = \"nat\"\nports = 30080\nprotocol = \"tcp\"\nhold = true\n"
      "listen = false\nusers = [\"app\"]\n");
  REQUIRE(p.reservations.size() == 1);
  CHECK(p.reservations[0].hold);
  CHECK_FALSE(p.reservations[0].listen);

  auto bad = parse_policy("[[reservation]]\nname = \"nat\"\nports = 30080\nlisten = false\n",
                          "policy.toml", kNames);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message ==
        "policy.toml:4:10: 'listen = false' needs 'hold = true': only a held port is bound by "
        "the daemon");

  // The runtime form, and its state file round trip.
  std::vector<std::string> users = {"app"};
  auto r = make_runtime_reservation("nat", "tcp:any:30080", users, {}, false, kNames);
  REQUIRE(r.ok());
  auto refused = set_no_listen(*r);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().message.find("--no-listen needs --hold") != std::string::npos);
  CHECK(r->listen);
  r->hold = true;
  REQUIRE(set_no_listen(*r).ok());
  std::vector<Reservation> list{*r};
  auto back = parse_state(to_state_toml(list), "state.toml");
  REQUIRE(back.ok());
  REQUIRE(back->size() == 1);
  CHECK((*back)[0].hold);
  CHECK_FALSE((*back)[0].listen);
}
