#include "broker/daemon/events.h"

#include <capnp/message.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "ipc/codec.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

namespace portbroker::broker {

namespace {

// Far below one record's limit even with every text at its longest.
constexpr size_t kMaxEventText = 2048;

void clip(std::string& s) {
  if (s.size() > kMaxEventText) s.resize(kMaxEventText);
}

// 0 on success, else the errno of the send.
int send_event(int fd, const Event& e) {
  capnp::MallocMessageBuilder message(256);
  ipc::event_to_wire(e, message.initRoot<wire::Reply>().initEvent());
  int err = 0;
  if (ipc::send_message(fd, message, {}, /*dont_wait=*/true, &err)) return 0;
  return err != 0 ? err : EIO;
}

}  // namespace

void EventRing::push_back(Event&& e) {
  if (slots_.size() < capacity_) {
    slots_.push_back(std::move(e));
    ++size_;
    return;
  }
  slots_[(head_ + size_) % capacity_] = std::move(e);  // size_ == capacity_: the oldest
  head_ = (head_ + 1) % capacity_;
}

uint64_t EventHub::publish(Event&& e) {
  const uint64_t seq = next_seq_++;
  e.seq = seq;
  // Times never go back, even when the wall clock does.
  e.time_ms = std::max(e.time_ms, last_time_ms_);
  last_time_ms_ = e.time_ms;
  clip(e.reason);
  clip(e.conflicts_with);
  clip(e.name);
  clip(e.comm);
  ring_.push_back(std::move(e));
  const Event& published = ring_.back();
  std::vector<std::pair<uint64_t, Flow>> changed;
  for (auto& [id, s] : subscribers_) {
    if (!visible(s, published)) continue;
    const bool was_blocked = s.blocked;
    Flow flow = deliver(s, published);
    if (flow == Flow::kFailed || (flow == Flow::kBlocked && !was_blocked)) {
      changed.emplace_back(id, flow);
    }
  }
  // After the loop: the callback may end a subscriber's session (and so unsubscribe it).
  for (auto [id, flow] : changed) {
    if (flow_changed_) flow_changed_(id, flow);
  }
  return seq;
}

Result<void> EventHub::check_since(std::optional<uint64_t> since) const {
  if (since && *since > last_seq()) {
    return make_error(ErrorCode::kBadRequest, "no event " + std::to_string(*since) +
                                                  " yet: the newest is " +
                                                  std::to_string(last_seq()) +
                                                  " (the daemon numbers from 1 at each start)");
  }
  return {};
}

Result<EventHub::Flow> EventHub::subscribe(uint64_t id, int fd, uint32_t uid, bool see_all,
                                           std::optional<uint64_t> since) {
  if (auto ok = check_since(since); !ok) return ok.error();
  Subscriber& s = subscribers_[id];
  s = Subscriber{};
  s.fd = fd;
  s.uid = uid;
  s.see_all = see_all;
  if (!since) return Flow::kIdle;
  const uint64_t oldest = ring_.empty() ? next_seq_ : ring_.front().seq;
  if (*since + 1 < oldest) {
    // Gone from the ring: said as one record, as for a slow subscriber.
    s.lost = oldest - *since - 1;
    s.last_lost_seq = oldest - 1;
    s.last_lost_time_ms = ring_.empty() ? last_time_ms_ : ring_.front().time_ms;
  }
  Flow flow = Flow::kIdle;
  for (size_t i = 0; i < ring_.size(); ++i) {
    const Event& e = ring_[i];
    if (e.seq <= *since || !visible(s, e)) continue;
    flow = deliver(s, e);
    if (flow == Flow::kFailed) return flow;
  }
  if (flow == Flow::kIdle && s.lost > 0) flow = drain(s);
  return flow;
}

EventHub::Flow EventHub::flush(uint64_t id) {
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return Flow::kIdle;
  return drain(it->second);
}

bool EventHub::visible(const Subscriber& s, const Event& e) const {
  if (s.see_all) return true;
  return event_is_about_lease(e) && e.uid == s.uid;
}

Event EventHub::lost_record(Subscriber& s) const {
  Event lost;
  lost.seq = s.last_lost_seq;
  lost.kind = "lost";
  lost.count = s.lost;
  lost.reason = std::to_string(s.lost) +
                " event(s) not delivered (the subscriber read too slowly or reconnected after "
                "they left the ring); the newest of them is " +
                std::to_string(s.last_lost_seq);
  lost.time_ms = s.last_lost_time_ms;
  return lost;
}

EventHub::Flow EventHub::deliver(Subscriber& s, const Event& e) {
  if (s.queue.empty() && s.lost == 0 && !s.blocked) {
    int err = send_event(s.fd, e);
    if (err == 0) return Flow::kIdle;
    if (err != EAGAIN && err != EWOULDBLOCK) return Flow::kFailed;
    s.blocked = true;
  }
  if (s.queue.size() >= limits_.queue) {
    ++s.lost;
    ++lost_total_;
    s.last_lost_seq = e.seq;
    s.last_lost_time_ms = e.time_ms;
    return Flow::kBlocked;
  }
  // What was lost goes before what comes after it (one record, however many were lost).
  if (s.lost > 0) {
    s.queue.push_back(lost_record(s));
    s.lost = 0;
  }
  s.queue.push_back(e);
  return s.blocked ? Flow::kBlocked : drain(s);
}

EventHub::Flow EventHub::drain(Subscriber& s) {
  for (;;) {
    if (s.queue.empty()) {
      if (s.lost == 0) break;
      // Everything it lost is newer than what was queued.
      s.queue.push_back(lost_record(s));
      s.lost = 0;
    }
    int err = send_event(s.fd, s.queue.front());
    if (err == EAGAIN || err == EWOULDBLOCK) {
      s.blocked = true;
      return Flow::kBlocked;
    }
    if (err != 0) return Flow::kFailed;
    s.queue.pop_front();
  }
  s.blocked = false;
  return Flow::kIdle;
}

size_t EventHub::queued_total() const {
  size_t n = 0;
  for (const auto& [id, s] : subscribers_) n += s.queue.size();
  return n;
}

size_t EventHub::max_queued() const {
  size_t n = 0;
  for (const auto& [id, s] : subscribers_) n = std::max(n, s.queue.size());
  return n;
}

}  // namespace portbroker::broker
