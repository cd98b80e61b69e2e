// The codec of every request and reply body, both ways, between the shared vocabulary
// (<portbroker/info.hpp>, <portbroker/spec.hpp>) and the Cap'n Proto schema. Decoders validate
// every value (an unknown enumerant, an address of the wrong length, an inverted port range,
// a grant that does not match its request) and return an Error with kBadRequest; a structurally
// damaged record makes the Cap'n Proto reader itself throw kj::Exception, which the daemon and
// the client catch around each whole record.
//
// Requests that carry a bare scalar (release: a lease id, unreserve: a name, shutdown: one flag)
// or nothing (list, status, reload, check, reservations) have nothing to convert and no codec
// here.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"
#include "portbroker/info.hpp"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::ipc {

std::string text_from_wire(capnp::Text::Reader t);

// --- requests -----------------------------------------------------------------------------

void acquire_to_wire(std::span<const SocketSpec> specs, wire::Request::Builder out);
// 1 to kMaxSocketsPerRequest specs, each validated; an error names the bad socket's index.
Result<std::vector<SocketSpec>> acquire_from_wire(capnp::List<wire::SocketRequest>::Reader in);

struct EventsQuery {
  std::optional<uint64_t> since;  // replay the ring's events after this one
};
void events_query_to_wire(const EventsQuery& q, wire::EventsRequest::Builder out);
EventsQuery events_query_from_wire(wire::EventsRequest::Reader in);

struct WhoQuery {
  Protocol protocol = Protocol::kTcp;
  uint16_t port = 0;
};
void who_query_to_wire(const WhoQuery& query, wire::WhoRequest::Builder out);
Result<WhoQuery> who_query_from_wire(wire::WhoRequest::Reader in);

// A reserve request and each entry of a reservations or who reply.
void reservation_to_wire(const ReservationInfo& r, wire::Reservation::Builder out);
Result<ReservationInfo> reservation_from_wire(wire::Reservation::Reader in);

// --- replies ------------------------------------------------------------------------------

void error_to_wire(const Error& e, wire::Reply::Builder out);
// The error a reply carries; an empty message reads as the code's name.
Error error_from_wire(wire::Reply::Reader in);

// A lease's fields, borrowed from wherever their owner keeps them: the daemon encodes straight
// from its registry, with no LeaseInfo (and its strings) built for every granted socket. The
// texts are kj::StringPtr because Cap'n Proto copies them as NUL-terminated strings.
struct LeaseView {
  uint64_t id = 0;
  kj::StringPtr name;
  Protocol protocol = Protocol::kTcp;
  const IpAddress& address;
  uint16_t port = 0;
  Mode mode = Mode::kExclusive;
  const Holder& holder;
  kj::StringPtr comm;  // stands for holder.comm: the holder may have exec'd since it connected
  uint64_t session = 0;
  int64_t created_at_ms = 0;
  kj::StringPtr state;
  uint32_t linger_s = 0;
  int64_t linger_until_ms = 0;
  kj::StringPtr token;  // only to the holder, in the acquire reply
  bool no_copy = false;
};
LeaseView view_of(const LeaseInfo& lease);

void lease_to_wire(const LeaseView& lease, wire::LeaseInfo::Builder out);
void lease_to_wire(const LeaseInfo& lease, wire::LeaseInfo::Builder out);
Result<LeaseInfo> lease_from_wire(wire::LeaseInfo::Reader in);
void leases_to_wire(std::span<const LeaseInfo> leases, wire::Reply::Builder out);
Result<std::vector<LeaseInfo>> leases_from_wire(capnp::List<wire::LeaseInfo>::Reader in);

// The acquire reply: one grant per requested socket, in request order, each naming the index
// of its fd among the record's SCM_RIGHTS fds.
struct GrantedLease {
  LeaseInfo lease;
  uint32_t fd_index = 0;
};
void grant_to_wire(const LeaseView& lease, uint32_t fd_index, wire::Granted::Builder out);
// Checks the grants against the request: `asked` of them, as many fds received, every fd
// index in range and used once.
Result<std::vector<GrantedLease>> grants_from_wire(capnp::List<wire::Granted>::Reader in,
                                                   size_t asked, size_t fds_received);

void status_to_wire(const DaemonStatus& status, wire::Status::Builder out);
DaemonStatus status_from_wire(wire::Status::Reader in);

void reservations_to_wire(std::span<const ReservationInfo> reservations, wire::Reply::Builder out);
Result<std::vector<ReservationInfo>> reservations_from_wire(
    capnp::List<wire::Reservation>::Reader in);

void reload_to_wire(const ReloadReport& report, wire::ReloadResult::Builder out);
ReloadReport reload_from_wire(wire::ReloadResult::Reader in);

void outside_to_wire(const OutsideHolder& holder, wire::OutsideHolder::Builder out);
Result<OutsideHolder> outside_from_wire(wire::OutsideHolder::Reader in);

void who_to_wire(const WhoReport& report, wire::WhoReply::Builder out);
Result<WhoReport> who_from_wire(wire::WhoReply::Reader in);

void event_to_wire(const Event& e, wire::Event::Builder out);
Result<Event> event_from_wire(wire::Event::Reader in);

void problems_to_wire(std::span<const Problem> problems, wire::Reply::Builder out);
std::vector<Problem> problems_from_wire(capnp::List<wire::Problem>::Reader in);

}  // namespace portbroker::ipc
