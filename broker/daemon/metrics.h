// Metrics in the Prometheus text format (`portbroker metrics`, --metrics-textfile): counters
// fed by the event stream and the acquire latency, gauges read from the LeaseService and the
// daemon when rendered.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "broker/service/lease_service.h"
#include "portbroker/info.hpp"

namespace portbroker::broker {

// What only the daemon knows, for render().
struct DaemonFacts {
  size_t sessions = 0;  // control connections, event subscribers included
  int64_t started_at_ms = 0;
  size_t open_fds = 0;
  size_t max_fds = 0;  // RLIMIT_NOFILE
  size_t subscribers = 0;
  uint64_t events_lost = 0;
  size_t events_queued_max = 0;  // the fullest subscriber's queue
  size_t events_queue_limit = 0;
};

class Metrics {
 public:
  // Upper bounds of the acquire latency histogram, in seconds.
  static constexpr std::array<double, 12> kLatencyBuckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0};
  // Per-uid series: the uids holding the most leases, no more (bounded cardinality).
  static constexpr size_t kTopUids = 10;

  void observe(const Event& e);
  void observe_acquire(double seconds);

  std::string render(const LeaseService& service, const DaemonFacts& facts) const;

 private:
  uint64_t events_ = 0;
  uint64_t grants_ = 0;
  std::map<std::string, uint64_t> refusals_;  // by reason (error code name)
  std::map<std::string, uint64_t> ends_;      // by why the lease ended
  uint64_t hold_failures_ = 0;
  uint64_t reloads_ = 0;
  std::array<uint64_t, kLatencyBuckets.size()> latency_counts_{};
  uint64_t latency_count_ = 0;
  double latency_sum_ = 0;
};

}  // namespace portbroker::broker
