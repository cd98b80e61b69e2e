// The event stream (`portbroker events`): numbers what the LeaseService reports, keeps the newest
// in a bounded ring so that a subscriber can catch up after a reconnect (`--since`), and sends
// each event to every subscriber allowed to see it, one event per record.
//
// A subscriber never slows the daemon or anyone else: sends never block, what its socket cannot
// take waits in a bounded queue, and what overflows that is dropped and counted, then reported
// as one "lost" record ahead of the next event it does get.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <unordered_map>
#include <vector>

#include "portbroker/info.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

struct EventLimits {
  size_t ring = 4096;   // events kept for --since
  size_t queue = 1024;  // events waiting per subscriber whose socket is full
};

// The newest `capacity` events, oldest first, in slots allocated once: a std::deque of events
// (one node each, they are that large) allocated and freed a node per event.
class EventRing {
 public:
  explicit EventRing(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  const Event& operator[](size_t i) const { return slots_[(head_ + i) % capacity_]; }
  const Event& front() const { return (*this)[0]; }
  const Event& back() const { return (*this)[size_ - 1]; }
  // Keeps `e`, dropping the oldest when full.
  void push_back(Event&& e);

 private:
  size_t capacity_;
  std::vector<Event> slots_;  // grows to capacity_, then each push overwrites the oldest
  size_t head_ = 0;           // the oldest
  size_t size_ = 0;
};

class EventHub {
 public:
  using Limits = EventLimits;
  enum class Flow {
    kIdle,     // everything queued was sent
    kBlocked,  // its socket is full: call flush() once it is writable
    kFailed,   // its connection is broken: end its session
  };
  // Told when a send made a subscriber blocked or failed (never from inside subscribe()).
  using FlowChanged = std::function<void(uint64_t subscriber, Flow flow)>;

  explicit EventHub(Limits limits = {}) : limits_(limits), ring_(limits.ring) {}
  void on_flow_changed(FlowChanged cb) { flow_changed_ = std::move(cb); }

  uint64_t last_seq() const { return next_seq_ - 1; }
  // Numbers `e` (its seq), keeps it in the ring and sends it to every subscriber allowed to see
  // it. Returns its number.
  uint64_t publish(Event&& e);

  // `fd` is the subscriber's connection (borrowed: unsubscribe before closing it). `see_all`:
  // events about every uid, else only those about `uid`'s own leases. With `since`, the ring's
  // events after it come first (after one "lost" record when the ring no longer has them all).
  // Refuses a `since` past the newest event.
  Result<Flow> subscribe(uint64_t id, int fd, uint32_t uid, bool see_all,
                         std::optional<uint64_t> since);
  // Check a `since` before subscribing (so the refusal can be the request's reply).
  Result<void> check_since(std::optional<uint64_t> since) const;
  void unsubscribe(uint64_t id) { subscribers_.erase(id); }
  bool subscribed(uint64_t id) const { return subscribers_.contains(id); }
  // Sends what a blocked subscriber has queued (its socket became writable).
  Flow flush(uint64_t id);

  size_t subscriber_count() const { return subscribers_.size(); }
  uint64_t lost_total() const { return lost_total_; }
  size_t queued_total() const;
  size_t max_queued() const;  // the fullest subscriber's queue
  const Limits& limits() const { return limits_; }

 private:
  struct Subscriber {
    int fd = -1;
    uint32_t uid = 0;
    bool see_all = false;
    bool blocked = false;
    std::deque<Event> queue;
    uint64_t lost = 0;           // dropped since the last "lost" record
    uint64_t last_lost_seq = 0;  // the newest of them
    int64_t last_lost_time_ms = 0;
  };

  bool visible(const Subscriber& s, const Event& e) const;
  // Sends `e` now when nothing waits before it, else queues it (or counts it lost).
  Flow deliver(Subscriber& s, const Event& e);
  Flow drain(Subscriber& s);
  Event lost_record(Subscriber& s) const;

  Limits limits_;
  FlowChanged flow_changed_;
  uint64_t next_seq_ = 1;
  int64_t last_time_ms_ = 0;
  uint64_t lost_total_ = 0;
  EventRing ring_;
  std::unordered_map<uint64_t, Subscriber> subscribers_;
};

}  // namespace portbroker::broker
