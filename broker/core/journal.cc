#include "broker/core/journal.h"

#include <libdeflate.h>
#include <netinet/in.h>  // AF_INET, AF_INET6: constants only

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <optional>
#include <type_traits>
#include <utility>

namespace portbroker::broker::journal {
namespace {

// Stable on disk: a journal written by one version is read by the next, so numbers are never
// reused (the variant's index is not used for the same reason).
enum class Kind : uint8_t {
  kCheckpoint = 1,
  kLeaseGranted = 2,
  kLeaseEnded = 3,
  kLeaseLingering = 4,
  kLeaseReclaimed = 5,
  kHoldAdded = 6,
  kHoldRemoved = 7,
  kGuardPorts = 8,
};
// Not a record: a frame holding several records' frames, written all or none.
constexpr uint8_t kBatchKind = 9;

template <typename T>
constexpr Kind kind_of() {
  if constexpr (std::is_same_v<T, Checkpoint>) {
    return Kind::kCheckpoint;
  } else if constexpr (std::is_same_v<T, LeaseGranted>) {
    return Kind::kLeaseGranted;
  } else if constexpr (std::is_same_v<T, LeaseEnded>) {
    return Kind::kLeaseEnded;
  } else if constexpr (std::is_same_v<T, LeaseLingering>) {
    return Kind::kLeaseLingering;
  } else if constexpr (std::is_same_v<T, LeaseReclaimed>) {
    return Kind::kLeaseReclaimed;
  } else if constexpr (std::is_same_v<T, HoldAdded>) {
    return Kind::kHoldAdded;
  } else if constexpr (std::is_same_v<T, HoldRemoved>) {
    return Kind::kHoldRemoved;
  } else {
    static_assert(std::is_same_v<T, GuardPorts>);
    return Kind::kGuardPorts;
  }
}

uint32_t crc_of(std::string_view payload) {
  return libdeflate_crc32(0, payload.data(), payload.size());
}

void store_le(char* p, uint64_t v, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t get_le(const char* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// Appends fields to `out`. Grows the string in steps and writes through a pointer: a record
// has some forty fields, and a std::string::append call for each cost more than the rest of
// an acquire's journaling. The string has its final size again when the Writer goes away.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out), pos_(out.size()) {}
  ~Writer() { out_.resize(pos_); }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void u8(uint8_t v) { le(v); }
  void u16(uint16_t v) { le(v); }
  void u32(uint32_t v) { le(v); }
  void u64(uint64_t v) { le(v); }
  void i32(int v) { u32(static_cast<uint32_t>(v)); }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void str(std::string_view s) {
    u32(static_cast<uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  void opt_int(const std::optional<int>& v) {
    boolean(v.has_value());
    i32(v.value_or(0));
  }
  // none, false, true: one byte.
  void opt_bool(const std::optional<bool>& v) { u8(!v ? 0 : (*v ? 2 : 1)); }
  void address(const IpAddress& a) {
    u8(static_cast<uint8_t>(a.family));
    bytes(a.bytes.data(), a.bytes.size());
  }
  void protocol(Protocol p) { u8(static_cast<uint8_t>(p)); }
  void endpoint(const Endpoint& e) {
    protocol(e.protocol);
    address(e.address);
    u16(e.port);
    boolean(e.dual_stack);
  }
  void options(const SocketOptions& o) {
    opt_int(o.backlog);
    opt_bool(o.v6only);
    opt_bool(o.reuseaddr);
    opt_bool(o.freebind);
    opt_int(o.defer_accept);
    opt_int(o.fastopen);
    opt_bool(o.keepalive);
    opt_int(o.rcvbuf);
    opt_int(o.sndbuf);
    str(o.device);
  }
  void holder(const Holder& h, uint64_t start_time) {
    i32(h.pid);
    u32(h.uid);
    u32(h.gid);
    str(h.comm);
    str(h.cgroup);
    u64(start_time);
  }

 private:
  static constexpr size_t kStep = 512;

  template <typename T>
  void le(T v) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(room(sizeof(T)), &v, sizeof(T));
    } else {
      store_le(room(sizeof(T)), v, sizeof(T));
    }
  }

  [[gnu::always_inline]] char* room(size_t n) {
    if (out_.size() - pos_ < n) [[unlikely]]
      grow(n);
    char* p = out_.data() + pos_;
    pos_ += n;
    return p;
  }
  [[gnu::noinline]] void grow(size_t n) { out_.resize(pos_ + n + kStep); }
  void bytes(const void* p, size_t n) {
    if (n != 0) std::memcpy(room(n), p, n);
  }

  std::string& out_;
  size_t pos_;
};

// Reads fields until the payload runs out; then every later read yields zero and ok() is
// false, so a record decoder checks once at the end instead of after every field.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == data_.size(); }

  uint64_t le(size_t bytes) {
    if (!ok_ || data_.size() - pos_ < bytes) {
      ok_ = false;
      return 0;
    }
    uint64_t v = get_le(data_.data() + pos_, bytes);
    pos_ += bytes;
    return v;
  }
  uint8_t u8() { return static_cast<uint8_t>(le(1)); }
  uint16_t u16() { return static_cast<uint16_t>(le(2)); }
  uint32_t u32() { return static_cast<uint32_t>(le(4)); }
  uint64_t u64() { return le(8); }
  int i32() { return static_cast<int>(u32()); }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  bool boolean() {
    uint8_t v = u8();
    if (v > 1) ok_ = false;
    return v == 1;
  }
  std::string str() {
    uint32_t n = u32();
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  std::optional<int> opt_int() {
    bool present = boolean();
    int v = i32();
    if (!present && v != 0) ok_ = false;  // one encoding per value: decoding never loses bytes
    return present ? std::optional<int>(v) : std::nullopt;
  }
  std::optional<bool> opt_bool() {
    uint8_t v = u8();
    if (v > 2) ok_ = false;
    return v == 0 ? std::nullopt : std::optional<bool>(v == 2);
  }
  IpAddress address() {
    IpAddress a;
    a.family = u8();
    if (a.family != 0 && a.family != AF_INET && a.family != AF_INET6) ok_ = false;
    for (auto& b : a.bytes) b = u8();
    return a;
  }
  Protocol protocol() {
    uint8_t p = u8();
    if (p > static_cast<uint8_t>(Protocol::kUdp)) ok_ = false;
    return static_cast<Protocol>(p);
  }
  Mode mode() {
    uint8_t m = u8();
    if (m > static_cast<uint8_t>(Mode::kReuseport)) ok_ = false;
    return static_cast<Mode>(m);
  }
  Endpoint endpoint() {
    Endpoint e;
    e.protocol = protocol();
    e.address = address();
    e.port = u16();
    e.dual_stack = boolean();
    return e;
  }
  SocketOptions options() {
    SocketOptions o;
    o.backlog = opt_int();
    o.v6only = opt_bool();
    o.reuseaddr = opt_bool();
    o.freebind = opt_bool();
    o.defer_accept = opt_int();
    o.fastopen = opt_int();
    o.keepalive = opt_bool();
    o.rcvbuf = opt_int();
    o.sndbuf = opt_int();
    o.device = str();
    return o;
  }
  void holder(Holder& h, uint64_t& start_time) {
    h.pid = i32();
    h.uid = u32();
    h.gid = u32();
    h.comm = str();
    h.cgroup = str();
    start_time = u64();
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

void write_fields(Writer& w, const Checkpoint& r) {
  w.u64(r.generation);
  w.u64(r.next_id);
  w.u64(r.next_session);
}
void write_fields(Writer& w, const LeaseGranted& r) {
  w.u64(r.lease);
  w.u64(r.binding);
  w.endpoint(r.endpoint);
  w.u8(static_cast<uint8_t>(r.mode));
  w.options(r.options);
  w.u32(r.owner_uid);
  w.str(r.name);
  w.u64(r.session);
  w.holder(r.holder, r.holder_start_time);
  w.i64(r.created_ms);
  w.u32(r.linger_s);
  w.str(r.token);
  w.u64(r.cookie);
}
void write_fields(Writer& w, const LeaseEnded& r) { w.u64(r.lease); }
void write_fields(Writer& w, const LeaseLingering& r) {
  w.u64(r.lease);
  w.i64(r.until_ms);
}
void write_fields(Writer& w, const LeaseReclaimed& r) {
  w.u64(r.lease);
  w.u64(r.session);
  w.holder(r.holder, r.holder_start_time);
  w.u64(r.cookie);
}
void write_fields(Writer& w, const HoldAdded& r) {
  w.protocol(r.protocol);
  w.address(r.address);
  w.u16(r.port);
  w.boolean(r.v6only);
  w.boolean(r.parked);
  w.str(r.reservation);
  w.u64(r.cookie);
}
void write_fields(Writer& w, const HoldRemoved& r) {
  w.protocol(r.protocol);
  w.address(r.address);
  w.u16(r.port);
}
void write_fields(Writer& w, const GuardPorts& r) {
  w.u32(static_cast<uint32_t>(r.ports.size()));
  for (const PortRange& p : r.ports) {
    w.u16(p.first);
    w.u16(p.last);
  }
}

void read_fields(Reader& in, Checkpoint& r) {
  r.generation = in.u64();
  r.next_id = in.u64();
  r.next_session = in.u64();
}
void read_fields(Reader& in, LeaseGranted& r) {
  r.lease = in.u64();
  r.binding = in.u64();
  r.endpoint = in.endpoint();
  r.mode = in.mode();
  r.options = in.options();
  r.owner_uid = in.u32();
  r.name = in.str();
  r.session = in.u64();
  in.holder(r.holder, r.holder_start_time);
  r.created_ms = in.i64();
  r.linger_s = in.u32();
  r.token = in.str();
  r.cookie = in.u64();
}
void read_fields(Reader& in, LeaseEnded& r) { r.lease = in.u64(); }
void read_fields(Reader& in, LeaseLingering& r) {
  r.lease = in.u64();
  r.until_ms = in.i64();
}
void read_fields(Reader& in, LeaseReclaimed& r) {
  r.lease = in.u64();
  r.session = in.u64();
  in.holder(r.holder, r.holder_start_time);
  r.cookie = in.u64();
}
void read_fields(Reader& in, HoldAdded& r) {
  r.protocol = in.protocol();
  r.address = in.address();
  r.port = in.u16();
  r.v6only = in.boolean();
  r.parked = in.boolean();
  r.reservation = in.str();
  r.cookie = in.u64();
}
void read_fields(Reader& in, HoldRemoved& r) {
  r.protocol = in.protocol();
  r.address = in.address();
  r.port = in.u16();
}
void read_fields(Reader& in, GuardPorts& r) {
  uint32_t n = in.u32();
  // Each range is 4 bytes: a count the payload cannot hold is malformed, not an allocation.
  for (uint32_t i = 0; i < n && in.ok(); ++i) {
    PortRange p;
    p.first = in.u16();
    p.last = in.u16();
    r.ports.push_back(p);
  }
}

template <typename T>
Result<Record> read_as(Reader& in) {
  T r;
  read_fields(in, r);
  if (!in.ok() || !in.at_end()) {
    return make_error(ErrorCode::kInternal,
                      std::string("malformed ") + record_kind_name(Record(r)) + " record");
  }
  return Record(std::move(r));
}

Result<Record> decode_payload(std::string_view payload) {
  Reader in(payload);
  uint8_t kind = in.u8();
  switch (static_cast<Kind>(kind)) {
    case Kind::kCheckpoint:
      return read_as<Checkpoint>(in);
    case Kind::kLeaseGranted:
      return read_as<LeaseGranted>(in);
    case Kind::kLeaseEnded:
      return read_as<LeaseEnded>(in);
    case Kind::kLeaseLingering:
      return read_as<LeaseLingering>(in);
    case Kind::kLeaseReclaimed:
      return read_as<LeaseReclaimed>(in);
    case Kind::kHoldAdded:
      return read_as<HoldAdded>(in);
    case Kind::kHoldRemoved:
      return read_as<HoldRemoved>(in);
    case Kind::kGuardPorts:
      return read_as<GuardPorts>(in);
  }
  return make_error(ErrorCode::kInternal, "unknown record kind " + std::to_string(kind));
}

bool endpoints_equal(const Endpoint& a, const Endpoint& b) {
  return a.protocol == b.protocol && a.address == b.address && a.port == b.port &&
         a.dual_stack == b.dual_stack;
}

Error state_error(std::string message) {
  return make_error(ErrorCode::kInternal, std::move(message));
}

std::string lease_name(uint64_t id) { return "lease " + std::to_string(id); }

HoldKey key_of(Protocol p, const IpAddress& a, uint16_t port) { return HoldKey{p, a, port}; }

}  // namespace

const char* record_kind_name(const Record& r) {
  static constexpr const char* kNames[] = {"checkpoint",      "lease granted",   "lease ended",
                                           "lease lingering", "lease reclaimed", "hold added",
                                           "hold removed",    "guard ports"};
  static_assert(std::size(kNames) == std::variant_size_v<Record>);
  return kNames[r.index()];
}

namespace {

// Appends one frame around the payload `fill` appends.
template <typename Fill>
void frame(std::string& out, Fill&& fill) {
  size_t start = out.size();
  // Most records fit in 256 bytes: one allocation rather than a few, growth still geometric.
  if (out.capacity() - start < 256) out.reserve(2 * out.capacity() + 256);
  out.append(kFrameHeaderBytes, '\0');
  fill();
  std::string_view payload(out.data() + start + kFrameHeaderBytes,
                           out.size() - start - kFrameHeaderBytes);
  store_le(out.data() + start, payload.size(), 4);
  store_le(out.data() + start + 4, crc_of(payload), 4);
}

// The frame at the start of `data`, whole and checked, or why not. `torn` is set (and no
// error returned) when `data` ends inside it.
Result<std::string_view> next_frame(std::string_view data, bool& torn) {
  torn = false;
  if (data.size() < kFrameHeaderBytes) {
    torn = true;
    return std::string_view();
  }
  size_t len = get_le(data.data(), 4);
  auto crc = static_cast<uint32_t>(get_le(data.data() + 4, 4));
  if (len == 0 || len > kMaxRecordBytes) {
    return make_error(ErrorCode::kInternal, "impossible record length " + std::to_string(len));
  }
  if (data.size() - kFrameHeaderBytes < len) {
    torn = true;
    return std::string_view();
  }
  std::string_view payload = data.substr(kFrameHeaderBytes, len);
  if (crc_of(payload) != crc) return make_error(ErrorCode::kInternal, "bad checksum");
  return payload;
}

// Hands the records of one checked payload to `fn`: the record, or each record of a batch.
Result<size_t> deliver(std::string_view payload, size_t offset, const RecordFn& fn) {
  if (static_cast<uint8_t>(payload[0]) != kBatchKind) {
    auto rec = decode_payload(payload);
    if (!rec) return rec.error();
    if (auto done = fn(std::move(rec).value(), offset); !done) return done.error();
    return size_t{1};
  }
  std::string_view inner = payload.substr(1);
  size_t count = 0;
  while (!inner.empty()) {
    bool torn = false;
    auto sub = next_frame(inner, torn);
    if (torn) return make_error(ErrorCode::kInternal, "malformed batch");
    if (!sub) return make_error(ErrorCode::kInternal, "in a batch: " + sub.error().message);
    if (static_cast<uint8_t>((*sub)[0]) == kBatchKind) {
      return make_error(ErrorCode::kInternal, "a batch inside a batch");
    }
    auto rec = decode_payload(*sub);
    if (!rec) return rec.error();
    if (auto done = fn(std::move(rec).value(), offset); !done) return done.error();
    inner.remove_prefix(kFrameHeaderBytes + sub->size());
    ++count;
  }
  if (count == 0) return make_error(ErrorCode::kInternal, "empty batch");
  return count;
}

}  // namespace

void encode_record(const Record& r, std::string& out) {
  frame(out, [&] {
    Writer w(out);
    std::visit(
        [&](const auto& rec) {
          w.u8(static_cast<uint8_t>(kind_of<std::decay_t<decltype(rec)>>()));
          write_fields(w, rec);
        },
        r);
  });
}

std::string encode_record(const Record& r) {
  std::string out;
  encode_record(r, out);
  return out;
}

void encode_batch(std::span<const Record> records, std::string& out) {
  frame(out, [&] {
    out.push_back(static_cast<char>(kBatchKind));
    for (const Record& r : records) encode_record(r, out);
  });
}

Result<DecodeSummary> decode_records(std::string_view data, const RecordFn& fn) {
  DecodeSummary summary;
  size_t off = 0;
  while (off < data.size()) {
    auto at = [&](const std::string& what) {
      return make_error(ErrorCode::kInternal, "at offset " + std::to_string(off) + ": " + what);
    };
    if (data.size() - off >= kFrameHeaderBytes &&
        data.substr(off, kFrameHeaderBytes).find_first_not_of('\0') == std::string_view::npos) {
      // A zero header (no frame has length 0) ends the records: the rest of a log is space
      // allocated ahead. Bytes there are an append that died before its header was stored.
      const size_t last = data.find_last_not_of('\0');
      if (last != std::string_view::npos && last > off) summary.torn_bytes = last + 1 - off;
      break;
    }
    bool torn = false;
    auto payload = next_frame(data.substr(off), torn);
    if (torn) {
      // Only the last write can have been cut short; one that stops mid-frame is torn.
      summary.torn_bytes = data.size() - off;
      break;
    }
    if (!payload) return at(payload.error().message);
    auto delivered = deliver(*payload, off, fn);
    if (!delivered) return at(delivered.error().message);
    summary.records += *delivered;
    off += kFrameHeaderBytes + payload->size();
  }
  summary.valid_bytes = off;
  return summary;
}

// --- JournalState --------------------------------------------------------------------------

namespace {

// One check per record kind (JournalState::check dispatches), on the state's public view.

Result<void> check_record(const JournalState&, const Checkpoint&) { return {}; }

Result<void> check_record(const JournalState& s, const LeaseGranted& g) {
  if (g.lease == 0 || g.binding == 0 || g.lease == g.binding) {
    return state_error("lease granted with ids " + std::to_string(g.lease) + " (lease) and " +
                       std::to_string(g.binding) + " (binding)");
  }
  if (s.leases().count(g.lease) != 0 || s.bindings().count(g.lease) != 0) {
    return state_error(lease_name(g.lease) + " granted, but its id is already in use");
  }
  if (s.leases().count(g.binding) != 0) {
    return state_error(lease_name(g.lease) + " granted on binding " + std::to_string(g.binding) +
                       ", which is a lease id");
  }
  auto b = s.bindings().find(g.binding);
  if (b == s.bindings().end()) return {};
  const JournalBinding& binding = b->second;
  const std::string joins =
      lease_name(g.lease) + " cannot join binding " + std::to_string(g.binding);
  if (binding.mode == Mode::kExclusive) return state_error(joins + ": it is exclusive");
  if (binding.mode != g.mode || !endpoints_equal(binding.endpoint, g.endpoint)) {
    return state_error(joins + ": another endpoint or mode");
  }
  if (g.mode != Mode::kReuseport && g.cookie != 0 && g.cookie != binding.cookie) {
    return state_error(joins + " with another socket (cookie " + std::to_string(g.cookie) +
                       ", not " + std::to_string(binding.cookie) + ")");
  }
  return {};
}

Result<const JournalLease*> live_lease(const JournalState& s, uint64_t id) {
  auto it = s.leases().find(id);
  if (it == s.leases().end()) return state_error(lease_name(id) + " is not live");
  return &it->second;
}

Result<void> check_record(const JournalState& s, const LeaseEnded& e) {
  if (auto l = live_lease(s, e.lease); !l) return l.error();
  return {};
}

Result<void> check_record(const JournalState& s, const LeaseLingering& r) {
  auto l = live_lease(s, r.lease);
  if (!l) return l.error();
  if ((*l)->lingering_until_ms != 0) {
    return state_error(lease_name(r.lease) + " is already lingering");
  }
  // 0 means "not lingering" in the registry.
  if (r.until_ms == 0) return state_error(lease_name(r.lease) + " lingers until time 0");
  return {};
}

Result<void> check_record(const JournalState& s, const LeaseReclaimed& r) {
  auto l = live_lease(s, r.lease);
  if (!l) return l.error();
  // A live lease "reclaimed" by its own session: the session passed to another process.
  if ((*l)->lingering_until_ms == 0 && (*l)->session != r.session) {
    return state_error(lease_name(r.lease) + " is reclaimed but was not lingering");
  }
  if (r.session == 0) return state_error(lease_name(r.lease) + " is reclaimed by session 0");
  return {};
}

Result<void> check_record(const JournalState&, const HoldAdded&) { return {}; }

Result<void> check_record(const JournalState& s, const HoldRemoved& h) {
  if (s.holds().count(key_of(h.protocol, h.address, h.port)) == 0) {
    return state_error("hold on " + format_endpoint(h.protocol, h.address, h.port) +
                       " removed, but it is not held");
  }
  return {};
}

Result<void> check_record(const JournalState&, const GuardPorts& p) {
  for (const PortRange& range : p.ports) {
    if (range.first > range.last) {
      return state_error("guard port range " + std::to_string(range.first) + "-" +
                         std::to_string(range.last) + " is reversed");
    }
  }
  return {};
}

}  // namespace

Result<void> JournalState::check(const Record& r) const {
  return std::visit([this](const auto& rec) { return check_record(*this, rec); }, r);
}

Result<void> JournalState::check(std::span<const Record> records) const {
  if (records.size() == 1) return check(records[0]);
  // Later records of a batch may depend on earlier ones (a join of a binding the batch
  // creates), so they are applied to a scratch state. It holds only what the records name:
  // the checks look at nothing else, and a batch stays cheap beside 15,000 leases.
  JournalState scratch;
  auto copy_binding = [&](uint64_t id) {
    if (auto b = bindings_.find(id); b != bindings_.end()) scratch.bindings_.insert(*b);
  };
  auto copy_id = [&](uint64_t id) {
    copy_binding(id);
    if (auto l = leases_.find(id); l != leases_.end()) {
      scratch.leases_.insert(*l);
      copy_binding(l->second.binding);
    }
  };
  auto copy_hold = [&](Protocol p, const IpAddress& a, uint16_t port) {
    if (auto h = holds_.find(key_of(p, a, port)); h != holds_.end()) scratch.holds_.insert(*h);
  };
  for (const Record& r : records) {
    if (const auto* g = std::get_if<LeaseGranted>(&r)) {
      copy_id(g->lease);
      copy_id(g->binding);
    } else if (const auto* e = std::get_if<LeaseEnded>(&r)) {
      copy_id(e->lease);
    } else if (const auto* l = std::get_if<LeaseLingering>(&r)) {
      copy_id(l->lease);
    } else if (const auto* c = std::get_if<LeaseReclaimed>(&r)) {
      copy_id(c->lease);
    } else if (const auto* h = std::get_if<HoldAdded>(&r)) {
      copy_hold(h->protocol, h->address, h->port);
    } else if (const auto* u = std::get_if<HoldRemoved>(&r)) {
      copy_hold(u->protocol, u->address, u->port);
    }
  }
  for (size_t i = 0; i < records.size(); ++i) {
    if (auto ok = scratch.apply(records[i]); !ok) {
      return state_error("record " + std::to_string(i + 1) + " of " +
                         std::to_string(records.size()) + ": " + ok.error().message);
    }
  }
  return {};
}

Result<void> JournalState::apply(const Record& r) {
  if (auto ok = check(r); !ok) return ok;
  std::visit([this](const auto& rec) { change(rec); }, r);
  return {};
}

Result<void> JournalState::apply(Record&& r) {
  if (auto ok = check(r); !ok) return ok;
  std::visit([this](auto&& rec) { change(std::move(rec)); }, std::move(r));
  return {};
}

void JournalState::raise_next_id(uint64_t id) { next_id_ = std::max(next_id_, id + 1); }
void JournalState::raise_next_session(uint64_t session) {
  next_session_ = std::max(next_session_, session + 1);
}

void JournalState::change(const Checkpoint& r) {
  generation_ = r.generation;
  next_id_ = std::max(next_id_, r.next_id);
  next_session_ = std::max(next_session_, r.next_session);
}

void JournalState::change(LeaseGranted&& r) {
  const bool reuseport = r.mode == Mode::kReuseport;
  auto [b, created] = bindings_.try_emplace(r.binding);
  JournalBinding& binding = b->second;
  if (created) {
    binding = JournalBinding{
        r.binding, r.endpoint, r.mode, std::move(r.options), r.owner_uid, reuseport ? 0 : r.cookie,
        {}};
  }
  binding.leases.push_back(r.lease);
  leases_.emplace(
      r.lease, JournalLease{r.lease, r.binding, std::move(r.name), r.session, std::move(r.holder),
                            r.holder_start_time, r.created_ms, r.linger_s, std::move(r.token), 0,
                            reuseport ? r.cookie : 0});
  raise_next_id(std::max(r.lease, r.binding));
  if (r.session != 0) raise_next_session(r.session);
}

void JournalState::change(const LeaseEnded& r) {
  auto it = leases_.find(r.lease);
  auto b = bindings_.find(it->second.binding);
  auto& members = b->second.leases;
  members.erase(std::remove(members.begin(), members.end(), r.lease), members.end());
  if (members.empty()) bindings_.erase(b);
  leases_.erase(it);
  raise_next_id(r.lease);
}

void JournalState::change(const LeaseLingering& r) {
  JournalLease& l = leases_.at(r.lease);
  l.session = 0;
  l.lingering_until_ms = r.until_ms;
}

void JournalState::change(const LeaseReclaimed& r) {
  JournalLease& l = leases_.at(r.lease);
  l.session = r.session;
  l.holder = r.holder;
  l.holder_start_time = r.holder_start_time;
  l.lingering_until_ms = 0;
  if (r.cookie != 0) {
    JournalBinding& b = bindings_.at(l.binding);
    (b.mode == Mode::kReuseport ? l.cookie : b.cookie) = r.cookie;
  }
  raise_next_session(r.session);
}

void JournalState::change(const HoldAdded& r) { holds_[key_of(r.protocol, r.address, r.port)] = r; }

void JournalState::change(const HoldRemoved& r) {
  holds_.erase(key_of(r.protocol, r.address, r.port));
}

void JournalState::change(const GuardPorts& r) { guard_ports_ = r.ports; }

std::string JournalState::snapshot(uint64_t generation) const {
  std::string out;
  encode_record(Checkpoint{generation, next_id_, next_session_}, out);
  if (!guard_ports_.empty()) encode_record(GuardPorts{guard_ports_}, out);
  for (const auto& [key, hold] : holds_) encode_record(hold, out);
  for (const auto& [id, l] : leases_) {
    const JournalBinding& b = bindings_.at(l.binding);
    encode_record(LeaseGranted{l.id, b.id, b.endpoint, b.mode, b.options, b.owner_uid, l.name,
                               l.session, l.holder, l.holder_start_time, l.created_ms, l.linger_s,
                               l.token, b.mode == Mode::kReuseport ? l.cookie : b.cookie},
                  out);
    if (l.lingering_until_ms != 0) encode_record(LeaseLingering{l.id, l.lingering_until_ms}, out);
  }
  return out;
}

}  // namespace portbroker::broker::journal
