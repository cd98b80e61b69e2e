// portbroker_bench: acquire+release through the real portbrokerd, against the raw floor of the
// same kernel work measured in the same run. Runs entirely inside a private network namespace.
//
//   portbroker_bench [--quick] [--iterations N] [--duration SECONDS] [--clients N] [--held N]
//                    [--rounds N] [--daemon PATH] [--daemon-arg ARG]... [--cpu N | --no-pin]
//                    [--nice N] [--floor-only]          (--help says what each does)
//
// The floor: A, socket+bind+listen+close in this process; B, a SEQPACKET round trip between two
// processes; F = 2 x B + A, what an acquire+release cannot beat. Ac and Fc, for information: the
// same with the two calls a lease adds to that kernel work (getsockopt SO_COOKIE for the journal,
// shutdown so that no copy keeps the port). M, a minimal single-threaded epoll broker doing the
// syscalls of F plus the fd passing (no policy, registry, serialization), is the floor for
// throughput with many clients. Sequential phases run client and server on one
// CPU (a wake-up on another CPU costs tens of microseconds more on a VM and would swamp the
// comparison); figures compared with each other are measured in interleaved rounds so that
// they saw the same background load.
//
// The journal's cost: S (journal on, the default) and Snj (the same daemon with --no-journal)
// in the same interleaved rounds, both against F. Restarts: the time from start to READY=1 of
// a daemon that takes over --held leases from one killed with SIGKILL, from the live holders
// (pidfd_getfd) and from the fd store (this process plays the service manager), against an
// empty start of the same daemon timed just before each (plus, for the crash, the bare
// pidfd_getfd calls). One fd per held lease is open in the daemon and, for the restarts, in the
// holders or in this process: --held must leave room under RLIMIT_NOFILE.
//
// Prints a table (each figure, its floor, the ratio, the target, PASS/MISS) and, last, one JSON
// line. Exit status: 0 when the run completed (whatever the figures), 1 when it could not run.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_raw.h"
#include "bench/bench_restart.h"
#include "bench/bench_support.h"
#include "portbroker/client.hpp"

namespace pbbench {
namespace {

struct Options {
  size_t iterations = 30000;
  size_t warmup = 2000;
  double duration = 6.0;
  int clients = 32;
  size_t held = 15000;
  int holders = 3;
  size_t rounds = 3;    // compared figures are measured in this many interleaved chunks
  size_t restarts = 3;  // daemon restarts timed per restart figure
  std::string daemon;
  std::vector<std::string> daemon_args;
  bool floor_only = false;
  int cpu = 0;     // sequential phases: client and server both here; < 0: not pinned
  int nice = -20;  // for every process of the run, the daemon included
};

// The CPU for the cross-CPU rows, -1 when there is none.
int other_cpu(const Options& o) {
  if (o.cpu < 0 || cpu_count() < 2) return -1;
  return (o.cpu + 1) % cpu_count();
}

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: portbroker_bench [--quick] [--iterations N] [--duration SECONDS]\n"
               "                        [--clients N] [--held N] [--rounds N]\n"
               "                        [--daemon PATH] [--daemon-arg ARG]...\n"
               "                        [--cpu N | --no-pin] [--nice N] [--restarts N]\n"
               "                        [--floor-only]\n"
               "  --quick         fewer iterations and a shorter concurrent run (a smoke test)\n"
               "  --iterations N  timed acquire+release (and floor) iterations (default 30000)\n"
               "  --duration S    seconds of each concurrent run (default 6)\n"
               "  --clients N     concurrent client processes (default 32)\n"
               "  --held N        leases held for the p99-under-load and restart figures\n"
               "                  (default 15000). Each is an fd in the daemon, and in the\n"
               "                  restart figures also in its holder (after a crash) or in\n"
               "                  this process (the emulated fd store): the RLIMIT_NOFILE hard\n"
               "                  limit must exceed N + 2000 (this machine's is 20000)\n"
               "  --restarts N    timed daemon restarts per restart figure (default 3; the\n"
               "                  empty start they are compared with is timed as often)\n"
               "  --daemon PATH   portbrokerd binary (default: the one built with this tree)\n"
               "  --daemon-arg A  extra argument for portbrokerd (repeatable)\n"
               "  --rounds N      interleaved chunks for compared figures (default 3)\n"
               "  --cpu N         CPU for the sequential phases, client and server alike\n"
               "                  (default 0; cross-CPU rows put the server on the next CPU)\n"
               "  --no-pin        do not pin the sequential phases (ratios get noisy: a\n"
               "                  wake-up on another CPU costs far more than on the same one)\n"
               "  --nice N        nice value of every process of the run (default -20, so\n"
               "                  that other work on the machine disturbs the tails less)\n"
               "  --floor-only    measure the raw floor only (no daemon)\n");
  std::exit(code);
}

Options parse_args(int argc, char** argv) {
  Options o;
#ifdef PB_DAEMON_PATH
  o.daemon = PB_DAEMON_PATH;
#endif
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "--quick") {
      o.iterations = 5000;
      o.warmup = 500;
      o.duration = 1.0;
      o.restarts = 1;
    } else if (a == "--iterations") {
      o.iterations = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--duration") {
      o.duration = std::strtod(value().c_str(), nullptr);
    } else if (a == "--clients") {
      o.clients = std::atoi(value().c_str());
    } else if (a == "--held") {
      o.held = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--rounds") {
      o.rounds = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--restarts") {
      o.restarts = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--cpu") {
      o.cpu = std::atoi(value().c_str());
    } else if (a == "--no-pin") {
      o.cpu = -1;
    } else if (a == "--nice") {
      o.nice = std::atoi(value().c_str());
    } else if (a == "--floor-only") {
      o.floor_only = true;
    } else if (a == "--daemon") {
      o.daemon = value();
    } else if (a == "--daemon-arg") {
      o.daemon_args.push_back(value());
    } else if (a == "--help" || a == "-h") {
      usage(0);
    } else {
      std::fprintf(stderr, "portbroker_bench: unknown argument '%s'\n", a.c_str());
      usage(2);
    }
  }
  if (o.iterations < 100 || o.duration <= 0 || o.clients < 1 || o.cpu >= cpu_count() ||
      o.rounds < 1 || o.restarts < 1) {
    usage(2);
  }
  if (o.floor_only) return o;
  if (o.daemon.empty()) die("no daemon binary: pass --daemon PATH");
  if (::access(o.daemon.c_str(), X_OK) != 0) die("%s is not executable", o.daemon.c_str());
  return o;
}

void phase(const char* what) {
  std::fprintf(stderr, "# %s\n", what);
  std::fflush(stderr);
}

portbroker::SocketSpec tcp_spec(const std::string& address, uint16_t port) {
  portbroker::SocketSpec spec;
  spec.protocol = portbroker::Protocol::kTcp;
  auto a = portbroker::IpAddress::parse(address);
  if (!a) die("bad address %s", address.c_str());
  spec.address = a.value();
  spec.port = port;
  return spec;
}

// One acquire of a pool port and its release, as an application does it.
bool acquire_release(portbroker::Client& client, const portbroker::SocketSpec& spec,
                     std::string& err) {
  auto lease = client.acquire(spec);
  if (!lease) {
    err = "acquire: " + lease.error().message;
    return false;
  }
  auto released = lease->release();
  if (!released) {
    err = "release: " + released.error().message;
    return false;
  }
  return true;
}

std::shared_ptr<portbroker::Client> connect_or_die(const std::string& path) {
  auto c = portbroker::Client::connect(path);
  if (!c) die("connect %s: %s", path.c_str(), c.error().message.c_str());
  return std::make_shared<portbroker::Client>(std::move(c).value());
}

// Processes that hold `count` leases on explicit ports (tcp 127.0.0.N:30000-44999) until
// destroyed. They close their copies of the fds so that only the daemon's duplicates stay open,
// unless `keep_fds` (as servers do: a daemon restarted after a crash takes its copies back from
// them).
class Holders {
 public:
  Holders(const std::string& socket_path, size_t count, int processes, bool keep_fds = false) {
    int ready[2];
    if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(stop_, O_CLOEXEC) != 0) {
      die("pipe: %s", std::strerror(errno));
    }
    size_t per = (count + static_cast<size_t>(processes) - 1) / static_cast<size_t>(processes);
    for (int h = 0; h < processes; ++h) {
      size_t first = static_cast<size_t>(h) * per;
      size_t last = std::min(count, first + per);
      pids_.push_back(fork_child([&, first, last]() -> int {
        ::close(ready[0]);
        ::close(stop_[1]);
        // Always answer on `ready`: the other holders keep its write end open, so the parent
        // would not see an end of file.
        auto fail = [&](const std::string& why) {
          std::fprintf(stderr, "portbroker_bench: lease holder: %s\n", why.c_str());
          char bad = 'x';
          (void)!::write(ready[1], &bad, 1);
          return 1;
        };
        auto c = portbroker::Client::connect(socket_path);
        if (!c) return fail(c.error().message);
        std::vector<portbroker::Lease> leases;
        leases.reserve(last - first);
        for (size_t i = first; i < last; ++i) {
          std::string addr = "127.0.0." + std::to_string(1 + i / 15000);
          auto lease = c->acquire(tcp_spec(addr, static_cast<uint16_t>(30000 + i % 15000)));
          if (!lease) return fail("lease " + std::to_string(i) + ": " + lease.error().message);
          if (!keep_fds) ::close(lease->release_fd());
          leases.push_back(std::move(*lease));
        }
        char ok = 'k';
        if (::write(ready[1], &ok, 1) != 1) return 1;
        char c2;
        while (::read(stop_[0], &c2, 1) > 0) {
        }
        // _exit (in fork_child) ends the session: the daemon releases everything at once.
        return 0;
      }));
    }
    ::close(ready[1]);
    ::close(stop_[0]);
    for (int got = 0; got < processes; ++got) {
      char c;
      if (::read(ready[0], &c, 1) != 1 || c != 'k') die("a lease holder failed (see above)");
    }
    ::close(ready[0]);
  }
  ~Holders() { stop(); }
  const std::vector<pid_t>& pids() const { return pids_; }
  // Ends the holders' sessions (the daemon then releases their leases).
  void stop() {
    if (stop_[1] >= 0) ::close(std::exchange(stop_[1], -1));
    for (pid_t p : pids_) wait_child(p);
    pids_.clear();
  }

 private:
  int stop_[2] = {-1, -1};
  std::vector<pid_t> pids_;
};

struct FloorResults {
  Summary bind_fixed, bind_any, bind_contract, rt, rt_fd, rt_cross, raw_seq, raw_conc;
  double floor_us = 0;           // 2 x B + A, at p50
  double floor_contract_us = 0;  // 2 x B + Ac: with the two calls a lease adds
  double floor_cross_us = 0;     // the same with the peer on another CPU
};

struct DaemonResults {
  Summary seq, seq_cross, held, conc;
  Summary seq_nj;  // the same daemon with --no-journal, in the same rounds
  uint64_t conc_ops = 0;
  uint32_t leases_held = 0;
  int fds_idle = -1, fds_held = -1, fds_end = -1, exit_status = -1;
};

// Samples gathered over several interleaved chunks, so that two figures compared with each
// other saw the same background load (this machine is shared).
struct Accumulated {
  std::vector<uint64_t> samples;
  double seconds = 0;
  uint64_t ops = 0;

  CpuTime server;  // CPU the server process spent in the measured runs
  bool server_measured = false;
  double worker_min_ops = -1, worker_max_ops = -1;

  void add(TimedRun r) {
    ops += r.samples_ns.size();
    samples.insert(samples.end(), r.samples_ns.begin(), r.samples_ns.end());
    seconds += r.wall_seconds;
  }
  void add(ConcurrentRun r) {
    ops += r.ops;  // samples may be capped; the count is not
    samples.insert(samples.end(), r.samples_ns.begin(), r.samples_ns.end());
    seconds += r.wall_seconds;
    double lo = static_cast<double>(r.min_worker_ops) / r.wall_seconds;
    double hi = static_cast<double>(r.max_worker_ops) / r.wall_seconds;
    worker_min_ops = worker_min_ops < 0 ? lo : std::min(worker_min_ops, lo);
    worker_max_ops = std::max(worker_max_ops, hi);
  }
  // Runs `fn` (which returns a run) and charges the CPU that `server_pid` used meanwhile.
  template <typename Fn>
  void add_measured(pid_t server_pid, Fn&& fn) {
    CpuTime before = cpu_time(server_pid);
    auto run = fn();
    server += cpu_time(server_pid) - before;
    server_measured = true;
    add(std::move(run));
  }
  Summary summary() const {
    Summary s = summarize(samples, seconds);
    s.ops_per_sec = seconds > 0 ? static_cast<double>(ops) / seconds : 0;
    if (server_measured && ops > 0) {
      double n = static_cast<double>(ops);
      s.server_cpu_us = server.total * 1e6 / n;
      s.server_user_us = server.user * 1e6 / n;
      s.server_sys_us = server.sys * 1e6 / n;
    }
    s.worker_min_ops = worker_min_ops;
    s.worker_max_ops = worker_max_ops;
    return s;
  }
};

// The journals' root on a tmpfs, as in production (/run/portbroker): the scratch directory is on
// /tmp, which may be a disk. Empty when there is no tmpfs at /dev/shm: journals then go next to
// the daemons' sockets.
std::string g_runtime_root;

void remove_runtime_root() {
  if (g_runtime_root.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(g_runtime_root, ec);
  g_runtime_root.clear();
}

void make_runtime_root() {
  struct statfs fs {};
  constexpr long kTmpfsMagic = 0x01021994;
  if (::statfs("/dev/shm", &fs) != 0 || static_cast<long>(fs.f_type) != kTmpfsMagic) return;
  std::string tmpl = "/dev/shm/pb-bench-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return;
  g_runtime_root = tmpl;
  std::atexit(remove_runtime_root);  // die() exits too; forked children _exit
}

// `dir`: the daemon's directory (its socket and its state; its journal too unless on the tmpfs
// root, in a directory of the same name); `pool` for port-0 requests: daemons running side by
// side get pools of their own.
std::vector<std::string> daemon_args(const Options& o, const std::string& dir,
                                     const std::string& pool = "20000-29999") {
  std::string leases = std::to_string(o.held + static_cast<size_t>(o.clients) * 4 + 1000);
  std::vector<std::string> args{
      "--pool",
      pool,
      "--max-leases-per-uid",
      leases,
      "--max-root-leases",
      leases,
      "--max-connections-per-uid",
      std::to_string(o.clients + o.holders + 100),
      "--state-dir",
      dir + "/state",
      "--log-level",
      "warn",
  };
  if (!g_runtime_root.empty()) {
    std::string name = dir.substr(dir.rfind('/') + 1);
    std::string runtime = g_runtime_root + "/" + name;
    if (::mkdir(runtime.c_str(), 0755) != 0 && errno != EEXIST) {
      die("mkdir %s: %s", runtime.c_str(), std::strerror(errno));
    }
    args.insert(args.end(), {"--runtime-dir", runtime});
  }
  args.insert(args.end(), o.daemon_args.begin(), o.daemon_args.end());
  return args;
}

// Waits until the daemon holds no lease (after the holders' sessions closed).
void wait_no_leases(portbroker::Client& client) {
  for (uint64_t deadline = now_ns() + 10'000'000'000ull;;) {
    auto st = client.status();
    if (!st) die("status: %s", st.error().message.c_str());
    if (st->leases == 0) return;
    if (now_ns() > deadline) die("daemon still has %u leases after the holders left", st->leases);
    ::usleep(5'000);
  }
}

void measure(const Options& o, const TempDir& dir, FloorResults& f,
             std::optional<DaemonResults>& dres) {
  const int cross = other_cpu(o);
  const size_t rounds = o.rounds;
  const size_t chunk = std::max<size_t>(o.iterations / rounds, 1);
  const size_t chunk_warmup = std::max<size_t>(o.warmup / rounds, 100);
  pin(0, o.cpu);  // everything forked from here on inherits it

  RawBroker raw(dir.path());
  std::string err;
  RawBrokerClient raw_client(raw.path(), err);
  if (!raw_client.valid()) die("%s", err.c_str());
  std::optional<DaemonProcess> daemon, no_journal;
  const portbroker::SocketSpec pool_spec = tcp_spec("127.0.0.1", 0);
  std::shared_ptr<portbroker::Client> client, nj_client;
  if (!o.floor_only) {
    phase("starting portbrokerd (journal on, the default) and one with --no-journal");
    DaemonResults& d = dres.emplace();
    daemon.emplace(o.daemon, dir.path(), daemon_args(o, dir.path()));
    d.fds_idle = daemon->open_fds();
    client = connect_or_die(daemon->socket_path());
    const std::string nj_dir = dir.path() + "/no-journal";
    if (::mkdir(nj_dir.c_str(), 0755) != 0)
      die("mkdir %s: %s", nj_dir.c_str(), std::strerror(errno));
    std::vector<std::string> nj_args = daemon_args(o, nj_dir, "45000-49999");
    nj_args.push_back("--no-journal");
    no_journal.emplace(o.daemon, nj_dir, nj_args);
    nj_client = connect_or_die(no_journal->socket_path());
  }
  auto sequential_on = [&](portbroker::Client& c, size_t warmup, size_t iterations) {
    return time_loop(warmup, iterations,
                     [&](std::string& e) { return acquire_release(c, pool_spec, e); });
  };
  auto sequential = [&](size_t warmup, size_t iterations) {
    return sequential_on(*client, warmup, iterations);
  };

  // Sequential, one client: every figure gets a chunk in every round, so that figures compared
  // with each other saw the same background load (this machine is shared). p99 moves first.
  Accumulated bind_fixed, bind_any, bind_contract, rt, rt_fd, rt_cross, raw_seq, seq, seq_nj,
      seq_cross, held;
  double hold_s = 0;
  char what[160];
  for (size_t r = 0; r < rounds; ++r) {
    const size_t w = r == 0 ? o.warmup : chunk_warmup;
    std::snprintf(what, sizeof(what), "round %zu/%zu: floors A, B, M", r + 1, rounds);
    phase(what);
    bind_fixed.add(floor_bind(w, chunk, true));
    bind_any.add(floor_bind(w, chunk, false));
    bind_contract.add(floor_bind(w, chunk, true, /*contract=*/true));
    rt.add(floor_round_trip(w, chunk, false, o.cpu));
    rt_fd.add(floor_round_trip(w, chunk, true, o.cpu));
    if (cross >= 0) rt_cross.add(floor_round_trip(w, chunk, false, cross));
    raw_seq.add_measured(raw.pid(), [&] {
      return time_loop(w, chunk, [&](std::string& e) { return raw_client.acquire_release(e); });
    });
    if (!daemon) continue;

    DaemonResults& d = *dres;
    std::snprintf(what, sizeof(what),
                  "round %zu/%zu: portbrokerd acquire+release, none held, then %zu held", r + 1,
                  rounds, o.held);
    phase(what);
    // With and without the journal back to back, in alternating order.
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == (r % 2 == 0)) {
        seq.add_measured(daemon->pid(), [&] { return sequential(w, chunk); });
      } else {
        seq_nj.add_measured(no_journal->pid(), [&] { return sequential_on(*nj_client, w, chunk); });
      }
    }
    if (cross >= 0) {
      pin(daemon->pid(), cross);
      seq_cross.add_measured(daemon->pid(), [&] { return sequential(w, chunk); });
      pin(daemon->pid(), o.cpu);
    }
    uint64_t t0 = now_ns();
    Holders holders(daemon->socket_path(), o.held, o.holders);
    hold_s += static_cast<double>(now_ns() - t0) / 1e9;
    auto st = client->status();
    if (!st) die("status: %s", st.error().message.c_str());
    d.leases_held = st->leases;
    if (d.leases_held < o.held) die("daemon reports %u leases, not %zu", d.leases_held, o.held);
    d.fds_held = daemon->open_fds();
    held.add_measured(daemon->pid(), [&] { return sequential(chunk_warmup, chunk); });
    holders.stop();
    wait_no_leases(*client);
  }
  f.bind_fixed = bind_fixed.summary();
  f.bind_any = bind_any.summary();
  f.rt = rt.summary();
  f.rt_fd = rt_fd.summary();
  f.bind_contract = bind_contract.summary();
  f.floor_us = 2 * f.rt.p50_us + f.bind_fixed.p50_us;
  f.floor_contract_us = 2 * f.rt.p50_us + f.bind_contract.p50_us;
  if (cross >= 0) {
    f.rt_cross = rt_cross.summary();
    f.floor_cross_us = 2 * f.rt_cross.p50_us + f.bind_fixed.p50_us;
  }
  f.raw_seq = raw_seq.summary();
  if (daemon) {
    dres->seq = seq.summary();
    dres->seq_nj = seq_nj.summary();
    nj_client.reset();
    no_journal->stop();
    dres->held = held.summary();
    if (cross >= 0) dres->seq_cross = seq_cross.summary();
    std::fprintf(stderr, "# %zu leases acquired by %d processes: %.0f/s\n", o.held, o.holders,
                 static_cast<double>(o.held * rounds) / hold_s);
  }

  // Concurrent: every process may run anywhere, as in production; again interleaved.
  pin(raw.pid(), -1);
  if (daemon) pin(daemon->pid(), -1);
  pin(0, -1);
  const std::string raw_path = raw.path();
  WorkerSetup raw_worker = [raw_path](std::string& e) {
    auto c = std::make_shared<RawBrokerClient>(raw_path, e);
    if (!c->valid()) return WorkerOp();
    return WorkerOp([c](std::string& e2) { return c->acquire_release(e2); });
  };
  const std::string sock = daemon ? daemon->socket_path() : "";
  WorkerSetup daemon_worker = [&](std::string& e) {
    auto c = portbroker::Client::connect(sock);
    if (!c) {
      e = c.error().message;
      return WorkerOp();
    }
    auto mine = std::make_shared<portbroker::Client>(std::move(c).value());
    return WorkerOp(
        [mine, &pool_spec](std::string& e2) { return acquire_release(*mine, pool_spec, e2); });
  };
  const double slice = o.duration / static_cast<double>(rounds);
  Accumulated m, c;
  for (size_t r = 0; r < rounds; ++r) {
    std::snprintf(what, sizeof(what), "round %zu/%zu: %d concurrent clients, minimal broker%s",
                  r + 1, rounds, o.clients, daemon ? " then portbrokerd" : "");
    phase(what);
    m.add_measured(raw.pid(), [&] {
      auto mr = run_concurrent(o.clients, slice, o.warmup / 10, raw_worker);
      if (!mr.error.empty()) die("minimal broker, concurrent: %s", mr.error.c_str());
      std::fprintf(stderr, "#   minimal broker: %.0f/s\n",
                   static_cast<double>(mr.ops) / mr.wall_seconds);
      return mr;
    });
    if (!daemon) continue;
    c.add_measured(daemon->pid(), [&] {
      auto cr = run_concurrent(o.clients, slice, o.warmup / 10, daemon_worker);
      if (!cr.error.empty()) die("portbrokerd, concurrent: %s", cr.error.c_str());
      std::fprintf(stderr, "#   portbrokerd: %.0f/s\n",
                   static_cast<double>(cr.ops) / cr.wall_seconds);
      return cr;
    });
  }
  f.raw_conc = m.summary();
  if (!daemon) return;

  DaemonResults& d = *dres;
  d.conc = c.summary();
  d.conc_ops = c.ops;
  client.reset();
  // Let the daemon see the last session close before counting its fds.
  for (uint64_t deadline = now_ns() + 1'000'000'000ull; now_ns() < deadline;) {
    d.fds_end = daemon->open_fds();
    if (d.fds_end <= d.fds_idle) break;
    ::usleep(5'000);
  }
  d.exit_status = daemon->stop();
}

// Restarts -----------------------------------------------------------------------------------

struct RestartResults {
  bool measured = false;
  std::vector<double> empty_s;  // E: start to READY=1 with nothing to restore
  std::vector<double> getfd_s;  // G: bare pidfd_getfd of every socket the holders have
  std::vector<double> crash_s;  // R: start to READY=1 after kill -9, leases back by pidfd_getfd
  std::vector<double> store_s;  // Rs: the same, every socket passed back from the fd store
  size_t getfd_count = 0, store_passed = 0;
  // LISTEN_FDNAMES as the service manager would pass the store's names: one environment string,
  // which execve(2) refuses (E2BIG) beyond MAX_ARG_STRLEN.
  size_t store_names_bytes = 0;
  bool store_names_shortened = false;
  uint32_t crash_restored = 0, store_restored = 0;
  int crash_fds = -1, store_fds = -1;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The kernel's limit on one argument or environment string (32 pages), terminator included.
constexpr size_t kMaxArgStrlen = 32 * 4096;

size_t listen_fdnames_bytes(const std::vector<std::pair<int, std::string>>& fds) {
  size_t bytes = std::string("LISTEN_FDNAMES=").size() + 1;
  for (const auto& [fd, name] : fds) bytes += name.size() + 1;
  return bytes - (fds.empty() ? 0 : 1);
}

uint32_t leases_of(const std::string& socket_path) {
  auto c = connect_or_die(socket_path);
  auto st = c->status();
  if (!st) die("status: %s", st.error().message.c_str());
  return st->leases;
}

// Time from start to serving (READY=1, sent once the daemon has restored everything) of a
// daemon that takes over `o.held` leases from one killed with SIGKILL: once from the live
// holders (pidfd_getfd; they keep their fds), once from the fd store (this process plays the
// service manager). Each restart is timed right after an empty start of the same daemon (its
// floor, under the same load) and, for the crash, the bare pidfd_getfd calls.
void measure_restarts(const Options& o, const TempDir& dir, RestartResults& rr) {
  rr.measured = true;
  auto subdir = [&](const std::string& name) {
    std::string path = dir.path() + "/" + name;
    if (::mkdir(path.c_str(), 0755) != 0) die("mkdir %s: %s", path.c_str(), std::strerror(errno));
    return path;
  };
  size_t empties = 0;
  auto empty_start = [&] {
    std::string d = subdir("empty-" + std::to_string(empties++));
    DaemonProcess e(o.daemon, d, daemon_args(o, d));
    rr.empty_s.push_back(e.start_seconds());
    e.stop();
  };
  char what[200];
  {
    const std::string d = subdir("crash");
    const auto args = daemon_args(o, d);
    std::optional<DaemonProcess> daemon;
    daemon.emplace(o.daemon, d, args);
    std::snprintf(what, sizeof(what),
                  "restart after kill -9: %zu leases held by %d processes that keep their fds",
                  o.held, o.holders);
    phase(what);
    Holders holders(daemon->socket_path(), o.held, o.holders, true);
    if (uint32_t n = leases_of(daemon->socket_path()); n < o.held) {
      die("daemon reports %u leases, not %zu", n, o.held);
    }
    for (size_t r = 0; r < o.restarts; ++r) {
      std::snprintf(what, sizeof(what), "restart %zu/%zu: empty start, %zu x pidfd_getfd, kill -9",
                    r + 1, o.restarts, o.held);
      phase(what);
      empty_start();
      rr.getfd_s.push_back(time_bare_getfd(holders.pids(), rr.getfd_count));
      daemon->crash();
      daemon.reset();
      daemon.emplace(o.daemon, d, args);
      rr.crash_s.push_back(daemon->start_seconds());
      rr.crash_fds = daemon->open_fds();
      rr.crash_restored = leases_of(daemon->socket_path());
      if (rr.crash_restored < o.held) {
        die("after kill -9 the new daemon has %u leases, not %zu", rr.crash_restored, o.held);
      }
    }
    holders.stop();
    daemon->stop();
  }
  {
    const std::string d = subdir("fd-store");
    FdStoreManager store(d + "/notify.sock");
    DaemonLaunch launch;
    launch.notify_path = store.path();
    launch.wait_ready = [&store](int pidfd) { return store.wait_ready(pidfd); };
    auto args = daemon_args(o, d);
    args.push_back("--fd-store");
    std::optional<DaemonProcess> daemon;
    daemon.emplace(o.daemon, d, args, launch);
    std::snprintf(what, sizeof(what),
                  "restart from the fd store: %zu leases held by %d processes (this process "
                  "keeps the store)",
                  o.held, o.holders);
    phase(what);
    Holders holders(daemon->socket_path(), o.held, o.holders, false);
    if (uint32_t n = leases_of(daemon->socket_path()); n < o.held) {
      die("daemon reports %u leases, not %zu", n, o.held);
    }
    // Every lease's socket, each holder's session and the control socket.
    const size_t expected = o.held + static_cast<size_t>(o.holders) + 1;
    if (!store.wait_size(expected, 10'000)) {
      die("the fd store holds %zu fds, not %zu", store.size(), expected);
    }
    for (size_t r = 0; r < o.restarts; ++r) {
      std::snprintf(what, sizeof(what), "restart %zu/%zu: empty start, kill -9, start with %zu fds",
                    r + 1, o.restarts, store.size());
      phase(what);
      empty_start();
      daemon->crash();
      daemon.reset();
      launch.listen_fds = store.fds();
      rr.store_passed = launch.listen_fds.size();
      rr.store_names_bytes = listen_fdnames_bytes(launch.listen_fds);
      if (rr.store_names_bytes >= kMaxArgStrlen) {
        // systemd could not exec the daemon with these names. To time the restore all the
        // same, lease sockets go as "sock" (the daemon matches them by SO_COOKIE, as after an
        // upgrade); the figure LISTEN_FDNAMES reports the names' size.
        rr.store_names_shortened = true;
        for (auto& [fd, name] : launch.listen_fds) {
          if (name != "control" && name.rfind("session-", 0) != 0 && name.rfind("hold", 0) != 0) {
            name = "sock";
          }
        }
      }
      daemon.emplace(o.daemon, d, args, launch);
      rr.store_s.push_back(daemon->start_seconds());
      rr.store_fds = daemon->open_fds();
      rr.store_restored = leases_of(daemon->socket_path());
      if (rr.store_restored < o.held) {
        die("after kill -9 the new daemon has %u leases, not %zu", rr.store_restored, o.held);
      }
    }
    holders.stop();
    daemon->stop();
  }
}

// Output -------------------------------------------------------------------------------------

std::string rlimit_text() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return std::to_string(rl.rlim_cur) + "/" + std::to_string(rl.rlim_max);
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof(b), f, v);
  return b;
}

void print_header(const char* title) {
  std::printf("\n  %-4s %-46s %9s %9s %9s %9s %11s\n", "", title, "p50 us", "p99 us", "p99.9 us",
              "mean us", "ops/s");
}

void print_row(const std::string& tag, const std::string& what, const Summary& s) {
  std::printf("  %-4s %-46s %9.2f %9.2f %9.2f %9.2f %11.0f\n", tag.c_str(), what.c_str(), s.p50_us,
              s.p99_us, s.p999_us, s.mean_us, s.ops_per_sec);
}

void print_cpu_row(const std::string& tag, const std::string& what, const Summary& s) {
  if (s.server_cpu_us < 0) return;
  std::printf("  %-4s %-46s %9.2f %9.2f %9.2f %8.0f%%", tag.c_str(), what.c_str(), s.server_cpu_us,
              s.server_user_us, s.server_sys_us, s.server_cpu_us * s.ops_per_sec / 1e4);
  if (s.worker_min_ops >= 0) std::printf(" %8.0f .. %.0f", s.worker_min_ops, s.worker_max_ops);
  std::printf("\n");
}

std::string json_summary(const Summary& s) {
  std::ostringstream o;
  o.precision(6);
  o << "{\"n\":" << s.count << ",\"p50_us\":" << s.p50_us << ",\"p90_us\":" << s.p90_us
    << ",\"p99_us\":" << s.p99_us << ",\"p999_us\":" << s.p999_us << ",\"max_us\":" << s.max_us
    << ",\"mean_us\":" << s.mean_us << ",\"ops_per_sec\":" << s.ops_per_sec
    << ",\"seconds\":" << s.seconds;
  if (s.server_cpu_us >= 0) {
    o << ",\"server_cpu_us_per_op\":" << s.server_cpu_us
      << ",\"server_user_us_per_op\":" << s.server_user_us
      << ",\"server_sys_us_per_op\":" << s.server_sys_us;
  }
  if (s.worker_min_ops >= 0) {
    o << ",\"worker_min_ops_per_sec\":" << s.worker_min_ops
      << ",\"worker_max_ops_per_sec\":" << s.worker_max_ops;
  }
  o << "}";
  return o.str();
}

struct Figure {
  std::string key;  // JSON name
  std::string name;
  std::string measured;
  std::string floor;
  double ratio;
  std::string target;  // empty: informative only
  bool pass;
  double value = -1;  // in the JSON line when >= 0: the measured figure itself
};

void print_start_row(const std::string& tag, const std::string& what,
                     const std::vector<double>& s) {
  if (s.empty()) return;
  std::printf("  %-4s %-46s %9.1f %9.1f %9.1f %9zu\n", tag.c_str(), what.c_str(),
              *std::min_element(s.begin(), s.end()) * 1e3, median(s) * 1e3,
              *std::max_element(s.begin(), s.end()) * 1e3, s.size());
}

std::string json_seconds(const std::vector<double>& v) {
  std::ostringstream o;
  o.precision(6);
  o << "[";
  for (size_t i = 0; i < v.size(); ++i) o << (i ? "," : "") << v[i];
  o << "]";
  return o.str();
}

void report(const Options& o, const std::string& machine, const FloorResults& f,
            const DaemonResults* d, const RestartResults* rr) {
  std::printf("\nportbroker benchmark: %s\n", machine.c_str());
  print_header("raw floor (same run)");
  print_row("A", "socket+bind+listen+close, fixed ports", f.bind_fixed);
  print_row("A0", "socket+bind+listen+close, port 0 (info)", f.bind_any);
  print_row("Ac", "A + SO_COOKIE + shutdown (a lease's contract)", f.bind_contract);
  print_row("B", "SEQPACKET round trip, 104 B", f.rt);
  print_row("Bfd", "SEQPACKET round trip + 1 fd by SCM_RIGHTS", f.rt_fd);
  if (f.floor_cross_us > 0)
    print_row("Bx", "SEQPACKET round trip, peer on another CPU", f.rt_cross);
  std::printf("  %-4s %-46s %9.2f\n", "F", "acquire+release floor = 2 x B + A (p50)", f.floor_us);
  std::printf("  %-4s %-46s %9.2f\n", "Fc", "the same with Ac = 2 x B + Ac (p50)",
              f.floor_contract_us);
  if (f.floor_cross_us > 0) {
    std::printf("  %-4s %-46s %9.2f\n", "Fx", "the same with Bx (p50)", f.floor_cross_us);
  }
  print_row("M", "minimal epoll broker, 1 client", f.raw_seq);
  print_row("M" + std::to_string(o.clients),
            "minimal epoll broker, " + std::to_string(o.clients) + " clients", f.raw_conc);

  std::vector<Figure> figs;
  double floor_tput = 1e6 / f.floor_us;
  if (d) {
    print_header("portbrokerd acquire+release");
    print_row("S", "1 client, tcp 127.0.0.1:0 (pool)", d->seq);
    print_row("Snj", "the same, daemon with --no-journal", d->seq_nj);
    if (f.floor_cross_us > 0) print_row("Sx", "the same, daemon on another CPU", d->seq_cross);
    print_row("H", "1 client, " + std::to_string(d->leases_held) + " leases held", d->held);
    print_row("C", std::to_string(o.clients) + " clients (processes)", d->conc);
  }
  std::printf("\n  %-4s %-46s %9s %9s %9s %9s %s\n", "", "server process CPU per acquire+release",
              "cpu us", "user us", "sys us", "busy", " per-client ops/s, min .. max");
  const std::string mc = "M" + std::to_string(o.clients);
  print_cpu_row("M", "minimal epoll broker, 1 client", f.raw_seq);
  print_cpu_row(mc, "minimal epoll broker, " + std::to_string(o.clients) + " clients", f.raw_conc);
  if (d) {
    print_cpu_row("S", "portbrokerd, 1 client", d->seq);
    print_cpu_row("Snj", "portbrokerd --no-journal, 1 client", d->seq_nj);
    print_cpu_row("Sx", "portbrokerd, 1 client, on another CPU", d->seq_cross);
    print_cpu_row("H", "portbrokerd, 1 client, leases held", d->held);
    print_cpu_row("C", "portbrokerd, " + std::to_string(o.clients) + " clients", d->conc);

    double r = d->seq.p50_us / f.floor_us;
    figs.push_back({"seq_p50_over_floor", "S p50 / F (journal on)", fmt("%.2f us", d->seq.p50_us),
                    fmt("%.2f us", f.floor_us), r, "<= 1.30", r <= 1.3});
    figs.push_back({"seq_p50_over_contract_floor", "S p50 / Fc (journal on)",
                    fmt("%.2f us", d->seq.p50_us), fmt("%.2f us", f.floor_contract_us),
                    d->seq.p50_us / f.floor_contract_us, "", true});
    figs.push_back({"seq_no_journal_p50_over_floor", "Snj p50 / F (--no-journal)",
                    fmt("%.2f us", d->seq_nj.p50_us), fmt("%.2f us", f.floor_us),
                    d->seq_nj.p50_us / f.floor_us, "", true});
    figs.push_back({"journal_cost_p50", "S p50 / Snj p50 (journal)", fmt("%.2f us", d->seq.p50_us),
                    fmt("%.2f us", d->seq_nj.p50_us), d->seq.p50_us / d->seq_nj.p50_us, "", true});
    figs.push_back({"concurrent_leases_per_sec", "C throughput",
                    fmt("%.0f /s", d->conc.ops_per_sec), "-", -1, ">= 30000/s",
                    d->conc.ops_per_sec >= 30000});
    r = d->held.p99_us / d->seq.p99_us;
    figs.push_back({"held_p99_over_idle_p99", "H p99 / S p99", fmt("%.2f us", d->held.p99_us),
                    fmt("%.2f us", d->seq.p99_us), r, "<= 1.30", r <= 1.3});
    if (f.floor_cross_us > 0) {
      figs.push_back({"seq_cross_p50_over_floor", "Sx p50 / Fx",
                      fmt("%.2f us", d->seq_cross.p50_us), fmt("%.2f us", f.floor_cross_us),
                      d->seq_cross.p50_us / f.floor_cross_us, "", true});
    }
    figs.push_back({"concurrent_over_minimal_broker", "C throughput / M throughput",
                    fmt("%.0f /s", d->conc.ops_per_sec), fmt("%.0f /s", f.raw_conc.ops_per_sec),
                    d->conc.ops_per_sec / f.raw_conc.ops_per_sec, "", true});
    figs.push_back({"concurrent_over_floor", "C throughput / (1/F)",
                    fmt("%.0f /s", d->conc.ops_per_sec), fmt("%.0f /s", floor_tput),
                    d->conc.ops_per_sec / floor_tput, "", true});
    figs.push_back({"seq_over_floor_throughput", "S throughput / (1/F)",
                    fmt("%.0f /s", d->seq.ops_per_sec), fmt("%.0f /s", floor_tput),
                    d->seq.ops_per_sec / floor_tput, "", true});
    figs.push_back({"seq_p50_over_minimal_broker", "S p50 / M p50", fmt("%.2f us", d->seq.p50_us),
                    fmt("%.2f us", f.raw_seq.p50_us), d->seq.p50_us / f.raw_seq.p50_us, "", true});
    figs.push_back({"seq_p99_over_minimal_broker", "S p99 / M p99", fmt("%.2f us", d->seq.p99_us),
                    fmt("%.2f us", f.raw_seq.p99_us), d->seq.p99_us / f.raw_seq.p99_us, "", true});
  }
  if (d && rr && rr->measured) {
    std::printf("\n  %-4s %-46s %9s %9s %9s %9s\n", "", "daemon start to serving (READY=1)",
                "min ms", "median ms", "max ms", "runs");
    print_start_row("E", "nothing to restore (empty journal)", rr->empty_s);
    print_start_row("G", std::to_string(rr->getfd_count) + " x bare pidfd_getfd (this process)",
                    rr->getfd_s);
    print_start_row(
        "R", "after kill -9, " + std::to_string(rr->crash_restored) + " leases back by pidfd_getfd",
        rr->crash_s);
    print_start_row("Rs",
                    "after kill -9, " + std::to_string(rr->store_passed) + " fds from the fd store",
                    rr->store_s);
    const double e = median(rr->empty_s), g = median(rr->getfd_s);
    const double rc = median(rr->crash_s), rs = median(rr->store_s);
    figs.push_back({"restart_crash_seconds", "R: restore after kill -9", fmt("%.0f ms", rc * 1e3),
                    "-", -1, "<= 1 s", rc <= 1.0, rc});
    figs.push_back({"restart_crash_over_floor", "R / (E + G)", fmt("%.0f ms", rc * 1e3),
                    fmt("%.0f ms", (e + g) * 1e3), rc / (e + g), "", true});
    figs.push_back({"restart_fdstore_seconds", "Rs: restore from fd store",
                    fmt("%.0f ms", rs * 1e3), "-", -1, "<= 1 s", rs <= 1.0, rs});
    figs.push_back({"restart_fdstore_over_floor", "Rs / E", fmt("%.0f ms", rs * 1e3),
                    fmt("%.0f ms", e * 1e3), rs / e, "", true});
    const double names = static_cast<double>(rr->store_names_bytes);
    figs.push_back({"fdstore_listen_fdnames_bytes", "LISTEN_FDNAMES from the store",
                    fmt("%.0f B", names), fmt("%.0f B", static_cast<double>(kMaxArgStrlen)),
                    names / static_cast<double>(kMaxArgStrlen), "< 1.00",
                    rr->store_names_bytes < kMaxArgStrlen, names});
  }
  if (d) {
    std::printf("\n  %-30s %14s %14s %7s %11s %s\n", "figure", "measured", "floor", "ratio",
                "target", "result");
    for (const auto& x : figs) {
      std::printf("  %-30s %14s %14s %7s %11s %s\n", x.name.c_str(), x.measured.c_str(),
                  x.floor.c_str(), x.ratio < 0 ? "-" : fmt("%.2f", x.ratio).c_str(),
                  x.target.empty() ? "info" : x.target.c_str(),
                  x.target.empty() ? ""
                  : x.pass         ? "PASS"
                                   : "MISS");
    }
    std::printf("\n  daemon fds: %d idle, %d with %u leases held, %d at the end; exit status %d\n",
                d->fds_idle, d->fds_held, d->leases_held, d->fds_end, d->exit_status);
    if (rr && rr->measured && rr->store_names_shortened) {
      std::printf(
          "  fd store: the store's %zu names make LISTEN_FDNAMES %zu bytes, over execve's "
          "limit of %zu for one\n  string (E2BIG: a service manager could not start the "
          "daemon); Rs was timed with lease sockets named \"sock\"\n",
          rr->store_passed, rr->store_names_bytes, kMaxArgStrlen);
    }
    if (rr && rr->measured) {
      std::printf(
          "  after restarts: %d fds with %u leases restored (kill -9), %d with %u (fd "
          "store); RLIMIT_NOFILE %s\n",
          rr->crash_fds, rr->crash_restored, rr->store_fds, rr->store_restored,
          rlimit_text().c_str());
    }
  }

  std::ostringstream j;
  j.precision(6);
  j << "{\"bench\":\"portbroker\",\"machine\":\"" << machine << "\",\"iterations\":" << o.iterations
    << ",\"clients\":" << o.clients << ",\"duration_s\":" << o.duration
    << ",\"floor\":{\"bind\":" << json_summary(f.bind_fixed)
    << ",\"bind_port0\":" << json_summary(f.bind_any)
    << ",\"bind_contract\":" << json_summary(f.bind_contract)
    << ",\"round_trip\":" << json_summary(f.rt) << ",\"round_trip_fd\":" << json_summary(f.rt_fd)
    << ",\"round_trip_cross_cpu\":" << json_summary(f.rt_cross)
    << ",\"acquire_release_cross_cpu_us\":" << f.floor_cross_us
    << ",\"acquire_release_us\":" << f.floor_us
    << ",\"acquire_release_contract_us\":" << f.floor_contract_us
    << ",\"minimal_broker\":" << json_summary(f.raw_seq)
    << ",\"minimal_broker_concurrent\":" << json_summary(f.raw_conc) << "}";
  if (d) {
    j << ",\"daemon\":{\"sequential\":" << json_summary(d->seq)
      << ",\"sequential_cross_cpu\":" << json_summary(d->seq_cross)
      << ",\"held\":" << json_summary(d->held) << ",\"leases_held\":" << d->leases_held
      << ",\"concurrent\":" << json_summary(d->conc) << ",\"concurrent_ops\":" << d->conc_ops
      << ",\"fds_idle\":" << d->fds_idle << ",\"fds_held\":" << d->fds_held
      << ",\"fds_end\":" << d->fds_end << ",\"exit_status\":" << d->exit_status << "}";
    if (rr && rr->measured) {
      j << ",\"restart\":{\"empty_start_s\":" << json_seconds(rr->empty_s)
        << ",\"bare_getfd_s\":" << json_seconds(rr->getfd_s)
        << ",\"bare_getfd_count\":" << rr->getfd_count
        << ",\"after_kill_s\":" << json_seconds(rr->crash_s)
        << ",\"after_kill_restored\":" << rr->crash_restored
        << ",\"fd_store_s\":" << json_seconds(rr->store_s)
        << ",\"fd_store_fds_passed\":" << rr->store_passed
        << ",\"fd_store_listen_fdnames_bytes\":" << rr->store_names_bytes
        << ",\"fd_store_names_shortened\":" << (rr->store_names_shortened ? "true" : "false")
        << ",\"fd_store_restored\":" << rr->store_restored << "}";
    }
    j << ",\"figures\":{";
    for (size_t i = 0; i < figs.size(); ++i) {
      const Figure& x = figs[i];
      j << (i ? "," : "") << "\"" << x.key << "\":{\"ratio\":";
      if (x.ratio < 0) {
        j << "null";
      } else {
        j << x.ratio;
      }
      if (x.key == "concurrent_leases_per_sec") j << ",\"value\":" << d->conc.ops_per_sec;
      if (x.value >= 0) j << ",\"value\":" << x.value;
      if (!x.target.empty()) {
        j << ",\"target\":\"" << x.target << "\",\"pass\":" << (x.pass ? "true" : "false");
      }
      j << "}";
    }
    j << "}";
  }
  j << "}";
  std::printf("\n%s\n", j.str().c_str());
  std::fflush(stdout);
}

int run(const Options& o) {
  enter_private_netns();
  errno = 0;
  if (::setpriority(PRIO_PROCESS, 0, o.nice) != 0) {
    std::fprintf(stderr, "portbroker_bench: setpriority(%d): %s; running at nice %d\n", o.nice,
                 std::strerror(errno), ::getpriority(PRIO_PROCESS, 0));
  }
  const int nice_value = ::getpriority(PRIO_PROCESS, 0);
  uint64_t nofile = raise_fd_limit();
  if (!o.floor_only && nofile < o.held + 2000) {
    die("RLIMIT_NOFILE hard limit %" PRIu64
        " is too small for %zu held leases: the daemon, and in the restart figures this process "
        "(the fd store) or the holders, keep one fd per lease plus about 2000 others; pass a "
        "smaller --held",
        nofile, o.held);
  }
  TempDir dir;
  if (!o.floor_only) make_runtime_root();
  std::string load_before = loadavg();
  FloorResults f;
  std::optional<DaemonResults> d;
  measure(o, dir, f, d);
  RestartResults rr;
  if (d) measure_restarts(o, dir, rr);
  std::string pinning = (o.cpu < 0 ? "sequential phases not pinned"
                                   : "sequential phases on CPU " + std::to_string(o.cpu)) +
                        ", nice " + std::to_string(nice_value) +
                        (g_runtime_root.empty() ? ", journals in the scratch dir on /tmp"
                                                : ", journals on tmpfs (/dev/shm)");
  char machine[512];
  std::snprintf(
      machine, sizeof(machine),
      "%s, %ld CPUs, loadavg %s -> %s, %zu iterations (+%zu warm-up), %d clients x %.1f s, "
      "%zu held leases (RLIMIT_NOFILE %s), %zu restarts, %s, private netns",
      cpu_description().c_str(), ::sysconf(_SC_NPROCESSORS_ONLN), load_before.c_str(),
      loadavg().c_str(), o.iterations, o.warmup, o.clients, o.duration, o.held,
      rlimit_text().c_str(), o.restarts, pinning.c_str());
  report(o, machine, f, d ? &*d : nullptr, &rr);
  remove_runtime_root();
  return 0;
}

}  // namespace
}  // namespace pbbench

int main(int argc, char** argv) { return pbbench::run(pbbench::parse_args(argc, argv)); }
