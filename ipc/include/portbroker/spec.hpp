// A socket request: what the CLI writes as `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`.
#pragma once

#include <array>
#include <cstdint>
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
