#include "broker/core/port_set.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bitset>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "broker/os/sysctl.h"
#include "portbroker/fd.hpp"

using namespace portbroker;
using namespace portbroker::broker;

namespace {

std::vector<PortRange> ports(std::string_view text) {
  auto r = parse_port_list(text);
  if (!r) FAIL("bad test input '" << text << "': " << r.error().message);
  return std::move(r).value();
}

std::string fmt(const std::vector<PortRange>& p) { return format_port_list(p); }

}  // namespace

TEST_CASE("reserved_ports: parse and format the kernel's port list") {
  struct Case {
    const char* text;
    const char* normalized;
  };
  const Case good[] = {
      {"", ""},
      {"\n", ""},
      {"1433\n", "1433"},
      {"1433,8080-8090\n", "1433,8080-8090"},
      {"8080-8090,1433", "1433,8080-8090"},
      {"1,2,3", "1-3"},
      {"5-10,7-12", "5-12"},
      {"5-10,11-12,14", "5-12,14"},
      {"3-3", "3"},
      {"0", "0"},
      {"0-65535", "0-65535"},
      {"65535,0", "0,65535"},
      {" 1 , 2-3 \n", "1-3"},
  };
  for (const auto& c : good) {
    CAPTURE(c.text);
    auto r = parse_port_list(c.text);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    CHECK(format_port_list(r.value()) == c.normalized);
    // Formatting is the kernel's own syntax: it parses back to the same set.
    CHECK(parse_port_list(format_port_list(r.value())).value() == r.value());
  }

  struct Bad {
    const char* text;
    const char* problem;
  };
  const Bad bad[] = {
      {"a", "bad entry 'a' in port list 'a'"},
      {"1,", "bad entry ''"},
      {",1", "bad entry ''"},
      {"1,,2", "bad entry ''"},
      {"1-", "bad entry '1-'"},
      {"-1", "bad entry '-1'"},
      {"9-5", "inverted range '9-5'"},
      {"65536", "bad entry '65536'"},
      {"1-2-3", "bad entry '1-2-3'"},
      {"1 2", "bad entry '1 2'"},
      {"+1", "bad entry '+1'"},
  };
  for (const auto& c : bad) {
    CAPTURE(c.text);
    auto r = parse_port_list(c.text);
    REQUIRE_FALSE(r.ok());
    CAPTURE(r.error().message);
    CHECK(r.error().code == ErrorCode::kBadRequest);
    CHECK(r.error().message.find(c.problem) != std::string::npos);
  }

  CHECK(format_port_list({}) == "");
  CHECK(format_port_list({{20, 30}, {1, 1}, {2, 5}}) == "1-5,20-30");
}

TEST_CASE("reserved_ports: set operations") {
  struct Case {
    const char* a;
    const char* b;
    const char* uni;
    const char* inter;
    const char* a_minus_b;
  };
  const Case cases[] = {
      {"", "", "", "", ""},
      {"1-10", "", "1-10", "", "1-10"},
      {"", "1-10", "1-10", "", ""},
      {"1-10", "5", "1-10", "5", "1-4,6-10"},
      {"1-10", "1-10", "1-10", "1-10", ""},
      {"1-10", "0-65535", "0-65535", "1-10", ""},
      {"1-10,20-30", "5-25", "1-30", "5-10,20-25", "1-4,26-30"},
      {"5-25", "1-10,20-30", "1-30", "5-10,20-25", "11-19"},
      {"0-65535", "0,65535", "0-65535", "0,65535", "1-65534"},
      {"1,3,5", "2,4", "1-5", "", "1,3,5"},
      {"1-3,7-9", "3-7", "1-9", "3,7", "1-2,8-9"},
      {"100-200", "1-99,201-300", "1-300", "", "100-200"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.a);
    CAPTURE(c.b);
    auto a = ports(c.a), b = ports(c.b);
    CHECK(fmt(port_set_union(a, b)) == c.uni);
    CHECK(fmt(port_set_intersection(a, b)) == c.inter);
    CHECK(fmt(port_set_difference(a, b)) == c.a_minus_b);
  }
  // Inputs need not be normalized.
  const std::vector<PortRange> messy = {{8, 9}, {1, 5}, {3, 7}};
  CHECK(fmt(port_set_difference(messy, std::vector<PortRange>{{4, 4}})) == "1-3,5-9");
}

TEST_CASE("reserved_ports: plan keeps foreign entries and takes back only ours") {
  struct Case {
    const char* what;
    const char* current;
    const char* ours_before;
    const char* wanted;
    const char* value;
    const char* ours;
    bool changed;
  };
  const Case cases[] = {
      {"start on an empty sysctl", "", "", "1433,20000-29999", "1433,20000-29999",
       "1433,20000-29999", true},
      {"start next to foreign entries", "1433,5000", "", "1433,8080", "1433,5000,8080", "8080",
       true},
      {"shutdown removes ours only", "1433,5000,8080", "8080", "", "1433,5000", "", true},
      {"shutdown with nothing of ours", "8000-8100", "", "", "8000-8100", "", false},
      {"wanted inside a foreign range", "8000-8100", "", "8080", "8000-8100", "", false},
      {"reload moves a range", "1433,5000,8080-8090", "8080-8090", "8085-8095",
       "1433,5000,8085-8095", "8085-8095", true},
      {"admin removed one of ours: re-added", "5000", "8080", "8080", "5000,8080", "8080", true},
      {"admin removed one of ours we no longer want", "5000", "8080", "", "5000", "", false},
      {"steady state", "1433", "1433", "1433", "1433", "1433", false},
      {"foreign ports inside a range of ours survive", "8080-8090", "8080-8084", "", "8085-8090",
       "", true},
      {"merges adjacent foreign and ours", "1000-1009", "", "1010-1019", "1000-1019", "1010-1019",
       true},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    GuardPlan plan = plan_reserved_ports(ports(c.current), ports(c.ours_before), ports(c.wanted));
    CHECK(fmt(plan.value) == c.value);
    CHECK(fmt(plan.ours) == c.ours);
    CHECK(plan.changed == c.changed);
  }
}

TEST_CASE("reserved_ports: plan invariants on random sets") {
  // A bitset model of the sysctl: whatever happens, foreign ports stay, wanted ports are in,
  // and taking everything back leaves exactly the foreign ports.
  constexpr size_t kUniverse = 200;
  using Bits = std::bitset<kUniverse>;
  std::mt19937 rng(20240501);  // fixed: a failure must reproduce
  auto random_set = [&](int density) {
    Bits b;
    for (size_t i = 1; i < kUniverse; ++i) b[i] = static_cast<int>(rng() % 100) < density;
    return b;
  };
  auto to_ranges = [](const Bits& b) {
    std::vector<PortRange> out;
    for (size_t i = 0; i < kUniverse; ++i)
      if (b[i]) out.push_back(PortRange{uint16_t(i), uint16_t(i)});
    return normalize_ports(out);
  };
  auto to_bits = [](const std::vector<PortRange>& r) {
    Bits b;
    for (const auto& x : r)
      for (uint32_t p = x.first; p <= x.last; ++p) b[p] = true;
    return b;
  };
  for (int round = 0; round < 500; ++round) {
    CAPTURE(round);
    Bits foreign = random_set(20);
    Bits wanted1 = random_set(30), wanted2 = random_set(30);
    // Start, reload, shutdown.
    GuardPlan start = plan_reserved_ports(to_ranges(foreign), {}, to_ranges(wanted1));
    Bits v1 = to_bits(start.value), o1 = to_bits(start.ours);
    CHECK((v1 & foreign) == foreign);
    CHECK((v1 & wanted1) == wanted1);
    CHECK((o1 & foreign).none());
    CHECK((o1 | foreign) == v1);

    GuardPlan reload = plan_reserved_ports(start.value, start.ours, to_ranges(wanted2));
    Bits v2 = to_bits(reload.value), o2 = to_bits(reload.ours);
    CHECK((v2 & foreign) == foreign);
    CHECK((v2 & wanted2) == wanted2);
    CHECK((o2 & foreign).none());
    CHECK((o2 | foreign) == v2);

    GuardPlan stop = plan_reserved_ports(reload.value, reload.ours, {});
    CHECK(to_bits(stop.value) == foreign);
    CHECK(stop.ours.empty());
  }
}

TEST_CASE("reserved_ports: ip_local_port_range and unprotected ports") {
  CHECK(parse_local_port_range("32768\t60999\n").value() == PortRange{32768, 60999});
  CHECK(parse_local_port_range("1024 65000").value() == PortRange{1024, 65000});
  CHECK(parse_local_port_range("  50000 \t 50000 \n").value() == PortRange{50000, 50000});
  for (const char* bad : {"", "32768", "60999 32768", "a b", "1 2 3", "1 70000"}) {
    CAPTURE(bad);
    auto r = parse_local_port_range(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("bad ip_local_port_range") != std::string::npos);
  }

  struct Case {
    const char* wanted;
    const char* reserved;
    PortRange ephemeral;
    const char* unprotected;
  };
  const Case cases[] = {
      {"1433,20000-29999", "", {32768, 60999}, ""},
      {"1433,40000-40010", "", {32768, 60999}, "40000-40010"},
      {"1433,40000-40010", "40005", {32768, 60999}, "40000-40004,40006-40010"},
      {"1433,40000-40010", "40000-40010", {32768, 60999}, ""},
      {"1433", "", {1024, 65535}, "1433"},
      {"30000-33000", "", {32768, 60999}, "32768-33000"},
      {"", "1-65535", {32768, 60999}, ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.wanted);
    CAPTURE(c.reserved);
    CHECK(fmt(unprotected_ports(ports(c.wanted), ports(c.reserved), c.ephemeral)) == c.unprotected);
  }
}

TEST_CASE("reserved_ports: read, write and apply on a plain file") {
  char path[] = "/tmp/pb-reserved-ports-XXXXXX";
  int raw = ::mkstemp(path);
  REQUIRE(raw >= 0);
  ::close(raw);
  struct Unlink {
    const char* p;
    ~Unlink() { ::unlink(p); }
  } unlink_at_end{path};
  { std::ofstream(path) << "5000,1433\n"; }

  auto current = read_reserved_ports(path);
  REQUIRE(current.ok());
  CHECK(fmt(current.value()) == "1433,5000");

  const std::vector<PortRange> wanted = {{1433, 1433}, {20000, 29999}};
  auto plan = apply_reserved_ports({}, wanted, path);
  REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? "" : plan.error().message));
  CHECK(plan->changed);
  CHECK(fmt(plan->ours) == "20000-29999");
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  CHECK(text.str() == "1433,5000,20000-29999\n");

  auto undo = apply_reserved_ports(plan->ours, {}, path);
  REQUIRE(undo.ok());
  CHECK(fmt(read_reserved_ports(path).value()) == "1433,5000");

  // Every other port: far more than one write may carry.
  std::vector<PortRange> huge;
  for (uint32_t p = 2; p < 20000; p += 2) huge.push_back(PortRange{uint16_t(p), uint16_t(p)});
  auto w = write_reserved_ports(huge, path);
  REQUIRE_FALSE(w.ok());
  CHECK(w.error().code == ErrorCode::kInvalidOption);
  CHECK(fmt(read_reserved_ports(path).value()) == "1433,5000");  // untouched

  { std::ofstream(path) << "12,banana\n"; }
  auto garbage = read_reserved_ports(path);
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.error().message.find(path) != std::string::npos);

  auto missing = read_reserved_ports("/nonexistent/ip_local_reserved_ports");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("/nonexistent/ip_local_reserved_ports") != std::string::npos);
  CHECK_FALSE(read_local_port_range("/nonexistent/range").ok());
}

namespace {

uint64_t netns_inode() {
  struct stat st {};
  return ::stat("/proc/self/ns/net", &st) == 0 ? st.st_ino : 0;
}

// Runs in a forked child: the real sysctls, in a network namespace of its own. Returns "" on
// success, "SKIP: ..." when no namespace could be made, else what went wrong. Writes nothing
// unless the namespace is provably not the parent's.
std::string exercise_real_sysctl(uint64_t parent_netns) {
  // Without root, a user namespace of our own owns the new network namespace (and so may
  // write its sysctls); this process is a single-threaded fork, so that is allowed.
  if (::unshare(CLONE_NEWNET) != 0 && ::unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) {
    return std::string("SKIP: unshare(CLONE_NEWNET): ") + std::strerror(errno);
  }
  if (netns_inode() == 0 || netns_inode() == parent_netns) return "still in the parent's netns";

  auto fresh = read_reserved_ports();
  if (!fresh) return fresh.error().message;
  if (!fresh->empty()) return "a fresh namespace has reserved ports: " + fmt(fresh.value());
  auto ephemeral = read_local_port_range();
  if (!ephemeral) return ephemeral.error().message;

  // An admin's entry, there before the daemon.
  const std::vector<PortRange> foreign = {{5000, 5000}, {40005, 40005}};
  if (auto w = write_reserved_ports(foreign); !w) return w.error().message;

  const std::vector<PortRange> wanted = {{1433, 1433}, {40000, 40010}};
  auto start = apply_reserved_ports({}, wanted);
  if (!start) return start.error().message;
  auto now = read_reserved_ports();
  if (!now) return now.error().message;
  if (fmt(now.value()) != "1433,5000,40000-40010") return "after start: " + fmt(now.value());
  if (fmt(start->ours) != "1433,40000-40004,40006-40010") return "ours: " + fmt(start->ours);
  if (!unprotected_ports(wanted, now.value(), ephemeral.value()).empty()) {
    return "unprotected after start: " +
           fmt(unprotected_ports(wanted, now.value(), ephemeral.value()));
  }

  auto stop = apply_reserved_ports(start->ours, {});
  if (!stop) return stop.error().message;
  now = read_reserved_ports();
  if (!now) return now.error().message;
  if (fmt(now.value()) != "5000,40005") return "after shutdown: " + fmt(now.value());

  // The kernel must accept an empty list as "none".
  if (auto w = write_reserved_ports({}); !w) return "clearing: " + w.error().message;
  now = read_reserved_ports();
  if (!now || !now->empty()) return "clearing did not clear";
  return "";
}

}  // namespace

TEST_CASE("reserved_ports: the real sysctl, in a private network namespace") {
  auto host_before = read_reserved_ports();
  REQUIRE_MESSAGE(host_before.ok(), (host_before.ok() ? "" : host_before.error().message));
  const uint64_t parent_netns = netns_inode();
  REQUIRE(parent_netns != 0);

  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  UniqueFd out_r(fds[0]), out_w(fds[1]);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    out_r.reset();
    std::string msg = exercise_real_sysctl(parent_netns);
    (void)!::write(out_w.get(), msg.data(), msg.size());
    ::_exit(0);
  }
  out_w.reset();
  std::string msg;
  char buf[512];
  for (;;) {
    ssize_t n = ::read(out_r.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));

  if (msg.starts_with("SKIP:")) {
    MESSAGE("skipping the real sysctl: " << msg);
  } else {
    CHECK_MESSAGE(msg.empty(), msg);
  }
  auto host_after = read_reserved_ports();
  REQUIRE(host_after.ok());
  CHECK(fmt(host_after.value()) == fmt(host_before.value()));  // the host was never touched
}
