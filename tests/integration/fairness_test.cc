// Fair, bounded work and replies of any size: one uid flooding the daemon with its most
// expensive requests does not stop another uid being answered, and listings far larger than one
// record arrive whole, in parts the client library puts back together.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "common/flood.h"
#include "harness.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

using portbroker::ErrorCode;
using namespace pbtest;
namespace wire = portbroker::wire;

namespace {

using pbtest::common::FloodKind;

// A child, as uid 65534, keeping a request of `kind` outstanding on each of `conns` connections
// until its input closes. Answers each line with the number of whole replies so far.
Child start_flood(const Daemon& d, FloodKind kind, int conns) {
  const std::string path = d.socket_path();
  return Child::run(
      [path, kind, conns](ChildIo& io) {
        bool started = false;
        common::Flood flood;
        bool ok = common::run_flood(
            path, kind, conns, 30000, io.from_parent_fd(),
            [&](const common::Flood& f) {
              if (!io.read_line()) return false;
              if (!started) {
                started = true;
                io.send_line("flooding " + std::to_string(f.connections));
                return true;
              }
              io.send_line(std::to_string(f.replies));
              return true;
            },
            flood);
        if (!ok) io.send_line("flood failed: " + flood.error);
        return ok ? 0 : 1;
      },
      {.uid = 65534, .name = "pbflood"});
}

long flood_count(Child& flood) {
  flood.send_line("count");
  auto line = flood.read_line();
  REQUIRE(line.has_value());
  REQUIRE_MESSAGE(line->find_first_not_of("0123456789") == std::string::npos, *line);
  return std::stol(*line);
}

long rss_kib(pid_t pid) {
  std::string status = read_file("/proc/" + std::to_string(pid) + "/status");
  auto at = status.find("VmRSS:");
  return at == std::string::npos ? 0 : std::stol(status.substr(at + 6));
}

constexpr const char* kBigReservation = R"([[reservation]]
name = "big"
users = [65534]
ports = "30000-30063"
protocol = "both"
)";

// `count` exclusive TCP leases on 127.0.0.1-127.0.0.4 from port `first` on, in requests of 64;
// the client's own copies of the sockets are closed at once (the leases stay with the session).
void acquire_many(portbroker::Client& c, size_t count, uint16_t first) {
  std::vector<portbroker::SocketSpec> specs;
  for (size_t i = 0; i < count; ++i) {
    std::string spec =
        "tcp:127.0.0." + std::to_string(1 + i % 4) + ":" + std::to_string(first + i / 4);
    auto parsed = portbroker::parse_socket_spec(spec);
    REQUIRE(parsed.ok());
    specs.push_back(*parsed);
    if (specs.size() == 64 || i + 1 == count) {
      auto leases = c.acquire_all(specs);
      REQUIRE_MESSAGE(leases.ok(), leases.error().message);
      for (auto& l : *leases) ::close(l.release_fd());
      specs.clear();
    }
  }
}

}  // namespace

TEST_CASE("one uid's flood of every expensive request kind leaves another uid answered") {
  if (!can_switch_uid()) {
    MESSAGE("needs root to run the flood as another uid");
    return;
  }
  FdLeakCheck fds;
  Daemon d({.log_level = "info", .config_text = kBigReservation});
  // Listings worth flooding: 2,000 leases (a few parts each).
  portbroker::Client holder = d.connect();
  acquire_many(holder, 2000, 40000);
  const long rss_before = rss_kib(d.pid());

  const uint32_t idle_sessions = d.connect().status()->sessions;
  for (FloodKind kind : common::kFloodKinds) {
    INFO("flood of " << std::string(common::flood_name(kind)));
    Child flood = start_flood(d, kind, 60);
    flood.send_line("start");
    auto started = flood.read_line();
    REQUIRE(started.has_value());
    REQUIRE_MESSAGE(*started == "flooding 60", *started);
    const long before = flood_count(flood);
    // Root keeps being answered, cheap and expensive requests alike.
    portbroker::Client root = d.connect();
    for (int i = 0; i < 40; ++i) {
      auto st = root.status();
      REQUIRE_MESSAGE(st.ok(), st.error().message);
      if (i % 10 == 0) {
        auto who = root.who(portbroker::Protocol::kTcp, 30001);
        REQUIRE_MESSAGE(who.ok(), who.error().message);
        CHECK(who->reservations.size() == 1);
      }
    }
    // ... and so is the flood: it makes progress too. Its uid's share goes round its 60
    // connections one part at a time, so a whole long listing may take many rounds: wait for
    // one (each check a round trip through the flooding child).
    bool progressed = false;
    for (int i = 0; i < 200'000 && !progressed; ++i) progressed = flood_count(flood) > before;
    CHECK(progressed);
    flood.close_input();
    CHECK(flood.wait().ok());
    // The next flood's connections count against the same per-uid limit: let these go first.
    CHECK(d.wait_until([&](portbroker::Client& c) {
      auto st = c.status();
      return st.ok() && st->sessions <= idle_sessions;
    }));
  }
  // Nothing piled up in the daemon: its memory is about what it was (parts are built one at a
  // time, scans are bounded per uid), and ~Daemon checks its fds. AddressSanitizer keeps freed
  // memory in its quarantine (256 MiB by default), so its bound is that much larger.
#if defined(__SANITIZE_ADDRESS__)
  constexpr long kGrowthKib = (64 + 256) * 1024;
#else
  constexpr long kGrowthKib = 64 * 1024;
#endif
  CHECK(rss_kib(d.pid()) < rss_before + kGrowthKib);
}

TEST_CASE("list with 19,500 leases arrives whole, in parts") {
  FdLeakCheck fds;
  // Each lease is one fd in the daemon, which inherits the harness's hard limit of 20,000 open
  // files (raising it needs CAP_SYS_RESOURCE, which the test machine lacks): 19,500 leases
  // leave room for the daemon's own fds. About 5 MB of listing, 80 times the record limit.
  constexpr size_t kLeases = 19'500;
  Daemon d({.log_level = "warn"});
  portbroker::Client c = d.connect();
  acquire_many(c, kLeases, 30000);
  auto all = c.list();
  REQUIRE_MESSAGE(all.ok(), all.error().message);
  CHECK(all->size() == kLeases);
  std::set<uint64_t> ids;
  for (const auto& l : *all) ids.insert(l.id);
  CHECK(ids.size() == kLeases);
  // The connection is in step afterwards: the next request gets its own reply.
  auto st = c.status();
  REQUIRE(st.ok());
  CHECK(st->leases == kLeases);
  // The CLI's listing too.
  CommandResult r = run_cli(d, {"list", "--json"});
  CHECK_MESSAGE(r.status.ok(), r.describe().substr(0, 2000));
  CHECK(r.out.size() > kLeases * 100);
}

TEST_CASE("who with thousands of members of one reuseport group, and many reservations") {
  FdLeakCheck fds;
  std::string config;
  for (int i = 0; i < 1000; ++i) {
    config += "[[reservation]]\nname = \"svc" + std::to_string(i) +
              "\"\nusers = [65534]\nprotocol = \"tcp\"\nports = " + std::to_string(41000 + i) +
              "\n\n";
  }
  Daemon d({.log_level = "info", .config_text = config});
  portbroker::Client c = d.connect();
  auto member = portbroker::parse_socket_spec("tcp:127.0.0.1:18000,reuseport");
  REQUIRE(member.ok());
  std::vector<portbroker::SocketSpec> specs(64, *member);
  for (int i = 0; i < 40; ++i) {
    auto leases = c.acquire_all(specs);
    REQUIRE_MESSAGE(leases.ok(), leases.error().message);
    for (auto& l : *leases) ::close(l.release_fd());
  }
  auto who = c.who(portbroker::Protocol::kTcp, 18000);
  REQUIRE_MESSAGE(who.ok(), who.error().message);
  CHECK(who->leases.size() == 64 * 40);
  CHECK(who->port == 18000);
  auto reservations = c.reservations();
  REQUIRE_MESSAGE(reservations.ok(), reservations.error().message);
  CHECK(reservations->size() == 1000);
  CHECK(reservations->back().name == "svc999");
  CHECK(c.status().ok());
}
