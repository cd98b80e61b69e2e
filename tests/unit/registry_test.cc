#include "broker/core/registry.h"

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <string>
#include <vector>

using namespace portbroker;
using namespace portbroker::broker;

namespace {

Endpoint ep(const char* proto_addr_port) {
  auto spec = parse_socket_spec(proto_addr_port);
  REQUIRE_MESSAGE(spec.ok(), proto_addr_port);
  Endpoint e{spec->protocol, spec->address, spec->port, false};
  e.dual_stack = e.address.family == AF_INET6 && e.address.is_any();
  return e;
}

Holder holder(int pid, uint32_t uid, const char* comm) { return Holder{pid, uid, uid, comm, ""}; }

}  // namespace

TEST_CASE("endpoint overlap follows the kernel's bind rules") {
  struct Row {
    const char* a;
    const char* b;
    bool overlap;
  };
  const Row rows[] = {
      {"tcp:0.0.0.0:80", "tcp:0.0.0.0:80", true},
      {"tcp:0.0.0.0:80", "tcp:127.0.0.1:80", true},
      {"tcp:127.0.0.1:80", "tcp:127.0.0.2:80", false},
      {"tcp:127.0.0.1:80", "tcp:127.0.0.1:81", false},
      {"tcp:127.0.0.1:80", "udp:127.0.0.1:80", false},
      {"tcp:[::]:80", "tcp:0.0.0.0:80", true},   // dual-stack wildcard covers IPv4
      {"tcp:[::]:80", "tcp:10.0.0.1:80", true},  // ... every IPv4 address
      {"tcp:[::1]:80", "tcp:127.0.0.1:80", false},
      {"tcp:[::]:80", "tcp:[::1]:80", true},
      {"udp:[::1]:53", "udp:[::1]:53", true},
  };
  for (const Row& r : rows) {
    CAPTURE(r.a);
    CAPTURE(r.b);
    CHECK(endpoints_overlap(ep(r.a), ep(r.b)) == r.overlap);
    CHECK(endpoints_overlap(ep(r.b), ep(r.a)) == r.overlap);
  }
  Endpoint v6only = ep("tcp:[::]:80");
  v6only.dual_stack = false;
  CHECK_FALSE(endpoints_overlap(v6only, ep("tcp:0.0.0.0:80")));
}

TEST_CASE("plan: conflicts name the holder, joins need the same mode, endpoint and uid") {
  struct Row {
    const char* name;
    Mode first_mode;
    const char* second;
    Mode second_mode;
    uint32_t second_uid;
    bool join;
    const char* message_part;  // for refusals
  };
  const Row rows[] = {
      {"exclusive blocks exclusive", Mode::kExclusive, "tcp:0.0.0.0:8080", Mode::kExclusive, 1000,
       false, "is leased exclusively by pid 42 (web, uid 1000)"},
      {"exclusive blocks shared", Mode::kExclusive, "tcp:0.0.0.0:8080", Mode::kShared, 1000, false,
       "leased exclusively"},
      {"wildcard blocks specific", Mode::kExclusive, "tcp:127.0.0.1:8080", Mode::kExclusive, 0,
       false, "tcp 0.0.0.0:8080"},
      {"shared joins shared", Mode::kShared, "tcp:0.0.0.0:8080", Mode::kShared, 1000, true, ""},
      {"root joins anyone's group", Mode::kShared, "tcp:0.0.0.0:8080", Mode::kShared, 0, true, ""},
      {"other uid may not join", Mode::kShared, "tcp:0.0.0.0:8080", Mode::kShared, 1001, false,
       "only uid 1000 or root may join it"},
      {"reuseport joins reuseport", Mode::kReuseport, "tcp:0.0.0.0:8080", Mode::kReuseport, 1000,
       true, ""},
      {"shared does not join reuseport", Mode::kReuseport, "tcp:0.0.0.0:8080", Mode::kShared, 1000,
       false, "reuseport group"},
      {"join needs the same address", Mode::kShared, "tcp:127.0.0.1:8080", Mode::kShared, 1000,
       false, "ask for exactly tcp 0.0.0.0:8080"},
      {"other port is free", Mode::kExclusive, "tcp:0.0.0.0:8081", Mode::kExclusive, 1001, false,
       nullptr},
      {"other protocol is free", Mode::kExclusive, "udp:0.0.0.0:8080", Mode::kExclusive, 1001,
       false, nullptr},
  };
  for (const Row& r : rows) {
    CAPTURE(r.name);
    Registry reg;
    uint64_t b = reg.add_binding(ep("tcp:0.0.0.0:8080"), r.first_mode, {}, 1000);
    reg.add_lease(b, "", 1, holder(42, 1000, "web"), 0);
    auto plan = reg.plan(ep(r.second), r.second_mode, {}, r.second_uid);
    if (r.message_part == nullptr) {  // no overlap at all
      REQUIRE(plan.ok());
      CHECK(plan->kind == Plan::kCreate);
    } else if (r.join) {
      REQUIRE(plan.ok());
      CHECK(plan->kind == Plan::kJoin);
      CHECK(plan->binding == b);
    } else {
      REQUIRE_FALSE(plan.ok());
      CHECK(plan.error().code == ErrorCode::kConflict);
      CHECK_MESSAGE(plan.error().message.find(r.message_part) != std::string::npos,
                    plan.error().message);
    }
  }
}

TEST_CASE("joining with different options is refused") {
  Registry reg;
  SocketOptions big;
  big.backlog = 1024;
  uint64_t b = reg.add_binding(ep("tcp:0.0.0.0:8080"), Mode::kShared, big, 0);
  reg.add_lease(b, "", 1, holder(1, 0, "a"), 0);
  CHECK_FALSE(reg.plan(ep("tcp:0.0.0.0:8080"), Mode::kShared, {}, 0).ok());
  CHECK(reg.plan(ep("tcp:0.0.0.0:8080"), Mode::kShared, big, 0).ok());
}

TEST_CASE("removing leases: counts, sessions, and the last member ends the binding") {
  Registry reg;
  uint64_t b = reg.add_binding(ep("tcp:0.0.0.0:8080"), Mode::kShared, {}, 1000);
  uint64_t l1 = reg.add_lease(b, "a", 1, holder(10, 1000, "a"), 0);
  uint64_t l2 = reg.add_lease(b, "b", 2, holder(11, 1000, "b"), 0);
  uint64_t other = reg.add_lease(reg.add_binding(ep("udp:0.0.0.0:53"), Mode::kExclusive, {}, 0),
                                 "dns", 1, holder(10, 0, "a"), 0);
  CHECK(reg.lease_count() == 3);
  CHECK(reg.leases_of_uid(1000) == 2);
  CHECK(reg.leases_of_uid(0) == 1);
  CHECK(reg.leases_of_session(1) == std::vector<uint64_t>{l1, other});
  CHECK(reg.in_use(ep("tcp:127.0.0.1:8080")));

  auto r1 = reg.remove_lease(l1);
  REQUIRE(r1.has_value());
  CHECK_FALSE(r1->binding_empty);
  CHECK(reg.in_use(ep("tcp:0.0.0.0:8080")));
  auto r2 = reg.remove_lease(l2);
  REQUIRE(r2.has_value());
  CHECK(r2->binding_empty);
  CHECK(r2->mode == Mode::kShared);
  CHECK_FALSE(reg.in_use(ep("tcp:0.0.0.0:8080")));
  CHECK(reg.find_binding(b) == nullptr);
  CHECK_FALSE(reg.remove_lease(l2).has_value());  // twice: nothing
  CHECK(reg.leases_of_uid(1000) == 0);
  CHECK(reg.leases_of_session(2).empty());
  CHECK(reg.leases_of_session(1) == std::vector<uint64_t>{other});

  auto all = reg.all_leases();
  REQUIRE(all.size() == 1);
  CHECK(all[0]->name == "dns");
}

TEST_CASE("a conflict message lists a few holders of a big group") {
  Registry reg;
  uint64_t b = reg.add_binding(ep("tcp:0.0.0.0:9000"), Mode::kReuseport, {}, 0);
  for (int i = 0; i < 6; ++i) reg.add_lease(b, "", i, holder(100 + i, 0, "w"), 0);
  auto plan = reg.plan(ep("tcp:0.0.0.0:9000"), Mode::kExclusive, {}, 0);
  REQUIRE_FALSE(plan.ok());
  CHECK(plan.error().message.find("pid 100 (w, uid 0) since") != std::string::npos);
  CHECK(plan.error().message.find("and 3 more") != std::string::npos);
}

TEST_CASE("unreclaim: a lease reclaimed by token goes back to lingering for its own uid") {
  Registry r;
  const Endpoint e = ep("tcp:127.0.0.1:8080");
  const uint64_t b = r.add_binding(e, Mode::kExclusive, {}, 1000);
  const uint64_t id = r.add_lease(b, "web", 1, holder(4242, 1000, "web"), 0, 30, "c0ffee");
  r.set_lingering(id, 5000);

  REQUIRE(r.find_reclaimable(e, Mode::kExclusive, 1001, "c0ffee") == id);
  r.reclaim(id, 2, holder(5000, 1001, "other"));
  CHECK(r.leases_of_uid(1001) == 1);
  CHECK(r.leases_of_uid(1000) == 0);

  r.unreclaim(id, holder(4242, 1000, "web"), 5000);
  const Lease* l = r.find_lease(id);
  REQUIRE(l != nullptr);
  CHECK(l->lingering_until_ms == 5000);
  CHECK(l->session == 0);
  CHECK(l->holder.pid == 4242);
  CHECK(r.leases_of_session(2).empty());
  CHECK(r.leases_of_uid(1001) == 0);
  CHECK(r.leases_of_uid(1000) == 1);
  CHECK(r.find_reclaimable(e, Mode::kExclusive, 1000, "") == id);
  CHECK(r.expired(5000) == std::vector<uint64_t>{id});
}
