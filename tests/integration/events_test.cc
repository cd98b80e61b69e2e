// `portbroker events`: every kind of event, caused here and seen on the stream in order; --since
// after a reconnect; a subscriber that never reads loses events (one "lost" record) while the
// daemon and everyone else carry on; non-root subscribers see only their own uid's events.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "harness.h"

using portbroker::ErrorCode;
using portbroker::Event;
using portbroker::EventStream;
using namespace pbtest;

namespace {

// The sweep (expiry of lingering leases) runs every quarter of --request-timeout: 50 ms here.
DaemonOptions fast_sweep(std::vector<std::string> more = {}) {
  DaemonOptions o;
  o.args = {"--request-timeout", "0.2"};
  o.args.insert(o.args.end(), more.begin(), more.end());
  return o;
}

std::string describe(const Event& e) {
  return "#" + std::to_string(e.seq) + " " + e.kind + " lease=" + std::to_string(e.lease) +
         " endpoint=" + e.endpoint + " uid=" + std::to_string(e.uid) +
         " count=" + std::to_string(e.count) + " reason=" + e.reason;
}

// Reads a stream, checking as it goes that sequence numbers increase and time never goes back.
class Reader {
 public:
  explicit Reader(EventStream s) : stream_(std::move(s)) {}
  EventStream& stream() { return stream_; }
  const std::vector<Event>& seen() const { return seen_; }

  // The next event, or nullopt after a generous deadline (the test then fails).
  std::optional<Event> next() {
    auto e = stream_.next(static_cast<int>(kDefaultTimeout.count() * 1000));
    REQUIRE_MESSAGE(e.ok(), (e.ok() ? "" : e.error().message));
    if (!*e) return std::nullopt;
    const Event& got = **e;
    if (!seen_.empty()) {
      CHECK_MESSAGE(got.seq > seen_.back().seq, describe(got)
                                                    << " after " << describe(seen_.back()));
      CHECK(got.time_ms >= seen_.back().time_ms);
    }
    CHECK(got.time_ms > 0);
    seen_.push_back(got);
    return got;
  }

  // Reads until an event of `kind` (and `port`, when given) arrives; FAILs the test if none does.
  Event until(const std::string& kind, uint16_t port = 0) {
    for (;;) {
      auto e = next();
      REQUIRE_MESSAGE(e.has_value(), "no '" << kind << "' event came" << seen_text());
      if (e->kind == kind && (port == 0 || e->port == port)) return *e;
    }
  }

  std::string seen_text() const {
    std::string out = "; seen:";
    for (const Event& e : seen_) out += "\n  " + describe(e);
    return out;
  }

 private:
  EventStream stream_;
  std::vector<Event> seen_;
};

Reader subscribe(portbroker::Client& c, std::optional<uint64_t> since = std::nullopt) {
  auto s = c.events(since);
  REQUIRE_MESSAGE(s.ok(), (s.ok() ? "" : s.error().message));
  return Reader(std::move(s).value());
}

constexpr const char* kPolicy = R"([[rule]]
name = "everyone"
users = ["*"]
ports = "1024-65535"
)";

}  // namespace

TEST_CASE("every kind of event is on the stream, numbered in order, as it happens") {
  FdLeakCheck fds;
  Daemon d(fast_sweep());
  portbroker::Client admin = d.connect();
  Reader r = subscribe(admin, 0);
  // From the ring: the daemon's start.
  Event started = r.until("daemon-started");
  CHECK(started.seq == 1);
  CHECK(started.count == 0);

  // acquired, then refused (naming the holder), then released.
  {
    auto lease = admin.acquire("web=tcp:127.0.0.1:18400");
    REQUIRE(lease.ok());
    Event acquired = r.until("acquired", 18400);
    CHECK(acquired.lease == lease->id());
    CHECK(acquired.name == "web");
    CHECK(acquired.endpoint == "tcp 127.0.0.1:18400");
    CHECK(acquired.mode == "exclusive");
    CHECK(acquired.pid == ::getpid());
    CHECK(acquired.uid == ::getuid());

    AcquireOutcome refused = acquire_in_child(d, "tcp:127.0.0.1:18400");
    CHECK_FALSE(refused.ok);
    Event e = r.until("refused", 18400);
    CHECK(e.code == ErrorCode::kConflict);
    CHECK(e.reason == refused.message);
    CHECK_MESSAGE(contains(e.conflicts_with, "lease " + std::to_string(lease->id())),
                  e.conflicts_with);
    CHECK(contains(e.conflicts_with, "pid " + std::to_string(::getpid())));
    CHECK(e.comm == "pbacquirer");

    REQUIRE(lease->release().ok());
    CHECK(r.until("released", 18400).lease == acquired.lease);
  }

  // holder-exited: a holder that exits without releasing.
  {
    Holder h = spawn_holder(d, "tcp:127.0.0.1:18401");
    h.child.kill(SIGKILL);  // no release: its connection just closes
    h.child.wait();
    Event e = r.until("holder-exited", 18401);
    CHECK(e.lease == h.lease.id);
    CHECK(e.pid == h.child.pid());
  }

  // lingering, reclaimed (taken back), then revoked by root.
  {
    Holder first = spawn_holder(d, "tcp:127.0.0.1:18402,linger=60");
    first.child.kill(SIGKILL);
    first.child.wait();
    CHECK(r.until("lingering", 18402).lease == first.lease.id);
    Holder second = spawn_holder(d, "tcp:127.0.0.1:18402,linger=60");
    Event back = r.until("reclaimed", 18402);
    CHECK(back.lease == first.lease.id);
    CHECK(back.pid == second.child.pid());
    REQUIRE(admin.release(first.lease.id).ok());
    Event revoked = r.until("revoked", 18402);
    CHECK(revoked.lease == first.lease.id);
    CHECK(revoked.pid == second.child.pid());  // whose lease was revoked
  }

  // expired: a lingering lease whose holder does not come back.
  {
    Holder h = spawn_holder(d, "tcp:127.0.0.1:18403,linger=1");
    h.child.kill(SIGKILL);
    h.child.wait();
    r.until("lingering", 18403);
    CHECK(r.until("expired", 18403).lease == h.lease.id);
  }

  // reservation-added and -held; hold-failed; reservation-removed; policy-reloaded.
  if (::getuid() == 0) {
    REQUIRE(admin.reserve("web", "tcp:any:18410", {}, {}, true).ok());
    Event held = r.until("reservation-held", 18410);
    CHECK(held.name == "web");
    Event added = r.until("reservation-added");
    CHECK(added.name == "web");
    REQUIRE(admin.unreserve("web").ok());
    CHECK(r.until("reservation-removed").name == "web");

    UniqueFd outside = bind_outside(SOCK_STREAM, 18411, "0.0.0.0");
    REQUIRE(outside.valid());
    auto refused = admin.reserve("db", "tcp:any:18411", {}, {}, true);
    CHECK_FALSE(refused.ok());
    Event failed = r.until("hold-failed", 18411);
    CHECK(failed.name == "db");
    CHECK(failed.code != ErrorCode::kOk);
    CHECK_FALSE(failed.reason.empty());

    auto reloaded = admin.reload();
    REQUIRE(reloaded.ok());
    Event e = r.until("policy-reloaded");
    CHECK(e.name == reloaded->source);
    CHECK(e.count == 0);
  } else {
    MESSAGE("reservation and reload events need root; not run as uid " << ::getuid());
  }

  // Every event the daemon numbered was seen (root sees all): no gap in the numbers.
  for (size_t i = 1; i < r.seen().size(); ++i) {
    CHECK_MESSAGE(r.seen()[i].seq == r.seen()[i - 1].seq + 1, r.seen_text());
  }
}

TEST_CASE("a restarted daemon's first event says how many leases it restored") {
  FdLeakCheck fds;
  TempDir dir;
  std::optional<Daemon> d;
  d.emplace(DaemonOptions{.dir = &dir});
  // Declared before the second daemon: the holder outlives it, so its lease stays restored.
  Holder h = spawn_holder(*d, "tcp:127.0.0.1:18420");
  d->stop(SIGTERM);
  d.reset();
  d.emplace(DaemonOptions{.dir = &dir});
  {
    portbroker::Client c = d->connect();
    Reader r = subscribe(c, 0);
    Event started = r.until("daemon-started");
    CHECK(started.seq == 1);
    CHECK(started.count == 1);
    CHECK_MESSAGE(contains(started.reason, "1 lease(s) restored"), started.reason);
  }
  d.reset();  // before the holder exits: the restored lease's socket is in its baseline
}

TEST_CASE("--since after a reconnect misses nothing the ring still holds") {
  FdLeakCheck fds;
  Daemon d(DaemonOptions{.args = {"--events-ring", "16"}});
  portbroker::Client c = d.connect();
  uint64_t last = 0;
  {
    Reader r = subscribe(c);
    auto lease = c.acquire("tcp:127.0.0.1:18430");
    REQUIRE(lease.ok());
    last = r.until("acquired", 18430).seq;
  }  // disconnected

  // What happens meanwhile: released, acquired, released.
  REQUIRE(c.list().ok());
  {
    auto again = c.acquire("tcp:127.0.0.1:18431");
    REQUIRE(again.ok());
  }
  {
    Reader r = subscribe(c, last);
    CHECK(r.stream().subscribed_at() == last + 3);
    std::vector<std::string> kinds;
    for (int i = 0; i < 3; ++i) {
      auto e = r.next();
      REQUIRE(e.has_value());
      CHECK(e->seq == last + 1 + static_cast<uint64_t>(i));
      kinds.push_back(e->kind + ":" + std::to_string(e->port));
    }
    CHECK(kinds == std::vector<std::string>{"released:18430", "acquired:18431", "released:18431"});
  }

  // Past what the ring keeps (16): one "lost" record for the gap, then the 16 it has.
  for (int i = 0; i < 10; ++i) {
    auto l = c.acquire("tcp:127.0.0.1:18432");
    REQUIRE(l.ok());
  }
  {
    Reader r = subscribe(c, 0);
    const uint64_t top = r.stream().subscribed_at();
    REQUIRE(top > 16);
    auto lost = r.next();
    REQUIRE(lost.has_value());
    CHECK(lost->kind == "lost");
    CHECK(lost->count == top - 16);
    CHECK(lost->seq == top - 16);
    for (uint64_t seq = top - 15; seq <= top; ++seq) {
      auto e = r.next();
      REQUIRE(e.has_value());
      CHECK(e->seq == seq);
    }
  }

  // A sequence number the daemon has not reached is refused, clearly.
  auto future = c.events(1'000'000);
  REQUIRE_FALSE(future.ok());
  CHECK(future.error().code == ErrorCode::kBadRequest);
  CHECK_MESSAGE(contains(future.error().message, "no event 1000000 yet"), future.error().message);
  CHECK(c.status().ok());
}

TEST_CASE("a subscriber that never reads loses events, told once, and slows nobody") {
  FdLeakCheck fds;
  constexpr int kQueue = 8;
  Daemon d(DaemonOptions{.args = {"--events-queue", std::to_string(kQueue)}});
  portbroker::Client worker = d.connect();
  portbroker::Client watcher = d.connect();
  Reader stuck = subscribe(watcher);
  const uint64_t from = stuck.stream().subscribed_at();

  // Far more events than its socket buffer and queue hold, while it reads nothing. Every
  // request of another client is answered all along.
  constexpr int kRounds = 1000;
  for (int i = 0; i < kRounds; ++i) {
    auto l = worker.acquire("tcp:127.0.0.1:18440");
    REQUIRE_MESSAGE(l.ok(), "round " << i << ": " << l.error().message);
    REQUIRE(l->release().ok());
  }
  auto metrics = worker.metrics();
  REQUIRE(metrics.ok());
  INFO(*metrics);
  // Bounded: never more than the queue's limit (and the one "lost" record) waits for it.
  CHECK(contains(*metrics, "portbroker_event_queue_limit 8\n"));
  CHECK_FALSE(contains(*metrics, "portbroker_events_lost_total 0\n"));
  for (int q = kQueue + 2; q < 100; ++q) {
    CHECK_FALSE(contains(*metrics, "portbroker_event_queue_max " + std::to_string(q) + "\n"));
  }
  const auto status = worker.status();
  REQUIRE(status.ok());

  // One more event after the flood, then the subscriber reads it all: what arrives plus what
  // the "lost" records count is exactly what happened, and "lost" came once per gap.
  {
    auto l = worker.acquire("tcp:127.0.0.1:18441");
    REQUIRE(l.ok());
  }
  const uint64_t total = 2 * kRounds + 2;
  uint64_t delivered = 0, lost = 0, lost_records = 0;
  while (delivered + lost < total) {
    auto e = stuck.next();
    REQUIRE_MESSAGE(e.has_value(), "delivered " << delivered << " lost " << lost);
    if (e->kind == "lost") {
      ++lost_records;
      lost += e->count;
    } else {
      ++delivered;
    }
  }
  CHECK(delivered + lost == total);
  CHECK(lost > 0);
  CHECK(lost_records >= 1);
  CHECK(stuck.seen().back().seq == from + total);
  // Delivery goes on where it stopped.
  {
    auto l = worker.acquire("tcp:127.0.0.1:18442");
    REQUIRE(l.ok());
    Event next = stuck.until("acquired", 18442);
    CHECK(next.seq == from + total + 1);
  }
}

TEST_CASE("a subscriber other than root sees only its own uid's events unless the policy says") {
  if (!can_switch_uid()) {
    MESSAGE("skipped: the tests do not run as root, so no child can change uid");
    return;
  }
  FdLeakCheck fds;
  for (bool reader : {false, true}) {
    INFO((reader ? "[events] users = [65534]" : "no [events]"));
    Daemon d(DaemonOptions{.config_text = std::string(kPolicy) +
                                          (reader ? "[events]\nusers = [65534]\n" : "")});
    // A child of uid 65534 subscribes, then reports the first event it gets.
    Child watcher = Child::run(
        [&d](ChildIo& io) {
          auto c = portbroker::Client::connect(d.socket_path());
          if (!c) return 1;
          auto s = c->events();
          if (!s) return 2;
          io.send_line("subscribed");
          auto e = s->next(20'000);
          if (!e || !*e) return 3;
          io.send_line((*e)->kind + " " + std::to_string((*e)->uid) + " " +
                       std::to_string((*e)->port));
          return 0;
        },
        {.uid = 65534, .name = "pbwatcher"});
    REQUIRE(watcher.read_line() == "subscribed");
    portbroker::Client root = d.connect();
    {
      auto l = root.acquire("tcp:127.0.0.1:18450");  // root's: event 1 after the start
      REQUIRE(l.ok());
      AcquireOutcome own = acquire_in_child(d, "tcp:127.0.0.1:18451", {.uid = 65534});
      REQUIRE_MESSAGE(own.ok, own.describe());
    }
    auto first = watcher.read_line();
    CHECK(first == (reader ? "acquired 0 18450" : "acquired 65534 18451"));
    CHECK(watcher.wait().code == 0);
  }
}

TEST_CASE("portbroker events prints one line per event, as text or JSON") {
  FdLeakCheck fds;
  Daemon d;
  {
    portbroker::Client c = d.connect();
    auto l = c.acquire("http=tcp:127.0.0.1:18460");
    REQUIRE(l.ok());
  }
  CommandResult bad = run_cli(d, {"events", "--since", "x1"});
  CHECK(bad.status.code == 2);
  CHECK_MESSAGE(contains(bad.out, "--since 'x1' is not a sequence number"), bad.out);
  CommandResult future = run_cli(d, {"events", "--since", "99"});
  CHECK(future.status.code == 1);
  CHECK_MESSAGE(contains(future.out, "no event 99 yet"), future.out);

  for (bool json : {false, true}) {
    std::vector<std::string> args = {cli_path(), "events", "--since", "1"};
    if (json) args.push_back("--json");
    Child cli = Child::exec(args, {.env = d.client_env(), .stdout_to_lines = true});
    auto acquired = cli.read_line();
    auto released = cli.read_line();
    REQUIRE(acquired.has_value());
    REQUIRE(released.has_value());
    if (json) {
      auto j = nlohmann::json::parse(*acquired);
      CHECK(j["seq"] == 2);
      CHECK(j["kind"] == "acquired");
      CHECK(j["name"] == "http");
      CHECK(j["endpoint"] == "tcp 127.0.0.1:18460");
      CHECK(j["port"] == 18460);
      CHECK(j["uid"] == ::getuid());
      CHECK(nlohmann::json::parse(*released)["kind"] == "released");
    } else {
      CHECK_MESSAGE(acquired->starts_with("2 "), *acquired);
      CHECK_MESSAGE(contains(*acquired, " acquired lease="), *acquired);
      CHECK_MESSAGE(contains(*acquired, " name=http endpoint=\"tcp 127.0.0.1:18460\""), *acquired);
      CHECK_MESSAGE(released->starts_with("3 "), *released);
      CHECK_MESSAGE(contains(*released, " released "), *released);
    }
    cli.kill(SIGTERM);
    cli.wait();
  }
}
