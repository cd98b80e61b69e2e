// Events and metrics on the daemon side: subscriptions on control connections, the Prometheus
// exposition and its textfile. The numbering, ring and queues are events.cc; the metric set is
// metrics.cc.
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include "broker/daemon/server_internal.h"
#include "broker/os/files.h"
#include "broker/os/peer.h"

namespace portbroker::broker {

void Server::start_monitoring() {
  events_.on_flow_changed(
      [this](uint64_t session, EventHub::Flow flow) { on_subscriber_flow(session, flow); });
  uv_timer_init(loop_, &metrics_timer_);
  metrics_timer_.data = this;
  uv_timer_init(loop_, &metrics_soon_timer_);
  metrics_soon_timer_.data = this;
  if (config_.metrics_textfile.empty()) return;
  write_metrics_textfile();
  uv_timer_start(&metrics_timer_, &Server::on_metrics_timer, config_.metrics_interval_ms,
                 config_.metrics_interval_ms);
  uv_unref(reinterpret_cast<uv_handle_t*>(&metrics_timer_));
}

void Server::stop_monitoring() {
  if (!config_.metrics_textfile.empty()) write_metrics_textfile();  // the last word: no leases
  for (uv_timer_t* t : {&metrics_timer_, &metrics_soon_timer_}) {
    uv_timer_stop(t);
    uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
  }
}

void Server::publish_events() {
  // The buffer's storage is reused from round to round; a round started from within this one
  // (a publish that ends a subscriber's session) finds it taken and allocates its own.
  std::vector<Event> taken = std::move(event_buffer_);
  service_.take_events(taken);
  const bool any = !taken.empty();
  for (Event& e : taken) {
    metrics_.observe(e);
    events_.publish(std::move(e));
  }
  taken.clear();
  event_buffer_ = std::move(taken);
  // On change, soon (a burst of changes is one write), besides every few seconds.
  if (any && !metrics_soon_ && listening_ && !config_.metrics_textfile.empty()) {
    metrics_soon_ = true;
    uv_timer_start(&metrics_soon_timer_, &Server::on_metrics_timer, 100, 0);
  }
}

void Server::do_events(Session& s, wire::EventsRequest::Reader r, Reply& reply) {
  ipc::EventsQuery q = ipc::events_query_from_wire(r);
  if (auto ok = events_.check_since(q.since); !ok) return reply.error(ok.error());
  s.subscribing = true;
  // Everything after what the reply names, even if the reply has to wait for room.
  s.events_since = q.since.value_or(events_.last_seq());
  reply.root.setSubscribed(events_.last_seq());
}

void Server::begin_subscription(Session& s) {
  s.subscribing = false;
  s.subscriber = true;
  // A stream is not carried across the daemon's restarts: its subscriber reconnects.
  if (fd_store_.enabled()) fd_store_.remove(session_fd_name(s.id));
  const bool see_all = s.holder.uid == 0 || service_.policy().event_readers.matches(s.principal);
  spdlog::debug("pid={} uid={} streams events after {} ({})", s.holder.pid, s.holder.uid,
                s.events_since.value_or(0), see_all ? "every uid" : "its own uid");
  auto flow = events_.subscribe(s.id, s.conn.get(), s.holder.uid, see_all, s.events_since);
  if (!flow) {
    // Checked when asked; the ring cannot have moved backwards since.
    spdlog::warn("pid={} uid={} events: {}", s.holder.pid, s.holder.uid, flow.error().message);
    return close_session(s);
  }
  on_subscriber_flow(s.id, *flow);
}

void Server::flush_events(Session& s) { on_subscriber_flow(s.id, events_.flush(s.id)); }

void Server::on_subscriber_flow(uint64_t session, EventHub::Flow flow) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (s.closing) return;
  switch (flow) {
    case EventHub::Flow::kFailed:
      spdlog::debug("pid={} uid={} events connection failed", s.holder.pid, s.holder.uid);
      close_session(s);
      return;
    case EventHub::Flow::kBlocked:
      uv_poll_start(&s.poll, UV_READABLE | UV_WRITABLE | UV_DISCONNECT, &Server::on_session_event);
      return;
    case EventHub::Flow::kIdle:
      uv_poll_start(&s.poll, UV_READABLE | UV_DISCONNECT, &Server::on_session_event);
      return;
  }
}

std::string Server::render_metrics() const {
  DaemonFacts facts;
  facts.sessions = sessions_.size();
  facts.started_at_ms = started_at_ms_;
  facts.open_fds = static_cast<size_t>(count_open_fds());
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) facts.max_fds = rl.rlim_cur;
  facts.subscribers = events_.subscriber_count();
  facts.events_lost = events_.lost_total();
  facts.events_queued_max = events_.max_queued();
  facts.events_queue_limit = events_.limits().queue;
  return metrics_.render(service_, facts);
}

void Server::do_metrics(Reply& reply) { reply.root.setMetrics(render_metrics()); }

void Server::write_metrics_textfile() {
  const std::string& path = config_.metrics_textfile;
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (auto ok = write_file_atomically(dir, name, render_metrics(), /*durable=*/false); !ok) {
    spdlog::warn("metrics textfile not written: {}", ok.error().message);
  }
}

void Server::on_metrics_timer(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  if (t == &self->metrics_soon_timer_) self->metrics_soon_ = false;
  try {
    self->write_metrics_textfile();
  } catch (const std::exception& e) {
    spdlog::error("metrics textfile not written: {}", e.what());
  }
}

}  // namespace portbroker::broker
