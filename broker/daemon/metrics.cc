#include "broker/daemon/metrics.h"

#include <algorithm>
#include <bitset>
#include <charconv>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace portbroker::broker {

namespace {

// Refusal reasons and lease ends that exist from the start, at 0, so that rate() works from
// the first scrape.
constexpr std::string_view kRefusalReasons[] = {
    "permission-denied", "conflict",           "in-use-outside",      "limit-exceeded",
    "no-free-port",      "resource-exhausted", "address-unavailable", "internal"};
constexpr std::string_view kEndReasons[] = {"released", "revoked", "holder-exited", "expired"};

std::string number(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : std::string("NaN");
}

std::string escape_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Builds the exposition: one HELP and TYPE per family, then its samples.
class Exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_.append("# HELP portbroker_").append(name).append(" ").append(help).append("\n");
    out_.append("# TYPE portbroker_").append(name).append(" ").append(type).append("\n");
  }
  // `labels`: name/value pairs.
  void sample(std::string_view name,
              std::initializer_list<std::pair<std::string_view, std::string_view>> labels,
              double value) {
    out_.append("portbroker_").append(name);
    if (labels.size() > 0) {
      out_ += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_.append(k).append("=\"").append(escape_label(v)).append("\"");
      }
      out_ += '}';
    }
    out_.append(" ").append(number(value)).append("\n");
  }
  void gauge(std::string_view name, std::string_view help, double value) {
    family(name, "gauge", help);
    sample(name, {}, value);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

void lease_families(Exposition& x, const LeaseService& service) {
  const Registry& reg = service.registry();
  std::map<std::tuple<Protocol, Mode, bool>, size_t> by_kind;
  std::map<uint32_t, size_t> by_uid;
  for (const Lease* l : reg.all_leases()) {
    const Binding* b = reg.find_binding(l->binding);
    if (b == nullptr) continue;
    ++by_kind[{b->endpoint.protocol, b->mode, l->lingering()}];
    ++by_uid[l->holder.uid];
  }
  x.family("leases", "gauge", "Leases by protocol, mode and state.");
  for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
    for (Mode m : {Mode::kExclusive, Mode::kShared, Mode::kReuseport}) {
      for (bool lingering : {false, true}) {
        auto it = by_kind.find({p, m, lingering});
        x.sample("leases",
                 {{"protocol", protocol_name(p)},
                  {"mode", mode_name(m)},
                  {"state", lingering ? "lingering" : "active"}},
                 static_cast<double>(it == by_kind.end() ? 0 : it->second));
      }
    }
  }
  std::vector<std::pair<uint32_t, size_t>> top(by_uid.begin(), by_uid.end());
  std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  if (top.size() > Metrics::kTopUids) top.resize(Metrics::kTopUids);
  x.gauge("uids_with_leases", "Uids holding at least one lease.",
          static_cast<double>(by_uid.size()));
  x.family("uid_leases", "gauge", "Leases held by each of the uids holding the most (top 10).");
  for (const auto& [uid, n] : top) {
    x.sample("uid_leases", {{"uid", std::to_string(uid)}}, static_cast<double>(n));
  }
  x.family("uid_lease_limit", "gauge", "The lease limit of each uid in portbroker_uid_leases.");
  for (const auto& [uid, n] : top) {
    x.sample("uid_lease_limit", {{"uid", std::to_string(uid)}},
             static_cast<double>(service.limits_for(uid).leases));
  }
}

void pool_families(Exposition& x, const LeaseService& service) {
  // A pool port is free when no binding of its protocol uses it and no reservation covers it
  // (the daemon never hands those out from a pool).
  std::bitset<65536> taken[2];
  for (const Lease* l : service.registry().all_leases()) {
    const Binding* b = service.registry().find_binding(l->binding);
    if (b != nullptr) taken[static_cast<int>(b->endpoint.protocol)].set(b->endpoint.port);
  }
  const Policy& policy = service.policy();
  for (const Reservation& r : policy.reservations) {
    for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
      if (!r.protocols.has(p)) continue;
      for (const PortRange& range : r.ports) {
        for (uint32_t port = range.first; port <= range.last; ++port) {
          taken[static_cast<int>(p)].set(port);
        }
      }
    }
  }
  x.family("pool_ports", "gauge", "Ports in each pool for port-0 requests.");
  for (const Pool& pool : policy.pools) {
    size_t size = 0;
    for (const PortRange& r : pool.ports) size += r.size();
    x.sample("pool_ports", {{"pool", pool.name}}, static_cast<double>(size));
  }
  x.family("pool_free_ports", "gauge", "Ports of each pool neither leased nor reserved.");
  for (const Pool& pool : policy.pools) {
    for (Protocol p : {Protocol::kTcp, Protocol::kUdp}) {
      if (!pool.protocols.has(p)) continue;
      size_t free = 0;
      for (const PortRange& r : pool.ports) {
        for (uint32_t port = r.first; port <= r.last; ++port) {
          if (!taken[static_cast<int>(p)].test(port)) ++free;
        }
      }
      x.sample("pool_free_ports", {{"pool", pool.name}, {"protocol", protocol_name(p)}},
               static_cast<double>(free));
    }
  }
}

}  // namespace

void Metrics::observe(const Event& e) {
  ++events_;
  if (e.kind == "acquired" || e.kind == "reclaimed") {
    ++grants_;
  } else if (e.kind == "refused") {
    ++refusals_[error_code_name(e.code)];
  } else if (e.kind == "hold-failed") {
    ++hold_failures_;
  } else if (e.kind == "policy-reloaded") {
    ++reloads_;
  } else if (std::find(std::begin(kEndReasons), std::end(kEndReasons), e.kind) !=
             std::end(kEndReasons)) {
    ++ends_[e.kind];
  }
}

void Metrics::observe_acquire(double seconds) {
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
    if (seconds <= kLatencyBuckets[i]) ++latency_counts_[i];
  }
  ++latency_count_;
  latency_sum_ += seconds;
}

std::string Metrics::render(const LeaseService& service, const DaemonFacts& facts) const {
  Exposition x;
  x.family("build_info", "gauge", "The daemon's version (always 1).");
  x.sample("build_info", {{"version", PORTBROKER_VERSION}}, 1);
  x.gauge("start_time_seconds", "When the daemon started, in unix time.",
          static_cast<double>(facts.started_at_ms) / 1000.0);

  lease_families(x, service);

  x.family("grants_total", "counter", "Leases granted (new or taken back) since the start.");
  x.sample("grants_total", {}, static_cast<double>(grants_));
  std::map<std::string, uint64_t> refusals = refusals_;
  for (std::string_view r : kRefusalReasons) refusals.try_emplace(std::string(r), 0);
  x.family("refusals_total", "counter", "Acquire requests refused since the start, by reason.");
  for (const auto& [reason, n] : refusals) {
    x.sample("refusals_total", {{"reason", reason}}, static_cast<double>(n));
  }
  std::map<std::string, uint64_t> ends = ends_;
  for (std::string_view r : kEndReasons) ends.try_emplace(std::string(r), 0);
  x.family("lease_ends_total", "counter", "Leases ended since the start, by why.");
  for (const auto& [why, n] : ends) {
    x.sample("lease_ends_total", {{"why", why}}, static_cast<double>(n));
  }

  x.family("acquire_duration_seconds", "histogram",
           "Time the daemon spent on each acquire request, refused or granted.");
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
    x.sample("acquire_duration_seconds_bucket", {{"le", number(kLatencyBuckets[i])}},
             static_cast<double>(latency_counts_[i]));
  }
  x.sample("acquire_duration_seconds_bucket", {{"le", "+Inf"}},
           static_cast<double>(latency_count_));
  x.sample("acquire_duration_seconds_sum", {}, latency_sum_);
  x.sample("acquire_duration_seconds_count", {}, static_cast<double>(latency_count_));

  x.gauge("sessions", "Open control connections (event subscribers included).",
          static_cast<double>(facts.sessions));
  pool_families(x, service);

  const LeaseService::Gauges g = service.gauges();
  x.gauge("held_ports", "Ports the daemon holds now for held reservations.",
          static_cast<double>(g.held_ports));
  x.gauge("hold_failures", "Ports of held reservations that cannot be held now.",
          static_cast<double>(g.hold_failures));
  x.family("hold_failures_total", "counter", "Failures to hold a reserved port since the start.");
  x.sample("hold_failures_total", {}, static_cast<double>(hold_failures_));
  x.gauge("reservations", "Reservations in force (policy file and runtime).",
          static_cast<double>(service.policy().reservations.size()));
  x.gauge("guard_entries", "Port ranges the daemon added to ip_local_reserved_ports.",
          static_cast<double>(g.guard_entries));
  x.gauge("journal_bytes", "Size of the lease journal's log since its last compaction.",
          static_cast<double>(g.journal_bytes));
  x.gauge("open_fds", "File descriptors the daemon has open.", static_cast<double>(facts.open_fds));
  x.gauge("max_fds", "The daemon's file descriptor limit (RLIMIT_NOFILE).",
          static_cast<double>(facts.max_fds));
  x.family("policy_reloads_total", "counter", "Policy reloads since the start.");
  x.sample("policy_reloads_total", {}, static_cast<double>(reloads_));

  x.family("events_total", "counter", "Events published since the start.");
  x.sample("events_total", {}, static_cast<double>(events_));
  x.gauge("event_subscribers", "Connections streaming events.",
          static_cast<double>(facts.subscribers));
  x.family("events_lost_total", "counter",
           "Events not delivered to a subscriber that read too slowly, since the start.");
  x.sample("events_lost_total", {}, static_cast<double>(facts.events_lost));
  x.gauge("event_queue_max", "Events waiting in the fullest subscriber's queue.",
          static_cast<double>(facts.events_queued_max));
  x.gauge("event_queue_limit", "The most events one subscriber's queue holds.",
          static_cast<double>(facts.events_queue_limit));
  return x.take();
}

}  // namespace portbroker::broker
