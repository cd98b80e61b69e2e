// The lease journal's records, their binary framing, and the state they rebuild. Pure (no
// syscalls), so encoding, torn tails and replay are unit-tested and fuzzable in isolation;
// broker/os/journal_file.h keeps the records in the runtime directory.
//
// A restarted daemon rebuilds its registry, its held reservations and its guard from
// JournalState alone, so every record carries every field needed to rebuild them exactly: ids
// (the registry's one id counter is shared by bindings and leases), sessions, the holder pinned
// by its process start time, and the SO_COOKIE of the broker's copy of each socket, by which a
// socket taken back from the fd store or from its holder is recognised.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <variant>
#include <vector>

#include "broker/core/policy.h"  // PortRange
#include "broker/core/registry.h"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::broker::journal {

// The first record of the snapshot and of the log. The log belongs to the snapshot with the
// same generation; a log of an older generation was already folded into the snapshot by a
// compaction that was interrupted before it replaced the log.
struct Checkpoint {
  uint64_t generation = 0;
  uint64_t next_id = 1;       // the registry's next binding or lease id
  uint64_t next_session = 1;  // the daemon's next session id
};

struct LeaseGranted {
  uint64_t lease = 0;
  uint64_t binding = 0;  // a new binding, or one this lease joins (shared, reuseport)
  Endpoint endpoint;
  Mode mode = Mode::kExclusive;
  SocketOptions options;
  uint32_t owner_uid = 0;  // the binding's (Binding::owner_uid)
  std::string name;
  uint64_t session = 0;
  Holder holder;
  uint64_t holder_start_time = 0;  // /proc/PID/stat field 22: a pid alone may be recycled
  int64_t created_ms = 0;
  uint32_t linger_s = 0;
  std::string token;
  // SO_COOKIE of the broker's copy of the socket this lease uses (the binding's, or the
  // member's for reuseport); 0 when the broker keeps none.
  uint64_t cookie = 0;
};

struct LeaseEnded {
  uint64_t lease = 0;
};

struct LeaseLingering {
  uint64_t lease = 0;
  int64_t until_ms = 0;
};

// A lingering lease taken back by a new session, or a live lease whose session passed to
// another process (the first exited, leaving the connection to a child): same session, new
// holder.
struct LeaseReclaimed {
  uint64_t lease = 0;
  uint64_t session = 0;
  Holder holder;
  uint64_t holder_start_time = 0;
  uint64_t cookie = 0;  // the socket's new SO_COOKIE; 0: the socket did not change
};

// A socket the daemon binds and keeps for a held reservation. Adding one that is already held
// (same protocol, address and port) replaces it: that is how parking and unparking, or a
// re-bound socket, are recorded.
struct HoldAdded {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  bool v6only = false;
  bool parked = false;  // TCP: bound, not listening, while the port is leased elsewhere
  std::string reservation;
  uint64_t cookie = 0;
};

struct HoldRemoved {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
};

// The ports the daemon itself added to ip_local_reserved_ports (replaces the previous list).
struct GuardPorts {
  std::vector<PortRange> ports;
};

using Record = std::variant<Checkpoint, LeaseGranted, LeaseEnded, LeaseLingering, LeaseReclaimed,
                            HoldAdded, HoldRemoved, GuardPorts>;

// "lease granted", "hold removed"...: how messages name a record's kind.
const char* record_kind_name(const Record& r);

// Framing: u32 payload length, u32 crc32 of the payload (zlib's), payload; all little-endian. The
// payload is a kind byte and the fields in fixed-width little-endian, strings u32-length
// prefixed; a batch's is kind 9 and its records' own frames. A header of eight zero bytes
// (no frame is empty) marks the end of the records: what follows is unused space.
constexpr size_t kFrameHeaderBytes = 8;
// Far above the largest legitimate record (a guard list of every other port is 128 KiB), so a
// length field beyond it is corruption, not a torn write. A batch must fit too.
constexpr size_t kMaxRecordBytes = size_t{1} << 20;

// Appends `r`, framed, to `out`.
void encode_record(const Record& r, std::string& out);
std::string encode_record(const Record& r);
// Appends one frame holding every record of `records` (a multi-socket acquire must be recorded
// all or none): its checksum covers them all, so a torn batch is dropped whole. Decoding hands
// them out one by one, as if each were framed alone.
void encode_batch(std::span<const Record> records, std::string& out);

struct DecodeSummary {
  size_t records = 0;      // a batch counts its records
  size_t valid_bytes = 0;  // where the last whole record ends; truncate a log here
  size_t torn_bytes = 0;   // an incomplete last record (a write cut short), ignored
};

using RecordFn = std::function<Result<void>(Record&&, size_t offset)>;

// Calls `fn` with each record of `data` in order and the offset of its frame, up to the end of
// `data` or a zero header. A torn last frame, or bytes after a zero header, are not an error
// (see DecodeSummary::torn_bytes); a bad checksum, a malformed payload
// or an unknown record kind is, and names its offset. An error from `fn` stops decoding and is
// returned with the offset prefixed.
Result<DecodeSummary> decode_records(std::string_view data, const RecordFn& fn);

struct JournalLease {
  uint64_t id = 0;
  uint64_t binding = 0;
  std::string name;
  uint64_t session = 0;  // 0 while lingering
  Holder holder;
  uint64_t holder_start_time = 0;
  int64_t created_ms = 0;
  uint32_t linger_s = 0;
  std::string token;
  int64_t lingering_until_ms = 0;
  uint64_t cookie = 0;  // reuseport members' own socket; other modes use the binding's
};

struct JournalBinding {
  uint64_t id = 0;
  Endpoint endpoint;
  Mode mode = Mode::kExclusive;
  SocketOptions options;
  uint32_t owner_uid = 0;
  uint64_t cookie = 0;           // exclusive and shared: the one socket; reuseport: 0
  std::vector<uint64_t> leases;  // in the order they were granted
};

struct HoldKey {
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;
  bool operator<(const HoldKey& o) const {
    return std::tie(protocol, port, address) < std::tie(o.protocol, o.port, o.address);
  }
};

// What the records rebuild: applied in order, they give the live leases and their bindings,
// the held sockets, the guard ports and the next ids.
class JournalState {
 public:
  // Whether `r` applies to this state (ending a lease that is not live, joining a binding on
  // another endpoint... are errors), without changing anything.
  Result<void> check(const Record& r) const;
  // Whether `records` apply one after the other (a batch), without changing anything.
  Result<void> check(std::span<const Record> records) const;
  // check(), then the change; on error nothing changed.
  Result<void> apply(const Record& r);
  // The same, taking the record's strings instead of copying them.
  Result<void> apply(Record&& r);

  // The whole state as framed records, starting with Checkpoint{generation}: applying them to
  // an empty state gives this state again. Deterministic (ordered by id and endpoint), so two
  // states are equal exactly when their snapshots are.
  std::string snapshot(uint64_t generation) const;

  const std::map<uint64_t, JournalLease>& leases() const { return leases_; }
  const std::map<uint64_t, JournalBinding>& bindings() const { return bindings_; }
  const std::map<HoldKey, HoldAdded>& holds() const { return holds_; }
  const std::vector<PortRange>& guard_ports() const { return guard_ports_; }
  uint64_t next_id() const { return next_id_; }
  uint64_t next_session() const { return next_session_; }
  // The generation of the last Checkpoint applied.
  uint64_t generation() const { return generation_; }

  bool operator==(const JournalState& o) const { return snapshot(0) == o.snapshot(0); }

 private:
  // Each applies one record that check() accepted.
  void change(const Checkpoint& r);
  void change(const LeaseGranted& r) { change(LeaseGranted(r)); }
  void change(LeaseGranted&& r);
  void change(const LeaseEnded& r);
  void change(const LeaseLingering& r);
  void change(const LeaseReclaimed& r);
  void change(const HoldAdded& r);
  void change(const HoldRemoved& r);
  void change(const GuardPorts& r);
  void raise_next_id(uint64_t id);
  void raise_next_session(uint64_t session);

  std::map<uint64_t, JournalLease> leases_;
  std::map<uint64_t, JournalBinding> bindings_;
  std::map<HoldKey, HoldAdded> holds_;
  std::vector<PortRange> guard_ports_;
  uint64_t next_id_ = 1;
  uint64_t next_session_ = 1;
  uint64_t generation_ = 0;
};

}  // namespace portbroker::broker::journal
