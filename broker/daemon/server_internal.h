// Server internals shared by server.cc, dispatch.cc and diag.cc (not part of any interface).
#pragma once

#include <capnp/message.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "broker/daemon/server.h"
#include "broker/os/sockdiag.h"
#include "ipc/codec.h"
#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"

namespace portbroker::broker {

// One reply under construction. The first segment lives in a reused, zeroed scratch buffer
// so that a typical reply allocates nothing.
struct Server::Reply {
  capnp::MallocMessageBuilder message;
  wire::Reply::Builder root;
  std::vector<int> fds;  // borrowed: owned by the LeaseService

  explicit Reply(kj::ArrayPtr<capnp::word> scratch)
      : message(scratch), root(message.initRoot<wire::Reply>()) {}
  explicit Reply(unsigned first_segment_words = capnp::SUGGESTED_FIRST_SEGMENT_WORDS)
      : message(first_segment_words), root(message.initRoot<wire::Reply>()) {}

  void error(const Error& e) {
    ipc::error_to_wire(e, root);
    fds.clear();
  }
};

struct Server::Session {
  Server* server = nullptr;
  uint64_t id = 0;
  UniqueFd conn;
  UniqueFd pidfd;
  Holder holder;
  Principal principal;  // what the policy sees: holder's ids plus supplementary groups
  uv_poll_t poll{};
  bool closing = false;
  bool spoke = false;            // has sent at least one record
  bool deferred = false;         // a reply is being prepared off the loop; read nothing meanwhile
  bool searching = false;        // looking for the process that now holds the connection
  bool queued = false;           // waits in its uid's queue (and is not polled meanwhile)
  bool drained = false;          // the last read found nothing more to read
  std::unique_ptr<Parts> parts;  // the rest of a reply too long for one record
  // Events (monitor.cc): asked for, starting once the reply saying so is out; then streaming.
  bool subscribing = false;
  bool subscriber = false;
  std::optional<uint64_t> events_since;
  uint64_t connected_at = 0;  // uv_now() at accept
  // A reply the socket had no room for; while it waits, the session is not read.
  kj::Array<capnp::word> pending;
  std::vector<UniqueFd> pending_fds;
};

// The search, off the loop, for the process that now holds a session's connection.
struct Server::HolderSearch {
  uv_work_t req{};
  Server* server = nullptr;
  uint64_t session = 0;
  pid_t gone = 0;
  UniqueFd conn;  // our own reference: the session may close meanwhile
  std::vector<SocketOwner> found;
};

// A request whose reply needs work off the loop.
struct Server::Deferred {
  uv_work_t req{};
  Server* server = nullptr;
  uint64_t session = 0;
  uint32_t uid = 0;
  std::function<void()> work;
  std::function<void(Session&, Reply&)> done;
};

// A reply too long for one record, sent in parts of as many items as fit: `fill` writes items
// [begin, end) of `total` (the reply's kind, its lists and any scalar fields) into a fresh
// reply. Each part is built in its own turn of the scheduler, so a long listing never holds
// the loop; `fill` must look its items up again (what ended meanwhile is left out).
struct Server::Parts {
  size_t total = 0;
  size_t next = 0;
  size_t guess = 64;  // items to try in the next part; adapts to the items' size
  std::function<void(wire::Reply::Builder root, size_t begin, size_t end)> fill;
};

// The lease as the wire shows it, borrowed from the registry: nothing is copied per grant.
// `comm` is the holder's command now; the view borrows it, so it must outlive the view.
ipc::LeaseView lease_view(const Lease& l, const Binding* b, const std::string& comm);
ReservationInfo reservation_info(const Reservation& r);

}  // namespace portbroker::broker
