// portbroker_bench_flood: how much one uid's flood slows another uid down. Root's `status`
// latency (p50, p99) while the daemon is idle, then while uid 65534 floods it with each kind of
// request (check over a 64-port reservation, who, list of --held leases, status, malformed
// records), one request outstanding on each of --conns connections. Each flood's figures are
// ratios to the idle ones measured just before it, in the same run; the target is p99 under
// flood <= 5x idle p99. Runs inside a private network namespace, as root (the flood needs
// another uid).
//
//   portbroker_bench_flood [--samples N] [--held N] [--conns N] [--rounds N] [--daemon PATH]
//
// Prints a table and, last, one JSON line. Exit status: 0 when the run completed (whatever
// the figures), 1 when it could not run.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_support.h"
#include "common/flood.h"
#include "portbroker/client.hpp"

namespace pbbench {
namespace {

using pbtest::common::FloodKind;

struct Options {
  size_t samples = 2000;  // status round trips per measurement
  size_t held = 15000;    // leases the daemon holds (what list and status walk over)
  int conns = 60;         // the flooding uid's connections
  size_t rounds = 3;      // idle/flood pairs per kind; the median ratio is reported
  std::string daemon = PB_DAEMON_PATH;
};

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: portbroker_bench_flood [--samples N] [--held N] [--conns N] [--rounds N]\n"
               "                              [--daemon PATH]\n");
  std::exit(code);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "--samples") {
      o.samples = std::stoul(next());
    } else if (a == "--held") {
      o.held = std::stoul(next());
    } else if (a == "--conns") {
      o.conns = std::stoi(next());
    } else if (a == "--rounds") {
      o.rounds = std::stoul(next());
    } else if (a == "--daemon") {
      o.daemon = next();
    } else if (a == "--help") {
      usage(0);
    } else {
      usage(2);
    }
  }
  if (o.samples == 0 || o.rounds == 0 || o.conns <= 0) usage(2);
  return o;
}

// `count` exclusive leases held by `c` (its own copies of the sockets closed).
void hold_leases(portbroker::Client& c, size_t count) {
  std::vector<portbroker::SocketSpec> specs;
  for (size_t i = 0; i < count; ++i) {
    auto spec = portbroker::parse_socket_spec("tcp:127.0.0." + std::to_string(1 + i % 8) + ":" +
                                              std::to_string(31000 + i / 8));
    if (!spec) die("spec: %s", spec.error().message.c_str());
    specs.push_back(*spec);
    if (specs.size() == 64 || i + 1 == count) {
      auto leases = c.acquire_all(specs);
      if (!leases) die("holding leases: %s", leases.error().message.c_str());
      for (auto& l : *leases) ::close(l.release_fd());
      specs.clear();
    }
  }
}

Summary time_status(portbroker::Client& c, size_t samples) {
  TimedRun run = time_loop(samples / 10, samples, [&](std::string& err) {
    auto st = c.status();
    if (!st) err = st.error().message;
    return st.ok();
  });
  return summarize(std::move(run.samples_ns), run.wall_seconds);
}

// A forked flooder as uid 65534; it floods until its control pipe closes. Returns its pid and
// the write end of the pipe; waits until every connection has its first request in.
struct Flooder {
  pid_t pid = -1;
  int control = -1;
  int replies = -1;  // its count of whole replies comes back here when it stops
};

Flooder start_flooder(const std::string& path, FloodKind kind, int conns) {
  int control[2], ready[2];
  if (::pipe2(control, O_CLOEXEC) != 0 || ::pipe2(ready, O_CLOEXEC) != 0) die("pipe");
  pid_t pid = fork_child([&]() -> int {
    ::close(control[1]);
    ::close(ready[0]);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 3;
    pbtest::common::Flood flood;
    bool ok = pbtest::common::run_flood(
        path, kind, conns, 30000, control[0],
        [&](const pbtest::common::Flood&) {
          char c;
          if (::read(control[0], &c, 1) <= 0) return false;  // EOF: stop
          (void)!::write(ready[1], "+", 1);  // every connection has its first request in
          return true;
        },
        flood);
    if (!ok) std::fprintf(stderr, "flood: %s\n", flood.error.c_str());
    std::string count = std::to_string(flood.replies) + "\n";
    (void)!::write(ready[1], count.data(), count.size());
    return ok ? 0 : 1;
  });
  ::close(control[0]);
  ::close(ready[1]);
  // A byte on the control pipe is answered only from inside the flood loop: then it floods.
  char started = 0;
  if (::write(control[1], "g", 1) != 1 || ::read(ready[0], &started, 1) != 1 || started != '+') {
    die("the %s flooder did not start", pbtest::common::flood_name(kind));
  }
  return Flooder{pid, control[1], ready[0]};
}

long stop_flooder(Flooder& f) {
  ::close(f.control);
  char buf[64] = {};
  ssize_t n = ::read(f.replies, buf, sizeof(buf) - 1);
  ::close(f.replies);
  if (wait_child(f.pid) != 0) die("the flooder failed");
  return n > 0 ? std::atol(buf) : 0;
}

// Until the daemon has ended the flooder's sessions: their hang-ups are served in rounds like
// any request, and a next flooder connecting sooner would find its uid's connection limit
// still taken.
void await_sessions(portbroker::Client& c, uint32_t at_most) {
  for (int i = 0; i < 2000; ++i) {
    auto st = c.status();
    if (!st) die("status: %s", st.error().message.c_str());
    if (st->sessions <= at_most) return;
    ::usleep(5000);
  }
  die("the flooder's sessions did not end within 10 s");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run(const Options& o) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "portbroker_bench_flood needs root: the flood runs as another uid\n");
    return 1;
  }
  enter_private_netns();
  const uint64_t nofile = raise_fd_limit();
  if (nofile < o.held + 1000) die("RLIMIT_NOFILE %lu is too low for --held %zu", nofile, o.held);
  TempDir dir;
  // The flooding uid must reach the socket in it.
  if (::chmod(dir.path().c_str(), 0755) != 0) die("chmod %s", dir.path().c_str());
  const std::string config = dir.path() + "/portbroker.toml";
  std::ofstream(config) << "[[reservation]]\nname = \"big\"\nusers = [65534]\n"
                           "ports = \"30000-30063\"\nprotocol = \"both\"\n";
  const std::string leases = std::to_string(o.held + 1000);
  DaemonProcess daemon(o.daemon, dir.path(),
                       {"--config", config, "--state-dir", dir.path() + "/state",
                        "--max-root-leases", leases, "--log-level", "warn"});
  auto holder = portbroker::Client::connect(daemon.socket_path());
  if (!holder) die("connect: %s", holder.error().message.c_str());
  std::fprintf(stderr, "# holding %zu leases\n", o.held);
  hold_leases(*holder, o.held);
  auto victim = portbroker::Client::connect(daemon.socket_path());
  if (!victim) die("connect: %s", victim.error().message.c_str());

  struct Row {
    FloodKind kind;
    std::vector<double> idle_p50, idle_p99, p50, p99, r50, r99;
    long flood_replies = 0;
  };
  std::vector<Row> rows;
  for (FloodKind kind : pbtest::common::kFloodKinds)
    rows.push_back(Row{kind, {}, {}, {}, {}, {}, {}});
  auto before = victim->status();
  if (!before) die("status: %s", before.error().message.c_str());
  const uint32_t baseline_sessions = before->sessions;
  for (size_t round = 0; round < o.rounds; ++round) {
    for (Row& row : rows) {
      std::fprintf(stderr, "# round %zu: idle, then a %s flood\n", round + 1,
                   pbtest::common::flood_name(row.kind));
      Summary idle = time_status(*victim, o.samples);
      Flooder f = start_flooder(daemon.socket_path(), row.kind, o.conns);
      Summary flooded = time_status(*victim, o.samples);
      row.flood_replies += stop_flooder(f);
      await_sessions(*victim, baseline_sessions);
      row.idle_p50.push_back(idle.p50_us);
      row.idle_p99.push_back(idle.p99_us);
      row.p50.push_back(flooded.p50_us);
      row.p99.push_back(flooded.p99_us);
      row.r50.push_back(flooded.p50_us / idle.p50_us);
      row.r99.push_back(flooded.p99_us / idle.p99_us);
    }
  }

  std::printf(
      "root's status while uid 65534 floods (%d connections), %zu leases held, "
      "%zu samples, median of %zu rounds; load %s\n",
      o.conns, o.held, o.samples, o.rounds, loadavg().c_str());
  std::printf("%-10s %10s %10s %10s %10s %8s %8s %8s %6s %14s\n", "flood", "idle p50", "idle p99",
              "p50 us", "p99 us", "p50 x", "p99 x", "target", "", "flood replies");
  std::string json = "{\"bench\":\"flood\",\"held\":" + std::to_string(o.held) +
                     ",\"conns\":" + std::to_string(o.conns) + ",\"rows\":[";
  for (const Row& row : rows) {
    const double r99 = median(row.r99);
    std::printf("%-10s %10.1f %10.1f %10.1f %10.1f %8.2f %8.2f %8s %6s %14ld\n",
                pbtest::common::flood_name(row.kind), median(row.idle_p50), median(row.idle_p99),
                median(row.p50), median(row.p99), median(row.r50), r99, "<= 5x",
                r99 <= 5.0 ? "PASS" : "MISS", row.flood_replies);
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "%s{\"flood\":\"%s\",\"idle_p50_us\":%.1f,\"idle_p99_us\":%.1f,\"p50_us\":%.1f,"
                  "\"p99_us\":%.1f,\"p50_ratio\":%.2f,\"p99_ratio\":%.2f,\"flood_replies\":%ld}",
                  &row == &rows.front() ? "" : ",", pbtest::common::flood_name(row.kind),
                  median(row.idle_p50), median(row.idle_p99), median(row.p50), median(row.p99),
                  median(row.r50), r99, row.flood_replies);
    json += buf;
  }
  std::printf("%s]}\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace pbbench

int main(int argc, char** argv) { return pbbench::run(pbbench::parse_args(argc, argv)); }
