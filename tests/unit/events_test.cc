// EventHub: numbering, the ring and --since, per-uid visibility, and the bounded queue of a
// subscriber whose socket is full (one "lost" record per gap), over real socket pairs.
#include "broker/daemon/events.h"

#include <doctest/doctest.h>
#include <sys/socket.h>

#include <optional>
#include <string>
#include <vector>

#include "ipc/codec.h"
#include "ipc/framing.h"
#include "portbroker/fd.hpp"

using portbroker::Event;
using portbroker::UniqueFd;
using portbroker::broker::EventHub;

namespace {

struct Pair {
  UniqueFd daemon, client;
};

// A SOCK_SEQPACKET pair; `small` gives the daemon's side a tiny send buffer so that it fills
// after a few records.
Pair socket_pair(bool small = false) {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0);
  if (small) {
    int size = 4096;  // the kernel's minimum doubles it; a handful of records fit
    ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  }
  return Pair{UniqueFd(sv[0]), UniqueFd(sv[1])};
}

// Every event waiting on `fd`.
std::vector<Event> read_all(int fd) {
  std::vector<Event> out;
  portbroker::ipc::RecvBuffer buf;
  while (portbroker::ipc::recv_record(fd, buf, false, true) ==
         portbroker::ipc::RecvStatus::kRecord) {
    capnp::FlatArrayMessageReader reader(buf.record(), portbroker::ipc::reader_options());
    auto reply = reader.getRoot<portbroker::wire::Reply>();
    REQUIRE(reply.isEvent());
    auto e = portbroker::ipc::event_from_wire(reply.getEvent());
    REQUIRE(e.ok());
    out.push_back(std::move(e).value());
  }
  return out;
}

Event lease_event(const char* kind, uint32_t uid, uint16_t port = 8080) {
  Event e;
  e.kind = kind;
  e.uid = uid;
  e.port = port;
  e.time_ms = 1;
  return e;
}

Event daemon_event(const char* kind) {
  Event e;
  e.kind = kind;
  e.time_ms = 1;
  return e;
}

}  // namespace

TEST_CASE("events: numbered from 1, sent at once to every subscriber who may see them") {
  EventHub hub;
  Pair root = socket_pair(), user = socket_pair();
  REQUIRE(hub.subscribe(1, root.daemon.get(), 0, true, std::nullopt).ok());
  REQUIRE(hub.subscribe(2, user.daemon.get(), 1000, false, std::nullopt).ok());
  CHECK(hub.publish(daemon_event("reservation-added")) == 1);
  CHECK(hub.publish(lease_event("acquired", 1000)) == 2);
  CHECK(hub.publish(lease_event("acquired", 1001)) == 3);
  CHECK(hub.publish(lease_event("refused", 1000)) == 4);
  CHECK(hub.last_seq() == 4);

  auto all = read_all(root.client.get());
  REQUIRE(all.size() == 4);
  for (size_t i = 0; i < all.size(); ++i) CHECK(all[i].seq == i + 1);
  auto own = read_all(user.client.get());
  REQUIRE(own.size() == 2);
  CHECK(own[0].seq == 2);
  CHECK(own[1].seq == 4);
  CHECK(own[1].kind == "refused");
  CHECK(hub.queued_total() == 0);
}

TEST_CASE("events: --since replays the ring, and says what the ring no longer has") {
  EventHub hub(EventHub::Limits{.ring = 4, .queue = 16});
  for (int i = 0; i < 10; ++i) hub.publish(lease_event("acquired", 0));
  Pair p = socket_pair();
  REQUIRE(hub.subscribe(1, p.daemon.get(), 0, true, 8).ok());
  auto after8 = read_all(p.client.get());
  REQUIRE(after8.size() == 2);
  CHECK(after8[0].seq == 9);
  CHECK(after8[1].seq == 10);

  Pair q = socket_pair();
  REQUIRE(hub.subscribe(2, q.daemon.get(), 0, true, 2).ok());
  auto after2 = read_all(q.client.get());
  REQUIRE(after2.size() == 5);
  CHECK(after2[0].kind == "lost");
  CHECK(after2[0].count == 4);  // 3, 4, 5 and 6 left the ring
  CHECK(after2[0].seq == 6);
  CHECK(after2[1].seq == 7);
  CHECK(after2[4].seq == 10);

  Pair r = socket_pair();
  auto future = hub.subscribe(3, r.daemon.get(), 0, true, 11);
  REQUIRE_FALSE(future.ok());
  CHECK(future.error().code == portbroker::ErrorCode::kBadRequest);
  CHECK_FALSE(hub.subscribed(3));
  CHECK(hub.subscriber_count() == 2);
}

TEST_CASE("events: the ring replays oldest first before it fills and after it wraps") {
  EventHub hub(EventHub::Limits{.ring = 3, .queue = 16});
  hub.publish(lease_event("acquired", 0));
  hub.publish(lease_event("released", 0));
  Pair p = socket_pair();
  REQUIRE(hub.subscribe(1, p.daemon.get(), 0, true, 0).ok());
  auto two = read_all(p.client.get());
  REQUIRE(two.size() == 2);
  CHECK(two[0].seq == 1);
  CHECK(two[0].kind == "acquired");
  CHECK(two[1].seq == 2);
  hub.unsubscribe(1);

  for (int i = 0; i < 7; ++i) hub.publish(lease_event("acquired", 0));  // 3..9: wraps twice
  Pair q = socket_pair();
  REQUIRE(hub.subscribe(2, q.daemon.get(), 0, true, 0).ok());
  auto wrapped = read_all(q.client.get());
  REQUIRE(wrapped.size() == 4);
  CHECK(wrapped[0].kind == "lost");
  CHECK(wrapped[0].count == 6);  // 1 to 6
  CHECK(wrapped[1].seq == 7);
  CHECK(wrapped[2].seq == 8);
  CHECK(wrapped[3].seq == 9);
}

TEST_CASE("events: a full socket queues a bounded number, then one lost record per gap") {
  EventHub hub(EventHub::Limits{.ring = 64, .queue = 4});
  std::vector<std::pair<uint64_t, EventHub::Flow>> flows;
  hub.on_flow_changed([&](uint64_t id, EventHub::Flow f) { flows.emplace_back(id, f); });
  Pair slow = socket_pair(true), fast = socket_pair();
  REQUIRE(hub.subscribe(1, slow.daemon.get(), 0, true, std::nullopt).ok());
  REQUIRE(hub.subscribe(2, fast.daemon.get(), 0, true, std::nullopt).ok());

  constexpr uint64_t kEvents = 200;
  std::vector<Event> fast_seen;
  for (uint64_t i = 0; i < kEvents; ++i) {
    hub.publish(lease_event("acquired", 0));
    for (Event& e : read_all(fast.client.get())) fast_seen.push_back(std::move(e));
  }
  CHECK(fast_seen.size() == kEvents);  // the slow one held nobody up
  REQUIRE(flows.size() == 1);          // told once that it blocked
  CHECK(flows[0] == std::pair<uint64_t, EventHub::Flow>{1, EventHub::Flow::kBlocked});
  CHECK(hub.max_queued() <= 4);
  CHECK(hub.lost_total() > 0);

  // It reads everything there is, flushes, and reads again until nothing is left.
  std::vector<Event> slow_seen;
  for (int round = 0; round < 100; ++round) {
    for (Event& e : read_all(slow.client.get())) slow_seen.push_back(std::move(e));
    if (hub.flush(1) == EventHub::Flow::kIdle) break;
  }
  for (Event& e : read_all(slow.client.get())) slow_seen.push_back(std::move(e));
  uint64_t delivered = 0, lost = 0, lost_records = 0;
  for (size_t i = 0; i < slow_seen.size(); ++i) {
    if (i > 0) CHECK(slow_seen[i].seq > slow_seen[i - 1].seq);
    if (slow_seen[i].kind == "lost") {
      ++lost_records;
      lost += slow_seen[i].count;
    } else {
      ++delivered;
    }
  }
  CHECK(lost_records == 1);
  CHECK(lost == hub.lost_total());
  CHECK(delivered + lost == kEvents);
  REQUIRE_FALSE(slow_seen.empty());
  CHECK(slow_seen.back().kind == "lost");  // the gap was at the end
  CHECK(slow_seen.back().seq == kEvents);

  // Delivery resumes where it stopped.
  CHECK(hub.publish(lease_event("released", 0)) == kEvents + 1);
  auto next = read_all(slow.client.get());
  REQUIRE(next.size() == 1);
  CHECK(next[0].seq == kEvents + 1);
}

TEST_CASE("events: a broken connection is reported, and only then") {
  EventHub hub;
  std::vector<std::pair<uint64_t, EventHub::Flow>> flows;
  hub.on_flow_changed([&](uint64_t id, EventHub::Flow f) { flows.emplace_back(id, f); });
  Pair p = socket_pair();
  REQUIRE(hub.subscribe(7, p.daemon.get(), 0, true, std::nullopt).ok());
  p.client.reset();
  hub.publish(daemon_event("policy-reloaded"));
  REQUIRE(flows.size() == 1);
  CHECK(flows[0] == std::pair<uint64_t, EventHub::Flow>{7, EventHub::Flow::kFailed});
  hub.unsubscribe(7);
  hub.publish(daemon_event("policy-reloaded"));
  CHECK(flows.size() == 1);
}

TEST_CASE("events: what a subscriber other than root may see") {
  CHECK(portbroker::event_is_about_lease(lease_event("acquired", 5)));
  CHECK(portbroker::event_is_about_lease(lease_event("holder-exited", 5)));
  CHECK(portbroker::event_is_about_lease(lease_event("refused", 5)));
  CHECK_FALSE(portbroker::event_is_about_lease(daemon_event("reservation-held")));
  CHECK_FALSE(portbroker::event_is_about_lease(daemon_event("daemon-started")));
  CHECK_FALSE(portbroker::event_is_about_lease(daemon_event("policy-reloaded")));
}
