// Journal records for the journal tests: one of every kind with every field set, and long
// valid histories made the way a daemon would make them (grants, joins, lingering, reclaims,
// ends, holds, guard changes), from a fixed seed.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "broker/core/journal.h"

namespace pbtest {

namespace jr = portbroker::broker::journal;

inline portbroker::IpAddress ip(const char* text) {
  return portbroker::IpAddress::parse(text).value();
}

inline portbroker::Holder sample_holder(int pid, uint32_t uid) {
  return portbroker::Holder{pid, uid, uid + 1, "server" + std::to_string(pid),
                            "/system.slice/app-" + std::to_string(pid) + ".service"};
}

inline jr::LeaseGranted sample_granted(uint64_t lease, uint64_t binding,
                                       portbroker::Mode mode = portbroker::Mode::kExclusive,
                                       uint16_t port = 8080) {
  jr::LeaseGranted g;
  g.lease = lease;
  g.binding = binding;
  g.endpoint = {portbroker::Protocol::kTcp, ip("::"), port, true};
  g.mode = mode;
  g.options.backlog = 1024;
  g.options.v6only = false;
  g.options.reuseaddr = true;
  g.options.freebind = true;
  g.options.defer_accept = 5;
  g.options.fastopen = 16;
  g.options.keepalive = false;
  g.options.rcvbuf = 1 << 20;
  g.options.sndbuf = 1 << 19;
  g.options.device = "eth0";
  g.owner_uid = 1000;
  g.name = "http";
  g.session = 7;
  g.holder = sample_holder(4242, 1000);
  g.holder_start_time = 987654321;
  g.created_ms = 1'764'547'200'123;
  g.linger_s = 30;
  g.token = "0123456789abcdef0123456789abcdef";
  g.cookie = 0x1122334455667788;
  return g;
}

// One record of every kind, every field away from its default.
inline std::vector<jr::Record> one_of_each() {
  jr::LeaseReclaimed reclaimed{3, 9, sample_holder(5151, 1001), 123456789, 77};
  jr::HoldAdded hold{portbroker::Protocol::kUdp, ip("127.0.0.1"), 5353, true, true, "dns", 99};
  return {jr::Checkpoint{4, 100, 12},
          sample_granted(3, 2),
          jr::LeaseEnded{3},
          jr::LeaseLingering{3, 1'764'547'260'000},
          reclaimed,
          hold,
          jr::HoldRemoved{portbroker::Protocol::kUdp, ip("127.0.0.1"), 5353},
          jr::GuardPorts{{{1433, 1433}, {8000, 8099}}}};
}

// A valid history of `count` records (each applies to the state the previous ones built), with
// no checkpoint: what a daemon appends to its log.
class HistoryMaker {
 public:
  explicit HistoryMaker(uint32_t seed) : rng_(seed) {}

  std::vector<jr::Record> make(size_t count) {
    std::vector<jr::Record> out;
    while (out.size() < count) {
      jr::Record r = next();
      if (state_.apply(r)) out.push_back(std::move(r));
    }
    return out;
  }

 private:
  uint64_t pick(const std::vector<uint64_t>& v) { return v[rng_() % v.size()]; }

  jr::Record next() {
    std::vector<uint64_t> live;
    std::vector<uint64_t> lingering;
    std::vector<uint64_t> joinable;
    for (const auto& [id, l] : state_.leases()) {
      live.push_back(id);
      if (l.lingering_until_ms != 0) lingering.push_back(id);
    }
    for (const auto& [id, b] : state_.bindings()) {
      if (b.mode != portbroker::Mode::kExclusive) joinable.push_back(id);
    }
    switch (rng_() % 10) {
      case 0:
      case 1:
      case 2: {  // a new binding
        auto mode = static_cast<portbroker::Mode>(rng_() % 3);
        auto g = sample_granted(next_id_, next_id_ + 1, mode,
                                static_cast<uint16_t>(1024 + rng_() % 60000));
        g.binding = next_id_++;
        g.lease = next_id_++;
        g.session = 1 + rng_() % 50;
        g.cookie = cookie_++;
        g.holder = sample_holder(static_cast<int>(100 + rng_() % 30000), 1000 + rng_() % 3);
        return g;
      }
      case 3: {  // a join
        if (joinable.empty()) break;
        const auto& b = state_.bindings().at(pick(joinable));
        auto g = sample_granted(next_id_++, b.id, b.mode, b.endpoint.port);
        g.endpoint = b.endpoint;
        g.options = b.options;
        g.owner_uid = b.owner_uid;
        g.cookie = b.mode == portbroker::Mode::kReuseport ? cookie_++ : b.cookie;
        return g;
      }
      case 4:
      case 5:
        if (live.empty()) break;
        return jr::LeaseEnded{pick(live)};
      case 6:
        if (live.empty()) break;
        return jr::LeaseLingering{pick(live), 1'764'547'200'000 + static_cast<int64_t>(rng_())};
      case 7:
        if (lingering.empty()) break;
        return jr::LeaseReclaimed{pick(lingering), 1 + rng_() % 50,
                                  sample_holder(static_cast<int>(rng_() % 30000), 1000), rng_(),
                                  rng_() % 2 == 0 ? 0 : cookie_++};
      case 8: {
        uint16_t port = static_cast<uint16_t>(1 + rng_() % 20);
        if (rng_() % 3 == 0)
          return jr::HoldRemoved{portbroker::Protocol::kTcp, ip("0.0.0.0"), port};
        return jr::HoldAdded{
            portbroker::Protocol::kTcp,   ip("0.0.0.0"), port, false, rng_() % 2 == 0,
            "res" + std::to_string(port), cookie_++};
      }
      default:
        return jr::GuardPorts{{{static_cast<uint16_t>(1000 + rng_() % 100), 1200}}};
    }
    return jr::GuardPorts{};  // nothing else applies yet
  }

  std::mt19937 rng_;
  jr::JournalState state_;
  uint64_t next_id_ = 1;
  uint64_t cookie_ = 1;
};

}  // namespace pbtest
