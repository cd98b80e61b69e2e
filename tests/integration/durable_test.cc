// Durability: stopping, crashing or upgrading portbrokerd closes no listener and loses no lease
// (issue 7). Holders keep serving throughout, the registry comes back the same, and what is
// restored behaves like what was granted (conflicts, shared groups, holder death).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "harness.h"
#include "harness_fdstore.h"

using portbroker::ErrorCode;
using namespace pbtest;

namespace {

constexpr const char* kHeldConfig = R"([[reservation]]
name = "db"
users = [65534]
ports = 1433
protocol = "tcp"
hold = true
)";

constexpr uint16_t kExclusive = 18900;
constexpr uint16_t kShared = 18901;
constexpr uint16_t kReuseport = 18902;
constexpr uint16_t kLingering = 18903;
constexpr uint16_t kHeld = 1433;

// `portbroker list --json`, sorted by lease id.
nlohmann::json listing(const Daemon& d) {
  CommandResult r = run_cli(d, {"list", "--json"});
  REQUIRE_MESSAGE(r.status.ok(), r.describe());
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  REQUIRE_MESSAGE(j.is_array(), r.out);
  std::sort(j.begin(), j.end(), [](const auto& a, const auto& b) { return a["id"] < b["id"]; });
  return j;
}

nlohmann::json without_port(const nlohmann::json& list, uint16_t port) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& l : list) {
    if (l["port"] != port) out.push_back(l);
  }
  return out;
}

const portbroker::LeaseInfo* lease_on(const std::vector<portbroker::LeaseInfo>& leases,
                                      uint16_t port) {
  for (const auto& l : leases) {
    if (l.port == port) return &l;
  }
  return nullptr;
}

// A lease on kLingering whose holder died: the daemon keeps it, lingering.
void leave_lingering(Daemon& d) {
  {
    Holder gone = spawn_holder(d, "tcp:127.0.0.1:18903,linger=60");
    gone.child.kill(SIGKILL);
    gone.child.wait();
  }
  REQUIRE(d.wait_until([](portbroker::Client& c) {
    auto l = c.list();
    const auto* lease = l.ok() ? lease_on(*l, kLingering) : nullptr;
    return lease != nullptr && lease->state == "lingering";
  }));
}

size_t leases_on(const std::vector<portbroker::LeaseInfo>& leases, uint16_t port) {
  return static_cast<size_t>(
      std::count_if(leases.begin(), leases.end(), [&](const auto& l) { return l.port == port; }));
}

// A child that connects to each of `ports` in turn, one attempt every ~2 ms, sends a line and
// expects one back. It says "up" after its first success; told "stop", it makes 20 more
// attempts (so some surely follow whatever the parent did meanwhile) and reports
// "OK FAILED FIRST-ERROR".
Child start_prober(std::vector<uint16_t> ports) {
  return Child::run(
      [ports](ChildIo& io) {
        long ok = 0, failed = 0;
        std::string first;
        int remaining = -1;
        for (size_t i = 0; remaining != 0; ++i) {
          pollfd p{io.from_parent_fd(), POLLIN, 0};
          // The pace of the attempts, and the stop command.
          if (remaining < 0 && ::poll(&p, 1, 2) > 0) remaining = 20;
          if (remaining > 0) --remaining;
          uint16_t port = ports[i % ports.size()];
          std::string err;
          UniqueFd c = connect_tcp(port);
          if (!c.valid()) {
            err = "connect to " + std::to_string(port) + ": " + std::strerror(errno);
          } else if (!send_all(c.get(), "probe\n")) {
            err = "send to " + std::to_string(port);
          } else if (!recv_line(c.get(), std::chrono::seconds(10))) {
            err = "no answer on " + std::to_string(port);
          }
          if (err.empty()) {
            if (++ok == 1) io.send_line("up");
          } else if (++failed == 1) {
            first = err;
          }
        }
        io.send_line(std::to_string(ok) + " " + std::to_string(failed) + " " + first);
        return 0;
      },
      {.name = "pbprober"});
}

struct ProbeCount {
  long ok = 0;
  long failed = -1;
  std::string first_error;
};

ProbeCount stop_prober(Child& prober) {
  prober.send_line("stop");
  ProbeCount out;
  auto line = prober.read_line();
  if (line) {
    std::istringstream in(*line);
    in >> out.ok >> out.failed;
    std::getline(in, out.first_error);
  }
  CHECK(prober.wait().ok());
  return out;
}

// A child that tries, until told to stop, to bind `port` as an outside program would (both with
// and without SO_REUSEADDR); reports "ATTEMPTS BOUND".
Child start_binder(uint16_t port) {
  return Child::run(
      [port](ChildIo& io) {
        long attempts = 0, bound = 0;
        for (;;) {
          pollfd p{io.from_parent_fd(), POLLIN, 0};
          if (::poll(&p, 1, 0) > 0) break;
          for (bool reuse : {false, true}) {
            ++attempts;
            if (outside_bind_errno(port, "0.0.0.0", reuse) != EADDRINUSE) ++bound;
          }
        }
        io.send_line(std::to_string(attempts) + " " + std::to_string(bound));
        return 0;
      },
      {.name = "pbbinder"});
}

std::pair<long, long> stop_binder(Child& binder) {
  binder.send_line("stop");
  long attempts = -1, bound = -1;
  if (auto line = binder.read_line()) std::istringstream(*line) >> attempts >> bound;
  CHECK(binder.wait().ok());
  return {attempts, bound};
}

// Kills `holder` and returns how long the daemon took to end its lease on `port` (nullopt past
// a generous 2 s). The issue asks for 100 ms; the figure is printed.
std::optional<double> holder_death_to_lease_end_ms(Daemon& d, Child& holder, uint16_t port) {
  const auto start = std::chrono::steady_clock::now();
  holder.kill(SIGKILL);
  const auto deadline = start + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    if (lease_on(d.leases(), port) == nullptr) {
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
          .count();
    }
  }
  return std::nullopt;
}

enum class Restart { kSigterm, kSigkill, kUpgradeCli, kSigusr2 };

const char* restart_name(Restart how) {
  switch (how) {
    case Restart::kSigterm:
      return "SIGTERM + start";
    case Restart::kSigkill:
      return "SIGKILL + start";
    case Restart::kUpgradeCli:
      return "portbroker upgrade";
    case Restart::kSigusr2:
      return "SIGUSR2";
  }
  return "?";
}

bool in_place(Restart how) { return how == Restart::kUpgradeCli || how == Restart::kSigusr2; }

void restart_scenario(Restart how) {
  INFO("restart by " << std::string(restart_name(how)));
  FdLeakCheck fds;
  TempDir dir;
  const DaemonOptions opts{.dir = &dir, .config_text = kHeldConfig};
  std::optional<Daemon> d;
  d.emplace(opts);
  const auto idle_fds = d->fd_baseline();

  Holder ex = spawn_holder(*d, "web=tcp:127.0.0.1:18900");
  Holder sh1 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  Holder sh2 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  Holder rp1 = spawn_holder(*d, "tcp:127.0.0.1:18902,reuseport");
  Holder rp2 = spawn_holder(*d, "tcp:127.0.0.1:18902,reuseport");
  for (Holder* h : {&ex, &sh1, &sh2, &rp1, &rp2})
    h->child.send_line("serve " + std::to_string(h->lease.port));
  leave_lingering(*d);
  // A session that lives across an upgrade, with a lease of its own.
  std::optional<portbroker::Client> session;
  session.emplace(d->connect());
  // Across an upgrade the session keeps a lease of its own. (Not across a restart: its holder
  // would be this process, which outlives the test, and a restored lease ends with its holder.)
  portbroker::Result<portbroker::Lease> own = portbroker::Error{};
  if (in_place(how)) {
    own = session->acquire("tcp:127.0.0.1:18904");
    REQUIRE_MESSAGE(own.ok(), (own.ok() ? "" : own.error().message));
  }

  const nlohmann::json before = listing(*d);
  REQUIRE(before.size() == (in_place(how) ? 7 : 6));
  Child prober = start_prober({kExclusive, kShared, kReuseport});
  REQUIRE(prober.read_line() == "up");
  std::optional<Child> binder;
  if (in_place(how)) binder.emplace(start_binder(kHeld));

  switch (how) {
    case Restart::kSigterm:
      d->stop(SIGTERM);
      d.reset();
      d.emplace(opts);
      break;
    case Restart::kSigkill:
      d->kill_hard();
      d.reset();
      d.emplace(opts);
      break;
    case Restart::kUpgradeCli: {
      CommandResult up = run_cli(*d, {"upgrade"});
      REQUIRE_MESSAGE(up.status.ok(), up.describe());
      REQUIRE_MESSAGE(d->wait_ready_again(), "no READY=1 after the upgrade");
      break;
    }
    case Restart::kSigusr2:
      REQUIRE(::kill(d->pid(), SIGUSR2) == 0);
      REQUIRE_MESSAGE(d->wait_ready_again(), "no READY=1 after SIGUSR2");
      break;
  }
  d->set_fd_baseline(idle_fds);
  // A few more round trips through the new daemon while the prober goes on.
  for (int i = 0; i < 20; ++i) REQUIRE(d->connect().status().ok());

  ProbeCount probes = stop_prober(prober);
  CHECK_MESSAGE(probes.failed == 0, probes.failed
                                        << " of " << probes.ok + probes.failed
                                        << " connections failed; first: " << probes.first_error);
  CHECK(probes.ok > 0);
  MESSAGE(std::string(restart_name(how))
          << ": " << probes.ok << " connections, " << probes.failed << " failed");
  if (binder) {
    auto [attempts, bound] = stop_binder(*binder);
    CHECK_MESSAGE(bound == 0, "the held port " << kHeld << " was bound from outside " << bound
                                               << " time(s) in " << attempts << " attempts");
    CHECK(attempts > 0);
  }
  CHECK_MESSAGE(outside_bind_errno(kHeld, "0.0.0.0", false) == EADDRINUSE,
                "the held port is not held again after the restart");

  const nlohmann::json after = listing(*d);
  if (in_place(how)) {
    CHECK_MESSAGE(after == before, "before:\n" << before.dump(1) << "\nafter:\n" << after.dump(1));
  } else {
    // Without a service manager a lingering lease has nobody to take its socket back from
    // (README: what survives a crash without systemd); every lease with a live holder is kept.
    CHECK_MESSAGE(
        without_port(after, kLingering) == without_port(before, kLingering), "before:\n"
                                                                                 << before.dump(1)
                                                                                 << "\nafter:\n"
                                                                                 << after.dump(1));
    CHECK(lease_on(d->leases(), kLingering) == nullptr);
  }

  // The session's connection: the same Client object keeps working across an upgrade.
  if (in_place(how)) {
    auto s = session->status();
    CHECK_MESSAGE(s.ok(), "the session did not survive the upgrade: " << s.error().message);
    auto more = session->acquire("tcp:127.0.0.1:18905");
    CHECK_MESSAGE(more.ok(), (more.ok() ? "" : more.error().message));
    if (more.ok()) CHECK(more->release().ok());
  } else {
    CHECK_FALSE(session->status().ok());  // its daemon is gone; the lease is kept for its holder
  }

  // A conflicting acquire still names the holder.
  AcquireOutcome conflict = acquire_in_child(*d, "tcp:127.0.0.1:18900");
  CHECK_FALSE(conflict.ok);
  CHECK(conflict.code == ErrorCode::kConflict);
  CHECK_MESSAGE(contains(conflict.message, std::to_string(ex.child.pid())), conflict.message);

  // A new member joins the restored shared group, and serves from its queue.
  Holder sh3 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  CHECK(leases_on(d->leases(), kShared) == 3);
  sh1.child.kill(SIGKILL);
  sh2.child.kill(SIGKILL);
  sh1.child.wait();
  sh2.child.wait();
  sh3.child.send_line("accept third");
  UniqueFd via_third = connect_tcp(kShared);
  REQUIRE(via_third.valid());
  REQUIRE(send_all(via_third.get(), "hi\n"));
  CHECK(recv_line(via_third.get()) == "third");
  CHECK(sh3.child.read_line() == "accepted");
  // A new reuseport member joins the restored group too.
  AcquireOutcome rp3 = acquire_in_child(*d, "tcp:127.0.0.1:18902,reuseport");
  CHECK_MESSAGE(rp3.ok, rp3.describe());

  // A restored lease ends when its holder dies.
  auto ended = holder_death_to_lease_end_ms(*d, ex.child, kExclusive);
  CHECK_MESSAGE(ended.has_value(), "the restored lease outlived its holder by 2 s");
  if (ended) {
    MESSAGE(std::string(restart_name(how)) << ": holder death to lease end " << *ended << " ms");
    CHECK_MESSAGE(*ended < 2000, *ended << " ms");
  }
  CHECK(port_free(kExclusive));

  // The lingering lease is still there to take back (upgrade), with its id.
  if (in_place(how)) {
    const uint64_t lingering_id = [&] {
      for (const auto& l : before)
        if (l["port"] == kLingering) return l["id"].get<uint64_t>();
      return uint64_t{0};
    }();
    AcquireOutcome back = acquire_in_child(*d, "tcp:127.0.0.1:18903,linger=60");
    CHECK_MESSAGE(back.ok, back.describe());
    CHECK(back.id == lingering_id);
  }

  if (own.ok()) CHECK(own->release().ok());
  own = portbroker::Error{};
  session.reset();
  for (Holder* h : {&sh3, &rp1, &rp2}) {
    h->child.kill(SIGKILL);
    h->child.wait();
  }
  REQUIRE(d->wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
}

}  // namespace

TEST_CASE("SIGTERM and a new start: every lease with a live holder, no failed connection") {
  restart_scenario(Restart::kSigterm);
}

TEST_CASE("SIGKILL and a new start: every lease with a live holder, no failed connection") {
  restart_scenario(Restart::kSigkill);
}

TEST_CASE("portbroker upgrade: every lease, session, lingering lease and held port survive") {
  restart_scenario(Restart::kUpgradeCli);
}

TEST_CASE("SIGUSR2 upgrades in place like portbroker upgrade") {
  restart_scenario(Restart::kSigusr2);
}

TEST_CASE(
    "after kill -9, a lease whose holder closed its socket has no broker copy; every API says so") {
  FdLeakCheck fds;
  TempDir dir;
  const DaemonOptions opts{.dir = &dir};
  std::optional<Daemon> d;
  d.emplace(opts);
  const auto idle_fds = d->fd_baseline();
  Holder kept = spawn_holder(*d, "tcp:127.0.0.1:18905");
  Holder closed = spawn_holder(*d, "tcp:127.0.0.1:18906");
  // Only the daemon's copy is left: after the crash nobody holds the socket to take it back from,
  // yet the holder lives on, and so does its lease.
  closed.child.send_line("close");
  REQUIRE(closed.child.read_line() == "closed");
  d->kill_hard();
  d.reset();
  d.emplace(opts);
  d->set_fd_baseline(idle_fds);

  const auto leases = d->leases();
  const portbroker::LeaseInfo* with = lease_on(leases, 18905);
  const portbroker::LeaseInfo* without = lease_on(leases, 18906);
  REQUIRE(with != nullptr);
  REQUIRE(without != nullptr);
  CHECK_FALSE(with->no_copy);
  CHECK(without->no_copy);

  CommandResult text = run_cli(*d, {"list"});
  CHECK_MESSAGE(contains(text.out, "active (no broker copy)"), text.out);
  for (const auto& l : listing(*d)) CHECK(l["broker_copy"] == (l["port"] == 18905));

  CommandResult c_with = run_capi_check(*d, {"no-copy", "18905"});
  CommandResult c_without = run_capi_check(*d, {"no-copy", "18906"});
  CHECK_MESSAGE(contains(c_with.out, "no_copy 0"), c_with.describe());
  CHECK_MESSAGE(contains(c_without.out, "no_copy 1"), c_without.describe());

  SpawnOptions py = python_options(*d);
  py.env["PYTHONPATH"] = PB_PYTHON_SRC;
  CommandResult python = run_command(
      {PB_PYTHON3, "-c",
       "import portbroker; print(sorted((l.port, l.no_copy) for l in portbroker.list()))"},
      py);
  CHECK_MESSAGE(contains(python.out, "[(18905, False), (18906, True)]"), python.describe());

  // Restored leases still end with their holders, the one without a copy included.
  for (Holder* h : {&kept, &closed}) {
    h->child.send_line("exit");
    h->child.wait();
  }
  CHECK(d->wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
}

namespace {

constexpr uint16_t kCrashPortBase = 19000;
constexpr int kCrashPorts = 16;
constexpr int kCrashClients = 16;

// A client of the crash loop: acquires a random exclusive port, reports "acq PORT ID" once the
// grant is acknowledged, holds it for a few round trips, reports "rel ID" and only then releases.
// When the daemon goes away it reports "lost" and waits, still holding what it holds, for the
// parent to end it (its restored lease then ends with it).
Child start_crash_client(const std::string& socket_path) {
  return Child::run(
      [socket_path](ChildIo& io) {
        std::mt19937 rng(static_cast<unsigned>(::getpid()));
        std::optional<portbroker::Lease> held;
        auto c = portbroker::Client::connect(socket_path);
        while (c.ok()) {
          const uint16_t port = static_cast<uint16_t>(kCrashPortBase + rng() % kCrashPorts);
          auto lease = c->acquire("tcp:127.0.0.1:" + std::to_string(port));
          if (!lease) {
            if (lease.error().code == ErrorCode::kConflict) continue;
            break;
          }
          held.emplace(std::move(lease).value());
          io.send_line("acq " + std::to_string(port) + " " + std::to_string(held->id()));
          bool lost = false;
          for (unsigned i = rng() % 4; i > 0 && !lost; --i) lost = !c->status().ok();
          if (lost) break;
          io.send_line("rel " + std::to_string(held->id()));
          if (!held->release().ok()) break;
          held.reset();
        }
        io.send_line("lost");
        (void)io.read_line();
        return 0;
      },
      {.name = "pbcrashcl"});
}

struct CrashClient {
  Child child;
  std::map<uint64_t, uint16_t> acked;  // acknowledged, not yet being released: id -> port
  bool lost = false;
};

struct CrashTally {
  long acquires = 0;
  long checked_after_restart = 0;
  std::vector<std::string> violations;
};

// Handles one line of client `i`; `others` are drained first when a port looks doubly held
// (the other client's "rel" precedes its release, so it is in its pipe by now).
void handle_crash_line(std::vector<CrashClient>& clients, size_t i, const std::string& line,
                       CrashTally& tally);

void drain_client(std::vector<CrashClient>& clients, size_t i, CrashTally& tally) {
  while (auto line = clients[i].child.read_line(std::chrono::milliseconds(0))) {
    handle_crash_line(clients, i, *line, tally);
  }
}

void handle_crash_line(std::vector<CrashClient>& clients, size_t i, const std::string& line,
                       CrashTally& tally) {
  std::istringstream in(line);
  std::string word;
  in >> word;
  if (word == "lost") {
    clients[i].lost = true;
  } else if (word == "rel") {
    uint64_t id = 0;
    in >> id;
    clients[i].acked.erase(id);
  } else if (word == "acq") {
    unsigned port = 0;
    uint64_t id = 0;
    in >> port >> id;
    ++tally.acquires;
    clients[i].acked[id] = static_cast<uint16_t>(port);
    // Lease ids grow with every grant. Two clients holding one port is fine only while the
    // older grant's "rel" (sent before its release) is still unread: drain that client first.
    for (size_t j = 0; j < clients.size(); ++j) {
      if (j == i) continue;
      auto other = [&]() -> uint64_t {
        for (const auto& [oid, oport] : clients[j].acked)
          if (oport == port) return oid;
        return 0;
      };
      const uint64_t other_id = other();
      if (other_id == 0) continue;
      drain_client(clients, other_id < id ? j : i, tally);
      if (clients[i].acked.count(id) != 0 && other() != 0) {
        tally.violations.push_back("port " + std::to_string(port) + " granted to pid " +
                                   std::to_string(clients[i].child.pid()) + " (" + line +
                                   ") while pid " + std::to_string(clients[j].child.pid()) +
                                   " holds it; its lines:\n" + clients[j].child.output() +
                                   "\nthe other's:\n" + clients[i].child.output());
      }
    }
  } else {
    tally.violations.push_back("unexpected line from a client: " + line);
  }
}

// Reads the clients' lines until `events` of them were handled or every client is lost.
void run_clients_for(std::vector<CrashClient>& clients, long events, CrashTally& tally,
                     std::chrono::steady_clock::time_point deadline) {
  long seen = 0;
  while (seen < events && std::chrono::steady_clock::now() < deadline) {
    bool any = false;
    for (size_t i = 0; i < clients.size(); ++i) {
      if (auto line = clients[i].child.read_line(std::chrono::milliseconds(0))) {
        handle_crash_line(clients, i, *line, tally);
        any = true;
        ++seen;
      }
    }
    if (any) continue;
    std::vector<pollfd> p;
    for (auto& c : clients) p.push_back({c.child.event_fd(), POLLIN, 0});
    if (::poll(p.data(), p.size(), ms_left(deadline)) <= 0) return;
  }
}

}  // namespace

TEST_CASE("crash safety: kill -9 at random points while clients acquire and release") {
  FdLeakCheck fds;
  TempDir dir;
  const DaemonOptions opts{.dir = &dir, .log_level = "info"};
  std::optional<Daemon> d;
  d.emplace(opts);
  const auto idle_fds = d->fd_baseline();
  std::mt19937 rng(std::random_device{}());
  CrashTally tally;
  int kills = 0;
  const auto stop_at = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (kills < 300 && std::chrono::steady_clock::now() < stop_at) {
    std::vector<CrashClient> clients;
    for (int i = 0; i < kCrashClients; ++i) {
      clients.push_back(CrashClient{start_crash_client(d->socket_path())});
    }
    // A random point: after 0 to 80 acknowledged acquires and releases.
    run_clients_for(clients, static_cast<long>(rng() % 81), tally,
                    std::chrono::steady_clock::now() + std::chrono::seconds(20));
    d->kill_hard();
    ++kills;
    // Every client notices (its next request fails) and stops, holding what it holds.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (size_t i = 0; i < clients.size(); ++i) {
      while (!clients[i].lost) {
        auto line =
            clients[i].child.read_line(std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now()));
        REQUIRE_MESSAGE(line.has_value(), "a client did not notice the daemon's death:\n"
                                              << clients[i].child.output());
        handle_crash_line(clients, i, *line, tally);
      }
    }
    d.reset();
    d.emplace(opts);
    const auto leases = d->leases();
    std::map<uint16_t, int> per_port;
    for (const auto& l : leases) {
      if (++per_port[l.port] > 1) {
        tally.violations.push_back("after restart " + std::to_string(kills) + ": two leases on " +
                                   std::to_string(l.port));
      }
    }
    for (const auto& c : clients) {
      for (const auto& [id, port] : c.acked) {
        ++tally.checked_after_restart;
        const auto* l = lease_on(leases, port);
        if (l == nullptr || l->id != id || l->holder.pid != c.child.pid()) {
          tally.violations.push_back(
              "after restart " + std::to_string(kills) + ": acknowledged lease " +
              std::to_string(id) + " on " + std::to_string(port) + " of pid " +
              std::to_string(c.child.pid()) + " is " +
              (l == nullptr ? "missing"
                            : "listed as lease " + std::to_string(l->id) + " of pid " +
                                  std::to_string(l->holder.pid)));
        }
      }
    }
    REQUIRE_MESSAGE(tally.violations.empty(), tally.violations.front());
    for (auto& c : clients) c.child.close_input();
    for (auto& c : clients) CHECK(c.child.wait().ok());
  }
  MESSAGE("crash loop: " << kills << " kills, " << tally.acquires << " acknowledged acquires, "
                         << tally.checked_after_restart
                         << " acknowledged leases found again after a restart");
  CHECK(kills >= 10);
  CHECK(tally.checked_after_restart > 0);
  // The restored leases end with their holders.
  REQUIRE(d->wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
  d->set_fd_baseline(idle_fds);
}

namespace {

// Unmounts (lazily) on scope exit.
struct Mounted {
  std::string path;
  ~Mounted() {
    if (!path.empty()) ::umount2(path.c_str(), MNT_DETACH);
  }
};

}  // namespace

TEST_CASE("a full journal refuses an acquire clearly and grants nothing; earlier leases work") {
  FdLeakCheck fds;
  // A private mount namespace for the rest of this test binary: the tmpfs is ours alone.
  REQUIRE_MESSAGE(::unshare(CLONE_NEWNS) == 0, "unshare(CLONE_NEWNS): " << std::strerror(errno));
  REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
  TempDir dir;
  const std::string run = dir.file("run");
  REQUIRE(::mkdir(run.c_str(), 0755) == 0);
  REQUIRE_MESSAGE(
      ::mount("tmpfs", run.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=256k,mode=0755") == 0,
      "mount tmpfs: " << std::strerror(errno));
  Mounted mounted{run};
  {
    Daemon d({.args = {"--runtime-dir", run}, .dir = &dir});
    REQUIRE(path_exists(run + "/journal"));
    Holder first = spawn_holder(d, "tcp:127.0.0.1:18950");
    first.child.send_line("serve first");

    // Fill the file system.
    const std::string filler = run + "/filler";
    {
      UniqueFd f(::open(filler.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
      REQUIRE(f.valid());
      const std::string block(4096, 'x');
      for (;;) {
        ssize_t n = ::write(f.get(), block.data(), block.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          CHECK_MESSAGE((n == 0 || errno == ENOSPC), std::strerror(errno));
          break;
        }
      }
    }
    // tmpfs allocates whole pages: the journal may still have room in its last one, so acquire
    // (keeping every grant) until one is refused.
    portbroker::Client c = d.connect();
    std::vector<portbroker::Lease> granted;
    std::optional<portbroker::Error> refusal;
    uint16_t refused_port = 0;
    for (uint16_t port = 18960; port < 19460 && !refusal; ++port) {
      auto lease = c.acquire("tcp:127.0.0.1:" + std::to_string(port));
      if (lease.ok()) {
        granted.push_back(std::move(lease).value());
      } else {
        refusal = lease.error();
        refused_port = port;
      }
    }
    REQUIRE_MESSAGE(refusal.has_value(), granted.size() << " acquires granted on a full journal");
    MESSAGE("journal full after " << granted.size() << " more grant(s): " << refusal->message);
    CHECK(contains(refusal->message, "journal"));
    CHECK(contains(refusal->message, std::strerror(ENOSPC)));
    CHECK(lease_on(d.leases(), refused_port) == nullptr);
    CHECK(port_free(refused_port));
    // A port-0 request, a shared and a reuseport one: refused the same way, nothing granted.
    for (const char* spec :
         {"tcp:127.0.0.1:0", "tcp:127.0.0.1:18952,shared", "tcp:127.0.0.1:18953,reuseport"}) {
      auto r = c.acquire(spec);
      CHECK_FALSE_MESSAGE(r.ok(), spec);
    }
    CHECK(d.leases().size() == 1 + granted.size());
    CHECK(port_free(18952));
    CHECK(port_free(18953));
    CHECK(c.status().ok());

    // The earlier lease serves, and is still listed.
    UniqueFd conn = connect_tcp(18950);
    REQUIRE(conn.valid());
    REQUIRE(send_all(conn.get(), "hello\n"));
    CHECK(recv_line(conn.get()) == "first");
    conn.reset();
    const auto leases = d.leases();  // kept: `l` points into it
    const auto* l = lease_on(leases, 18950);
    REQUIRE(l != nullptr);
    CHECK(l->holder.pid == first.child.pid());

    // With room again, acquires work again.
    REQUIRE(::unlink(filler.c_str()) == 0);
    auto later = c.acquire("tcp:127.0.0.1:" + std::to_string(refused_port));
    CHECK_MESSAGE(later.ok(), (later.ok() ? "" : later.error().message));
    later = portbroker::Error{};
    granted.clear();
    CHECK(d.wait_port_unleased(refused_port));
    first.child.kill(SIGKILL);
    first.child.wait();
    CHECK(d.wait_port_unleased(18950));
  }
}

TEST_CASE("the fd store: leases, sessions and lingering leases survive the daemon's death") {
  int sig = SIGKILL;
  SUBCASE("SIGKILL") { sig = SIGKILL; }
  SUBCASE("SIGTERM") { sig = SIGTERM; }
  INFO("signal " << sig);
  FdLeakCheck fds;
  TempDir dir;
  ServiceManager manager(dir);
  const DaemonOptions opts{.dir = &dir, .config_text = kHeldConfig, .manager = &manager};
  std::optional<Daemon> d;
  d.emplace(opts);
  const auto idle_fds = d->fd_baseline();

  Holder ex = spawn_holder(*d, "web=tcp:127.0.0.1:18900");
  Holder sh1 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  Holder sh2 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  Holder rp = spawn_holder(*d, "tcp:127.0.0.1:18902,reuseport");
  for (Holder* h : {&ex, &sh1, &sh2, &rp})
    h->child.send_line("serve " + std::to_string(h->lease.port));
  leave_lingering(*d);
  std::optional<portbroker::Client> session;
  session.emplace(d->connect());
  auto own = session->acquire("tcp:127.0.0.1:18904");
  REQUIRE_MESSAGE(own.ok(), (own.ok() ? "" : own.error().message));

  manager.drain();
  INFO("fd store: " << [&] {
    std::string s;
    for (const auto& n : manager.names()) s += n + " ";
    return s;
  }());
  CHECK(manager.count_prefix("control") == 1);
  CHECK(manager.count_prefix("c") >= 7);  // "control"; five holders, ours, the harness's probe
  CHECK(manager.count_prefix("s") >= 5);  // one a binding or reuseport member, lingering
  CHECK(manager.problems().empty());

  const nlohmann::json before = listing(*d);
  REQUIRE(before.size() == 6);
  Child prober = start_prober({kExclusive, kShared, kReuseport});
  REQUIRE(prober.read_line() == "up");
  Child binder = start_binder(kHeld);
  if (sig == SIGKILL) {
    d->kill_hard();
  } else {
    d->stop(SIGTERM);  // CHECKs the socket file stays for the next daemon
  }
  d.reset();
  d.emplace(opts);
  d->set_fd_baseline(idle_fds);
  ProbeCount probes = stop_prober(prober);
  CHECK_MESSAGE(probes.failed == 0, probes.failed
                                        << " of " << probes.ok + probes.failed
                                        << " connections failed; first: " << probes.first_error);
  CHECK(probes.ok > 0);

  const nlohmann::json after = listing(*d);
  CHECK_MESSAGE(after == before, "before:\n" << before.dump(1) << "\nafter:\n" << after.dump(1));
  // The held port was never free: its socket waited in the store.
  auto [attempts, bound] = stop_binder(binder);
  CHECK_MESSAGE(bound == 0, "the held port " << kHeld << " was bound from outside " << bound
                                             << " time(s) in " << attempts << " attempts");
  CHECK_MESSAGE(outside_bind_errno(kHeld, "0.0.0.0", false) == EADDRINUSE,
                "the held port is not held after the restart");

  // The session kept open across the restart still works, lease and all.
  auto s = session->status();
  CHECK_MESSAGE(s.ok(), "the session did not survive: " << (s.ok() ? "" : s.error().message));
  if (s.ok()) CHECK(s->pid == d->pid());
  auto more = session->acquire("tcp:127.0.0.1:18905");
  CHECK_MESSAGE(more.ok(), (more.ok() ? "" : more.error().message));
  if (more.ok()) CHECK(more->release().ok());
  CHECK(own->release().ok());

  // Conflicts name the holder, whose session is the same connection as before.
  AcquireOutcome conflict = acquire_in_child(*d, "tcp:127.0.0.1:18900");
  CHECK(conflict.code == ErrorCode::kConflict);
  CHECK_MESSAGE(contains(conflict.message, std::to_string(ex.child.pid())), conflict.message);
  Holder sh3 = spawn_holder(*d, "tcp:127.0.0.1:18901,shared");
  CHECK(leases_on(d->leases(), kShared) == 3);

  // The lingering lease lingers on, to be taken back with its id.
  const uint64_t lingering_id = [&] {
    for (const auto& l : before)
      if (l["port"] == kLingering) return l["id"].get<uint64_t>();
    return uint64_t{0};
  }();
  AcquireOutcome back = acquire_in_child(*d, "tcp:127.0.0.1:18903,linger=60");
  CHECK_MESSAGE(back.ok, back.describe());
  CHECK(back.id == lingering_id);

  auto ended = holder_death_to_lease_end_ms(*d, ex.child, kExclusive);
  CHECK_MESSAGE(ended.has_value(), "the restored lease outlived its holder by 2 s");
  if (ended)
    MESSAGE("fd store, signal " << sig << ": holder death to lease end " << *ended << " ms");

  own = portbroker::Error{};
  session.reset();
  for (Holder* h : {&sh1, &sh2, &sh3, &rp}) {
    h->child.kill(SIGKILL);
    h->child.wait();
  }
  REQUIRE(d->wait_until([](portbroker::Client& c) {
    auto l = c.list();
    return l.ok() && l->empty();
  }));
  // Every ended lease left the store too.
  manager.drain();
  CHECK(manager.count_prefix("s") == 0);
  CHECK(manager.problems().empty());
}
