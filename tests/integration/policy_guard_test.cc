// The ephemeral-port guard: the daemon puts reserved ports into net.ipv4.ip_local_reserved_ports
// (of the test's private network namespace: the sysctl is per namespace), merged with entries
// it did not add; thousands of outgoing connections then never get a reserved port as their
// source port; a clean shutdown removes the daemon's entries and keeps foreign ones; after a
// crash the next daemon recognises its leftovers; without the guard, `check` and `who` say the
// reserved ports are unprotected.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

using namespace pbtest;

namespace {

const std::string kRangeSysctl = "/proc/sys/net/ipv4/ip_local_port_range";
const std::string kReservedSysctl = "/proc/sys/net/ipv4/ip_local_reserved_ports";

std::string read_sysctl(const std::string& path) {
  std::string text = read_file(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

void write_sysctl(const std::string& path, const std::string& value) {
  std::ofstream out(path);
  out << value << "\n";
  out.close();
  REQUIRE_MESSAGE(static_cast<bool>(out), "cannot write '" << value << "' to " << path);
}

// Sets this namespace's ephemeral range and reserved ports for one test and puts the previous
// values back afterwards (the namespace is private to this test binary, but later test cases
// in it expect the defaults).
class EphemeralSettings {
 public:
  EphemeralSettings(const std::string& range, const std::string& reserved)
      : old_range_(read_sysctl(kRangeSysctl)), old_reserved_(read_sysctl(kReservedSysctl)) {
    write_sysctl(kRangeSysctl, range);
    write_sysctl(kReservedSysctl, reserved);
  }
  ~EphemeralSettings() {
    std::ofstream(kRangeSysctl) << old_range_ << "\n";
    std::ofstream(kReservedSysctl) << old_reserved_ << "\n";
  }

 private:
  std::string old_range_;
  std::string old_reserved_;
};

struct Range {
  unsigned first = 0;
  unsigned last = 0;
};

// "1433,20000-29999,50123" -> ranges.
std::vector<Range> parse_port_list(const std::string& text) {
  std::vector<Range> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t comma = text.find(',', pos);
    std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? text.size() : comma + 1;
    if (item.empty()) continue;
    Range r;
    size_t dash = item.find('-');
    std::from_chars(item.data(), item.data() + (dash == std::string::npos ? item.size() : dash),
                    r.first);
    r.last = r.first;
    if (dash != std::string::npos) {
      std::from_chars(item.data() + dash + 1, item.data() + item.size(), r.last);
    }
    out.push_back(r);
  }
  return out;
}

bool covers(const std::vector<Range>& ranges, unsigned first, unsigned last) {
  for (unsigned p = first; p <= last; ++p) {
    bool in = false;
    for (const Range& r : ranges) in = in || (r.first <= p && p <= r.last);
    if (!in) return false;
  }
  return true;
}

bool intersects(const std::vector<Range>& ranges, unsigned first, unsigned last) {
  for (const Range& r : ranges) {
    if (r.first <= last && first <= r.last) return true;
  }
  return false;
}

struct SourcePorts {
  int connections = 0;
  std::string failure;  // empty when every connection was made
  std::set<unsigned> ports;
};

// `count` outgoing connections to 127.0.0.1:listen_port, each with a kernel-chosen source port.
// Every connection is accepted and then reset (SO_LINGER 0), so none lingers in TIME-WAIT and
// the small ephemeral range never runs dry.
SourcePorts connect_many(int listener, uint16_t listen_port, int count) {
  SourcePorts out;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(listen_port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < count; ++i) {
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!c) {
      out.failure = std::string("socket: ") + std::strerror(errno);
      return out;
    }
    if (::connect(c.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
      out.failure = "connect #" + std::to_string(i) + ": " + std::strerror(errno);
      return out;
    }
    out.ports.insert(local_port(c.get()));
    ++out.connections;
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 20000) != 1) {
      out.failure = "the listener never saw connection #" + std::to_string(i);
      return out;
    }
    UniqueFd accepted(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!accepted) {
      out.failure = std::string("accept: ") + std::strerror(errno);
      return out;
    }
    linger lg{1, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  return out;
}

std::vector<unsigned> ports_in(const std::set<unsigned>& ports, unsigned first, unsigned last) {
  std::vector<unsigned> out;
  for (unsigned p : ports) {
    if (first <= p && p <= last) out.push_back(p);
  }
  return out;
}

// Reserved 40000-40499 inside the ephemeral range 40000-40999: only 40500-40999 may be handed
// out as source ports while the guard is on.
constexpr const char* kReservedRange = R"([[reservation]]
name = "svc"
users = [65534]
ports = "40000-40499"
protocol = "tcp"

[[pool]]
name = "dyn"
users = ["*"]
ports = "31000-31009"
)";

constexpr int kConnections = 2000;

}  // namespace

TEST_CASE("the guard keeps reserved ports out of the source ports of thousands of connections") {
  FdLeakCheck fds;
  EphemeralSettings eph("40000 40999", "50123");
  REQUIRE(read_sysctl(kRangeSysctl) == "40000\t40999");

  UniqueFd listener = bind_outside(SOCK_STREAM, 18700);
  REQUIRE(listener.valid());
  TempDir dir;  // one state dir: the second daemon below knows which entries are its own
  {
    Daemon d({.dir = &dir, .config_text = kReservedRange});
    std::string reserved = read_sysctl(kReservedSysctl);
    INFO("ip_local_reserved_ports with the daemon running: " << reserved);
    auto ranges = parse_port_list(reserved);
    CHECK(covers(ranges, 40000, 40499));
    CHECK(covers(ranges, 31000, 31009));  // pools are guarded too
    CHECK(covers(ranges, 50123, 50123));  // the foreign entry was merged, not clobbered
    CHECK_FALSE(intersects(ranges, 40500, 40999));

    SourcePorts got = connect_many(listener.get(), 18700, kConnections);
    INFO("source ports used: " << got.ports.size() << " distinct");
    CHECK_MESSAGE(got.failure.empty(), got.failure);
    CHECK(got.connections == kConnections);
    auto stolen = ports_in(got.ports, 40000, 40499);
    CHECK_MESSAGE(stolen.empty(), stolen.size() << " reserved ports were used as source ports, "
                                                   "e.g. "
                                                << (stolen.empty() ? 0 : stolen.front()));
    // They did come from the (small) ephemeral range, so the guard was what steered them.
    CHECK(ports_in(got.ports, 40500, 40999).size() == got.ports.size());
    CHECK(got.ports.size() > 100);

    // `who` agrees.
    CommandResult who = run_cli(d, {"who", "40100"});
    INFO("who 40100: " << who.describe());
    CHECK(who.status.ok());
    CHECK(contains(who.out, "svc"));
    CHECK(contains(who.out, "inside, protected by ip_local_reserved_ports"));
    CommandResult check = run_cli(d, {"check"});
    CHECK_MESSAGE(check.status.ok(), check.describe());
    d.check_no_fd_leak();
    // Stopping is not revoking: after SIGTERM the entries stay, for the next daemon.
    d.stop();
    CHECK(covers(parse_port_list(read_sysctl(kReservedSysctl)), 40000, 40499));
  }
  {
    // The next daemon takes them over; an admin's `shutdown --revoke-all` takes them back.
    Daemon d({.dir = &dir, .config_text = kReservedRange});
    CommandResult down = run_cli(d, {"shutdown", "--revoke-all"});
    CHECK_MESSAGE(down.status.ok(), down.describe());
    d.wait_stopped();
  }
  CHECK(read_sysctl(kReservedSysctl) == "50123");

  // Without the guard the very same connections do get reserved ports: the check above has
  // teeth. (2000 connections walk the 1000-port range several times.)
  SourcePorts unguarded = connect_many(listener.get(), 18700, kConnections);
  CHECK_MESSAGE(unguarded.failure.empty(), unguarded.failure);
  CHECK_FALSE(ports_in(unguarded.ports, 40000, 40499).empty());
}

TEST_CASE("after a crash the next daemon replaces its own stale guard entries, keeping others") {
  FdLeakCheck fds;
  EphemeralSettings eph("40000 40999", "50123,50200-50210");
  TempDir dir;
  {
    Daemon d({.dir = &dir, .config_text = kReservedRange});
    CHECK(covers(parse_port_list(read_sysctl(kReservedSysctl)), 40000, 40499));
    d.kill_hard();
  }
  // Nobody cleaned up after the crash.
  auto left = parse_port_list(read_sysctl(kReservedSysctl));
  CHECK(covers(left, 40000, 40499));

  {
    // The next daemon's policy reserves something else: the old entries are its own (from the
    // state dir) and go; the foreign ones stay.
    Daemon d({.dir = &dir, .config_text = R"([[reservation]]
name = "other"
users = [65534]
ports = "40600-40609"
protocol = "tcp"
)"});
    std::string now = read_sysctl(kReservedSysctl);
    INFO("ip_local_reserved_ports after the restart: " << now);
    auto ranges = parse_port_list(now);
    CHECK_FALSE(intersects(ranges, 40000, 40499));
    CHECK_FALSE(intersects(ranges, 31000, 31009));
    CHECK(covers(ranges, 40600, 40609));
    CHECK(covers(ranges, 50123, 50123));
    CHECK(covers(ranges, 50200, 50210));
    CommandResult down = run_cli(d, {"shutdown", "--revoke-all"});
    CHECK_MESSAGE(down.status.ok(), down.describe());
    d.wait_stopped();
  }
  CHECK(read_sysctl(kReservedSysctl) == "50123,50200-50210");
}

TEST_CASE("a reload updates the guard") {
  FdLeakCheck fds;
  EphemeralSettings eph("40000 40999", "50123");
  Daemon d({.config_text = kReservedRange});
  CHECK(covers(parse_port_list(read_sysctl(kReservedSysctl)), 40000, 40499));
  {
    std::ofstream(d.dir() + "/portbroker.toml") << R"([[reservation]]
name = "svc"
users = [65534]
ports = "40000-40009"
protocol = "tcp"
)";
  }
  CommandResult reload = run_cli(d, {"reload"});
  REQUIRE_MESSAGE(reload.status.ok(), reload.describe());
  auto ranges = parse_port_list(read_sysctl(kReservedSysctl));
  CHECK(covers(ranges, 40000, 40009));
  CHECK_FALSE(intersects(ranges, 40010, 40499));
  CHECK(covers(ranges, 50123, 50123));
}

TEST_CASE("without the guard, reserved ports in the ephemeral range are reported unprotected") {
  FdLeakCheck fds;
  EphemeralSettings eph("40000 40999", "50123");
  Daemon d({.config_text = std::string("[daemon]\nephemeral_guard = false\n\n") + kReservedRange});
  CHECK(read_sysctl(kReservedSysctl) == "50123");
  CHECK(contains(d.log(), "reservation svc: ports 40000-40499 are inside the ephemeral range"));

  CommandResult check = run_cli(d, {"check"});
  INFO("check: " << check.describe());
  CHECK(check.status.exited);
  CHECK(check.status.code == 1);
  CHECK(contains(check.out, "unprotected"));
  CHECK(contains(check.out, "svc"));
  CHECK(contains(check.out, "40000-40499"));

  CommandResult who = run_cli(d, {"who", "40100"});
  INFO("who 40100: " << who.describe());
  CHECK(who.status.ok());
  CHECK(contains(who.out, "inside and NOT protected"));
  CommandResult json = run_cli(d, {"who", "40100", "--json"});
  CHECK(contains(json.out, R"("in_ephemeral_range": true)"));
  CHECK(contains(json.out, R"("guarded": false)"));
}
