// The C ABI's result objects and their accessors. Accessors never fail: NULL or an index past
// the end gives NULL (entries), 0 (numbers) or "" (strings), as portbroker.h promises.
#include "c_api_results.h"

#include <utility>

using portbroker::LeaseInfo;
using portbroker::ReservationInfo;

portbroker_lease_list::portbroker_lease_list(std::vector<LeaseInfo> in) {
  leases.reserve(in.size());
  for (auto& l : in) leases.emplace_back(std::move(l));
}

portbroker_reservation::portbroker_reservation(ReservationInfo r)
    : info(std::move(r)), address(info.address ? info.address->to_string() : std::string()) {}

portbroker_reservation_list::portbroker_reservation_list(std::vector<ReservationInfo> in) {
  reservations.reserve(in.size());
  for (auto& r : in) reservations.emplace_back(std::move(r));
}

portbroker_who_report::portbroker_who_report(portbroker::WhoReport w)
    : report(std::move(w)),
      leases(std::exchange(report.leases, {})),
      reservations(std::exchange(report.reservations, {})) {
  outside.reserve(report.outside.size());
  for (auto& o : report.outside) outside.emplace_back(std::move(o));
  report.outside.clear();
}

namespace {

template <typename T>
const T* entry(const std::vector<T>* v, size_t i) {
  return v != nullptr && i < v->size() ? &(*v)[i] : nullptr;
}

}  // namespace

// One accessor: `expr` reads the field from `o`, a non-NULL `const OBJ*`.
#define PB_GET(type, fn, obj, fallback, expr) \
  type fn(const obj* o) { return o != nullptr ? static_cast<type>(expr) : (fallback); }
#define PB_STR(fn, obj, expr) PB_GET(const char*, fn, obj, "", (expr).c_str())

extern "C" {

// ---- leases ------------------------------------------------------------------------------

PB_GET(size_t, portbroker_lease_list_count, portbroker_lease_list, 0, o->leases.size())
const portbroker_lease* portbroker_lease_list_get(const portbroker_lease_list* l, size_t i) {
  return entry(l != nullptr ? &l->leases : nullptr, i);
}
void portbroker_lease_list_free(portbroker_lease_list* l) { delete l; }

PB_GET(uint64_t, portbroker_lease_id, portbroker_lease, 0, o->info.id)
PB_STR(portbroker_lease_name, portbroker_lease, o->info.name)
PB_GET(int, portbroker_lease_protocol, portbroker_lease, 0, o->info.protocol)
PB_STR(portbroker_lease_address, portbroker_lease, o->address)
PB_GET(uint16_t, portbroker_lease_port, portbroker_lease, 0, o->info.port)
PB_GET(int, portbroker_lease_mode, portbroker_lease, 0, o->info.mode)
PB_GET(int32_t, portbroker_lease_pid, portbroker_lease, 0, o->info.holder.pid)
PB_GET(uint32_t, portbroker_lease_uid, portbroker_lease, 0, o->info.holder.uid)
PB_GET(uint32_t, portbroker_lease_gid, portbroker_lease, 0, o->info.holder.gid)
PB_STR(portbroker_lease_comm, portbroker_lease, o->info.holder.comm)
PB_STR(portbroker_lease_cgroup, portbroker_lease, o->info.holder.cgroup)
PB_GET(uint64_t, portbroker_lease_session, portbroker_lease, 0, o->info.session)
PB_GET(int64_t, portbroker_lease_created_at_ms, portbroker_lease, 0, o->info.created_at_ms)
PB_STR(portbroker_lease_state, portbroker_lease, o->info.state)
PB_GET(uint32_t, portbroker_lease_linger_seconds, portbroker_lease, 0, o->info.linger_s)
PB_GET(int64_t, portbroker_lease_linger_until_ms, portbroker_lease, 0, o->info.linger_until_ms)
PB_STR(portbroker_lease_token, portbroker_lease, o->info.token)
PB_GET(int, portbroker_lease_no_copy, portbroker_lease, 0, o->info.no_copy ? 1 : 0)

// ---- status ------------------------------------------------------------------------------

PB_STR(portbroker_status_version, portbroker_status_info, o->status.version)
PB_GET(int32_t, portbroker_status_pid, portbroker_status_info, 0, o->status.pid)
PB_GET(int64_t, portbroker_status_started_at_ms, portbroker_status_info, 0, o->status.started_at_ms)
PB_GET(uint32_t, portbroker_status_sessions, portbroker_status_info, 0, o->status.sessions)
PB_GET(uint32_t, portbroker_status_leases, portbroker_status_info, 0, o->status.leases)
PB_GET(uint16_t, portbroker_status_pool_low, portbroker_status_info, 0, o->status.pool_low)
PB_GET(uint16_t, portbroker_status_pool_high, portbroker_status_info, 0, o->status.pool_high)
PB_GET(uint32_t, portbroker_status_open_fds, portbroker_status_info, 0, o->status.open_fds)
PB_STR(portbroker_status_socket_path, portbroker_status_info, o->status.socket_path)
void portbroker_status_info_free(portbroker_status_info* s) { delete s; }

// ---- who ---------------------------------------------------------------------------------

PB_GET(int, portbroker_who_protocol, portbroker_who_report, 0, o->report.protocol)
PB_GET(uint16_t, portbroker_who_port, portbroker_who_report, 0, o->report.port)
PB_GET(const portbroker_lease_list*, portbroker_who_leases, portbroker_who_report, nullptr,
       &o->leases)
PB_GET(size_t, portbroker_who_outside_count, portbroker_who_report, 0, o->outside.size())
const portbroker_outside_holder* portbroker_who_outside_get(const portbroker_who_report* w,
                                                            size_t i) {
  return entry(w != nullptr ? &w->outside : nullptr, i);
}
PB_GET(const portbroker_reservation_list*, portbroker_who_reservations, portbroker_who_report,
       nullptr, &o->reservations)
PB_GET(size_t, portbroker_who_pool_count, portbroker_who_report, 0, o->report.pools.size())
const char* portbroker_who_pool_get(const portbroker_who_report* w, size_t i) {
  const std::string* pool = entry(w != nullptr ? &w->report.pools : nullptr, i);
  return pool != nullptr ? pool->c_str() : nullptr;
}
PB_GET(int, portbroker_who_in_ephemeral_range, portbroker_who_report, 0,
       o->report.in_ephemeral_range)
PB_GET(int, portbroker_who_guarded, portbroker_who_report, 0, o->report.guarded)
PB_GET(int, portbroker_who_held, portbroker_who_report, 0, o->report.held)
void portbroker_who_report_free(portbroker_who_report* w) { delete w; }

PB_GET(int, portbroker_outside_protocol, portbroker_outside_holder, 0, o->info.protocol)
PB_STR(portbroker_outside_address, portbroker_outside_holder, o->address)
PB_GET(uint16_t, portbroker_outside_port, portbroker_outside_holder, 0, o->info.port)
PB_STR(portbroker_outside_state, portbroker_outside_holder, o->info.state)
PB_GET(int32_t, portbroker_outside_pid, portbroker_outside_holder, 0, o->info.pid)
PB_GET(uint32_t, portbroker_outside_uid, portbroker_outside_holder, 0, o->info.uid)
PB_STR(portbroker_outside_comm, portbroker_outside_holder, o->info.comm)

// ---- check -------------------------------------------------------------------------------

PB_GET(size_t, portbroker_problem_list_count, portbroker_problem_list, 0, o->problems.size())
const char* portbroker_problem_kind(const portbroker_problem_list* p, size_t i) {
  const auto* problem = entry(p != nullptr ? &p->problems : nullptr, i);
  return problem != nullptr ? problem->kind.c_str() : nullptr;
}
const char* portbroker_problem_message(const portbroker_problem_list* p, size_t i) {
  const auto* problem = entry(p != nullptr ? &p->problems : nullptr, i);
  return problem != nullptr ? problem->message.c_str() : nullptr;
}
void portbroker_problem_list_free(portbroker_problem_list* p) { delete p; }

// ---- reservations and reload -------------------------------------------------------------

PB_GET(size_t, portbroker_reservation_list_count, portbroker_reservation_list, 0,
       o->reservations.size())
const portbroker_reservation* portbroker_reservation_list_get(const portbroker_reservation_list* l,
                                                              size_t i) {
  return entry(l != nullptr ? &l->reservations : nullptr, i);
}
void portbroker_reservation_list_free(portbroker_reservation_list* l) { delete l; }

PB_STR(portbroker_reservation_name, portbroker_reservation, o->info.name)
PB_STR(portbroker_reservation_target, portbroker_reservation, o->info.target)
PB_GET(int, portbroker_reservation_tcp, portbroker_reservation, 0, o->info.tcp)
PB_GET(int, portbroker_reservation_udp, portbroker_reservation, 0, o->info.udp)
const char* portbroker_reservation_address(const portbroker_reservation* r) {
  return r != nullptr && r->info.address ? r->address.c_str() : nullptr;
}
PB_GET(uint16_t, portbroker_reservation_port_first, portbroker_reservation, 0, o->info.port_first)
PB_GET(uint16_t, portbroker_reservation_port_last, portbroker_reservation, 0, o->info.port_last)
PB_GET(int, portbroker_reservation_hold, portbroker_reservation, 0, o->info.hold)
PB_STR(portbroker_reservation_origin, portbroker_reservation, o->info.origin)
PB_STR(portbroker_reservation_principals, portbroker_reservation, o->info.principals)

PB_STR(portbroker_reload_source, portbroker_reload_report, o->report.source)
PB_GET(size_t, portbroker_reload_refused_count, portbroker_reload_report, 0,
       o->report.refused_leases.size())
const char* portbroker_reload_refused_get(const portbroker_reload_report* r, size_t i) {
  const std::string* line = entry(r != nullptr ? &r->report.refused_leases : nullptr, i);
  return line != nullptr ? line->c_str() : nullptr;
}
void portbroker_reload_report_free(portbroker_reload_report* r) { delete r; }

// ---- events ------------------------------------------------------------------------------

PB_GET(uint64_t, portbroker_event_seq, portbroker_event, 0, o->event.seq)
PB_GET(int64_t, portbroker_event_time_ms, portbroker_event, 0, o->event.time_ms)
PB_STR(portbroker_event_kind, portbroker_event, o->event.kind)
PB_GET(uint64_t, portbroker_event_lease, portbroker_event, 0, o->event.lease)
PB_STR(portbroker_event_name, portbroker_event, o->event.name)
PB_STR(portbroker_event_endpoint, portbroker_event, o->event.endpoint)
PB_GET(uint16_t, portbroker_event_port, portbroker_event, 0, o->event.port)
PB_STR(portbroker_event_mode, portbroker_event, o->event.mode)
PB_GET(int32_t, portbroker_event_pid, portbroker_event, 0, o->event.pid)
PB_GET(uint32_t, portbroker_event_uid, portbroker_event, 0, o->event.uid)
PB_STR(portbroker_event_comm, portbroker_event, o->event.comm)
PB_GET(int, portbroker_event_code, portbroker_event, 0, o->event.code)
PB_STR(portbroker_event_reason, portbroker_event, o->event.reason)
PB_STR(portbroker_event_conflicts_with, portbroker_event, o->event.conflicts_with)
PB_GET(uint64_t, portbroker_event_count, portbroker_event, 0, o->event.count)
void portbroker_event_free(portbroker_event* e) { delete e; }

PB_STR(portbroker_event_stream_last_error, portbroker_event_stream, o->last_error)
PB_GET(int, portbroker_event_stream_fd, portbroker_event_stream, -1, o->stream.fd())
PB_GET(uint64_t, portbroker_event_stream_subscribed_at, portbroker_event_stream, 0,
       o->stream.subscribed_at())
PB_GET(uint64_t, portbroker_event_stream_last_seq, portbroker_event_stream, 0, o->stream.last_seq())
void portbroker_event_stream_close(portbroker_event_stream* s) { delete s; }

}  // extern "C"
