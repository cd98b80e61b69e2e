// A socket request: what the CLI writes as `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`; the
// reservation target `PROTO:ADDRESS:PORT[-PORT]`; and the numbers and ports inside both.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <portbroker/result.hpp>
#include <string>
#include <string_view>

namespace portbroker {

enum class Protocol : uint8_t { kTcp = 0, kUdp = 1 };
enum class Mode : uint8_t { kExclusive = 0, kShared = 1, kReuseport = 2 };

const char* protocol_name(Protocol p);
const char* mode_name(Mode m);

// An IPv4 or IPv6 address, kept in binary so that comparisons do not depend on spelling.
struct IpAddress {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};

  static Result<IpAddress> parse(std::string_view text);  // "127.0.0.1", "::1", "[::1]"
  bool is_any() const;
  std::string to_string() const;  // canonical, without brackets
  bool operator==(const IpAddress& o) const { return family == o.family && bytes == o.bytes; }
  bool operator<(const IpAddress& o) const {
    return family != o.family ? family < o.family : bytes < o.bytes;
  }
};

// A decimal whole number no larger than `max`: digits only (no sign, blank or "0x"), which is
// how every number in portbroker's texts is written.
std::optional<uint64_t> parse_decimal(std::string_view text,
                                      uint64_t max = std::numeric_limits<uint64_t>::max());

// A port number, 0 to 65535, written as parse_decimal reads it. Where 0 names no port (it asks
// for a pool port in a socket spec), the caller refuses it.
std::optional<uint16_t> parse_port(std::string_view text);

// An inclusive range of ports; one port is first == last.
struct PortRange {
  uint16_t first = 0;
  uint16_t last = 0;

  bool contains(uint16_t port) const { return first <= port && port <= last; }
  bool overlaps(const PortRange& o) const { return first <= o.last && o.first <= last; }
  size_t size() const { return size_t{last} - first + 1; }
  std::string to_string() const;  // "80" or "8000-8099"
  // Spelled out: the installed headers serve C++17 applications too.
  bool operator==(const PortRange& o) const { return first == o.first && last == o.last; }
  bool operator!=(const PortRange& o) const { return !(*this == o); }
};

// "80" or "8000-8099": 1..65535, first <= last, no spaces.
Result<PortRange> parse_port_range(std::string_view text);

// What `portbroker reserve` reserves: `PROTO:ADDRESS:PORT[-PORT]`, PROTO tcp, udp or both,
// ADDRESS an IPv4 address, a bracketed IPv6 address, or "any" (also "*"), e.g. `tcp:any:80`,
// `both:[::1]:5000-5010`. The client checks it before sending and the daemon parses it again,
// so both read it here.
struct ReservationTarget {
  bool tcp = false;
  bool udp = false;
  std::optional<IpAddress> address;  // none: any address
  PortRange ports;

  static Result<ReservationTarget> parse(std::string_view text);
};

struct SocketOptions {
  std::optional<int> backlog;       // listen() backlog (TCP)
  std::optional<bool> v6only;       // IPV6_V6ONLY
  std::optional<bool> reuseaddr;    // SO_REUSEADDR (default on for TCP, as every server does)
  std::optional<bool> freebind;     // IP_FREEBIND
  std::optional<int> defer_accept;  // TCP_DEFER_ACCEPT seconds
  std::optional<int> fastopen;      // TCP_FASTOPEN queue length
  std::optional<bool> keepalive;    // SO_KEEPALIVE
  std::optional<int> rcvbuf;        // SO_RCVBUF bytes
  std::optional<int> sndbuf;        // SO_SNDBUF bytes
  std::string device;               // SO_BINDTODEVICE; empty = none
};

struct SocketSpec {
  std::string name;  // optional label, passed on as LISTEN_FDNAMES by `portbroker exec`
  Protocol protocol = Protocol::kTcp;
  IpAddress address;
  uint16_t port = 0;  // 0: any free port from a dynamic pool
  Mode mode = Mode::kExclusive;
  SocketOptions options;
  // Seconds the daemon keeps the socket (its backlog still queueing) after the holder's
  // session ends without a release, so that a restarted holder can take it back. 0: none.
  uint32_t linger = 0;
  // Reclaims a lingering lease of another uid (the holder's own uid needs no token).
  std::string token;
};

// The process holding a lease, as the kernel attested it when it connected.
struct Holder {
  int pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string comm;
  std::string cgroup;
};

// Parses `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`, e.g. `http=tcp:0.0.0.0:80`,
// `tcp:[::]:0,reuseport,backlog=1024`, `udp:127.0.0.1:5353,shared`. Options: exclusive,
// shared, reuseport, backlog=N, v6only[=BOOL], reuseaddr[=BOOL], freebind[=BOOL],
// defer_accept=SECONDS, fastopen=N, keepalive[=BOOL], rcvbuf=BYTES, sndbuf=BYTES, device=IFNAME,
// linger=SECONDS, token=HEX.
Result<SocketSpec> parse_socket_spec(std::string_view text);

// The rules parse_socket_spec enforces, for a SocketSpec built another way (the daemon checks
// every request from the wire with it): name, option ranges, options that need TCP or IPv6.
Result<void> validate_socket_spec(const SocketSpec& spec);

// The inverse of parse_socket_spec (options in a fixed order).
std::string format_socket_spec(const SocketSpec& spec);

// "tcp 0.0.0.0:80" / "udp [::1]:53": how endpoints are named in messages.
std::string format_endpoint(Protocol p, const IpAddress& a, uint16_t port);

}  // namespace portbroker
