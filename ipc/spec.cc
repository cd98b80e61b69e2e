#include "portbroker/spec.hpp"

#include <arpa/inet.h>
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>

namespace portbroker {

const char* protocol_name(Protocol p) { return p == Protocol::kUdp ? "udp" : "tcp"; }

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kShared:
      return "shared";
    case Mode::kReuseport:
      return "reuseport";
    case Mode::kExclusive:
      break;
  }
  return "exclusive";
}

Result<IpAddress> IpAddress::parse(std::string_view text) {
  IpAddress a;
  std::string s(text);
  // Brackets are IPv6 syntax (RFC 3986); "[127.0.0.1]" is a typo, not an address.
  bool bracketed = s.size() >= 2 && s.front() == '[' && s.back() == ']';
  if (bracketed) s = s.substr(1, s.size() - 2);
  if (s.empty()) return make_error(ErrorCode::kBadRequest, "address is empty");
  if (s.find(':') != std::string::npos) {
    if (::inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
      a.family = AF_INET6;
      return a;
    }
  } else if (!bracketed && ::inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
    a.family = AF_INET;
    return a;
  }
  return make_error(ErrorCode::kBadRequest,
                    "'" + std::string(text) + "' is not an IPv4 or IPv6 address");
}

bool IpAddress::is_any() const {
  size_t n = family == AF_INET ? 4 : 16;
  for (size_t i = 0; i < n; ++i)
    if (bytes[i] != 0) return false;
  return true;
}

namespace {

// The address as inet_ntop writes it, into buf (INET6_ADDRSTRLEN bytes); its length. A dotted
// quad is written here: glibc's inet_ntop runs sprintf for it, which showed in the daemon's
// profile (every lease change formats its endpoint for the event stream).
size_t put_address(char* buf, const IpAddress& a) {
  if (a.family == AF_INET) {
    char* out = buf;
    for (size_t i = 0; i < 4; ++i) {
      if (i != 0) *out++ = '.';
      out = std::to_chars(out, out + 3, a.bytes[i]).ptr;
    }
    return static_cast<size_t>(out - buf);
  }
  if (a.family != AF_INET6 ||
      ::inet_ntop(AF_INET6, a.bytes.data(), buf, INET6_ADDRSTRLEN) == nullptr) {
    buf[0] = '?';
    return 1;
  }
  return std::strlen(buf);
}

}  // namespace

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  return std::string(buf, put_address(buf, *this));
}

std::string format_endpoint(Protocol p, const IpAddress& a, uint16_t port) {
  // "udp [" + address + "]:" + port, in one allocation.
  char buf[3 + 2 + INET6_ADDRSTRLEN + 2 + 5];
  char* out = buf;
  out = std::copy_n(protocol_name(p), 3, out);
  *out++ = ' ';
  const bool v6 = a.family == AF_INET6;
  if (v6) *out++ = '[';
  out += put_address(out, a);
  if (v6) *out++ = ']';
  *out++ = ':';
  out = std::to_chars(out, buf + sizeof(buf), port).ptr;
  return std::string(buf, static_cast<size_t>(out - buf));
}

std::optional<uint64_t> parse_decimal(std::string_view text, uint64_t max) {
  // For an unsigned type from_chars takes digits only: no sign, blank or base prefix.
  uint64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || p != end || v > max) return std::nullopt;
  return v;
}

std::optional<uint16_t> parse_port(std::string_view text) {
  auto v = parse_decimal(text, 65535);
  if (!v) return std::nullopt;
  return static_cast<uint16_t>(*v);
}

std::string PortRange::to_string() const {
  return first == last ? std::to_string(first) : std::to_string(first) + "-" + std::to_string(last);
}

Result<PortRange> parse_port_range(std::string_view text) {
  size_t dash = text.find('-');
  std::string_view a = text.substr(0, dash);
  std::string_view b = dash == std::string_view::npos ? a : text.substr(dash + 1);
  // Read as any number first, so that 70000 is named out of range rather than not a port.
  auto first = parse_decimal(a), last = parse_decimal(b);
  if (!first || !last) {
    return make_error(
        ErrorCode::kBadRequest,
        "'" + std::string(text) + "' is not a port or port range (PORT or FIRST-LAST)");
  }
  for (uint64_t p : {*first, *last}) {
    if (p < 1 || p > 65535) {
      return make_error(ErrorCode::kBadRequest,
                        "port " + std::to_string(p) + " is out of range (1-65535)");
    }
  }
  if (*first > *last) {
    return make_error(ErrorCode::kBadRequest,
                      "port range '" + std::string(text) + "' is inverted (first > last)");
  }
  return PortRange{static_cast<uint16_t>(*first), static_cast<uint16_t>(*last)};
}

Result<ReservationTarget> ReservationTarget::parse(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return make_error(ErrorCode::kBadRequest,
                      "invalid reservation target '" + std::string(text) + "': " + why);
  };
  // The address may be IPv6, colons and all: the protocol ends at the first colon, the ports
  // start after the last.
  size_t first = text.find(':'), last = text.rfind(':');
  if (first == std::string_view::npos || first == last) {
    return bad("expected PROTO:ADDRESS:PORT[-PORT]");
  }
  std::string_view proto = text.substr(0, first);
  std::string_view addr = text.substr(first + 1, last - first - 1);
  ReservationTarget t;
  t.tcp = proto == "tcp" || proto == "both";
  t.udp = proto == "udp" || proto == "both";
  if (!t.tcp && !t.udp) {
    return bad("unknown protocol '" + std::string(proto) + "' (tcp, udp or both)");
  }
  if (addr != "any" && addr != "*") {
    auto a = IpAddress::parse(addr);
    if (!a) return bad(a.error().message);
    t.address = a.value();
  }
  auto ports = parse_port_range(text.substr(last + 1));
  if (!ports) return bad(ports.error().message);
  t.ports = ports.value();
  return t;
}

namespace {

Error spec_error(std::string_view spec, const std::string& why) {
  return make_error(ErrorCode::kBadRequest,
                    "invalid socket spec '" + std::string(spec) + "': " + why);
}

std::optional<long> parse_int(std::string_view s, long lo, long hi) {
  auto v = parse_decimal(s, static_cast<uint64_t>(hi));
  if (!v || static_cast<long>(*v) < lo) return std::nullopt;
  return static_cast<long>(*v);
}

std::optional<bool> parse_bool(std::string_view s) {
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  return std::nullopt;
}

bool valid_name(std::string_view name) {
  // LISTEN_FDNAMES is colon-separated and systemd limits names to 255 printable characters.
  if (name.empty() || name.size() > 255) return false;
  for (char c : name) {
    if (c <= ' ' || c >= 127 || c == ':' || c == '=' || c == ',') return false;
  }
  return true;
}

struct IntOption {
  std::string_view key;
  long lo, hi;
  std::optional<int> SocketOptions::*field;
};
constexpr long kMaxInt = std::numeric_limits<int>::max();
// One table for the text parser and the wire validator, so the two can never disagree.
constexpr IntOption kIntOptions[] = {
    {"backlog", 0, 65535, &SocketOptions::backlog},
    {"defer_accept", 0, 3600, &SocketOptions::defer_accept},
    {"fastopen", 0, 65535, &SocketOptions::fastopen},
    {"rcvbuf", 1, kMaxInt, &SocketOptions::rcvbuf},
    {"sndbuf", 1, kMaxInt, &SocketOptions::sndbuf},
};

std::string int_range_error(const IntOption& opt, std::string_view got) {
  return "option '" + std::string(opt.key) + "' takes a whole number from " +
         std::to_string(opt.lo) + " to " + std::to_string(opt.hi) + ", not '" + std::string(got) +
         "'";
}

std::string device_error(std::string_view device) {
  if (device.empty() || device.size() >= IFNAMSIZ || device.find('/') != std::string_view::npos ||
      device.find(',') != std::string_view::npos) {
    return "option 'device' takes an interface name of 1 to " + std::to_string(IFNAMSIZ - 1) +
           " characters";
  }
  return {};
}

constexpr long kMaxLingerSeconds = 3600;

std::string token_error(std::string_view token) {
  bool hex = std::all_of(token.begin(), token.end(),
                         [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  if (token.size() != 32 || !hex) return "option 'token' takes the 32 hex digits a lease was given";
  return {};
}

const char* kNameRule = "' must be 1 to 255 printable characters without ':', '=', ','";

// The rules that involve more than one field, or that the wire form must re-check.
std::string spec_problem(const SocketSpec& spec) {
  if (!spec.name.empty() && !valid_name(spec.name)) return "name '" + spec.name + kNameRule;
  const auto& o = spec.options;
  for (const IntOption& opt : kIntOptions) {
    const auto& v = o.*opt.field;
    if (v && (*v < opt.lo || *v > opt.hi)) return int_range_error(opt, std::to_string(*v));
  }
  if (!o.device.empty()) {
    if (auto why = device_error(o.device); !why.empty()) return why;
  }
  if (spec.protocol == Protocol::kUdp &&
      (o.backlog || o.defer_accept || o.fastopen || o.keepalive)) {
    return "backlog, defer_accept, fastopen and keepalive are TCP options";
  }
  if (o.v6only && spec.address.family != AF_INET6) return "v6only applies to IPv6 addresses only";
  if (spec.linger > kMaxLingerSeconds) {
    return "option 'linger' takes a whole number of seconds from 0 to " +
           std::to_string(kMaxLingerSeconds);
  }
  if (!spec.token.empty()) {
    if (auto why = token_error(spec.token); !why.empty()) return why;
  }
  return {};
}

// Applies one `key[=value]` option; returns an error text, empty on success.
std::string apply_option(SocketSpec& spec, std::string_view key,
                         std::optional<std::string_view> value, bool& mode_seen) {
  auto& o = spec.options;
  auto want_bool = [&](std::optional<bool>& field) -> std::string {
    if (!value) {
      field = true;
      return {};
    }
    auto v = parse_bool(*value);
    if (!v)
      return "option '" + std::string(key) + "' takes true or false, not '" + std::string(*value) +
             "'";
    field = *v;
    return {};
  };
  auto set_mode = [&](Mode m) -> std::string {
    if (value) return "mode '" + std::string(key) + "' takes no value";
    if (mode_seen) return "more than one mode given";
    mode_seen = true;
    spec.mode = m;
    return {};
  };
  if (key == "exclusive") return set_mode(Mode::kExclusive);
  if (key == "shared") return set_mode(Mode::kShared);
  if (key == "reuseport") return set_mode(Mode::kReuseport);
  if (key == "v6only") return want_bool(o.v6only);
  if (key == "reuseaddr") return want_bool(o.reuseaddr);
  if (key == "freebind") return want_bool(o.freebind);
  if (key == "keepalive") return want_bool(o.keepalive);
  for (const IntOption& opt : kIntOptions) {
    if (key != opt.key) continue;
    if (!value) return "option '" + std::string(key) + "' needs a value";
    auto v = parse_int(*value, opt.lo, opt.hi);
    if (!v) return int_range_error(opt, *value);
    o.*opt.field = static_cast<int>(*v);
    return {};
  }
  if (key == "device") {
    if (auto why = device_error(value.value_or("")); !why.empty()) return why;
    o.device = std::string(*value);
    return {};
  }
  if (key == "linger") {
    auto v = value ? parse_int(*value, 0, kMaxLingerSeconds) : std::nullopt;
    if (!v) {
      return "option 'linger' takes a whole number of seconds from 0 to " +
             std::to_string(kMaxLingerSeconds);
    }
    spec.linger = static_cast<uint32_t>(*v);
    return {};
  }
  if (key == "token") {
    if (auto why = token_error(value.value_or("")); !why.empty()) return why;
    spec.token = std::string(*value);
    return {};
  }
  return "unknown option '" + std::string(key) +
         "' (known: exclusive, shared, reuseport, backlog, v6only, reuseaddr, freebind, "
         "defer_accept, fastopen, keepalive, rcvbuf, sndbuf, device, linger, token)";
}

}  // namespace

Result<SocketSpec> parse_socket_spec(std::string_view text) {
  SocketSpec spec;
  std::string_view rest = text;
  if (rest.size() > 1024) return spec_error(text.substr(0, 64), "longer than 1024 characters");
  size_t comma = rest.find(',');
  std::string_view head = rest.substr(0, comma);
  std::string_view opts =
      comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);

  if (size_t eq = head.find('='); eq != std::string_view::npos) {
    std::string_view name = head.substr(0, eq);
    if (!valid_name(name)) return spec_error(text, "name '" + std::string(name) + kNameRule);
    spec.name = std::string(name);
    head = head.substr(eq + 1);
  }

  size_t c1 = head.find(':');
  size_t c2 = head.rfind(':');
  if (c1 == std::string_view::npos || c1 == c2) {
    return spec_error(text, "expected PROTO:ADDRESS:PORT, e.g. tcp:0.0.0.0:8080");
  }
  std::string_view proto = head.substr(0, c1);
  std::string_view addr = head.substr(c1 + 1, c2 - c1 - 1);
  std::string_view port = head.substr(c2 + 1);
  if (proto == "tcp") {
    spec.protocol = Protocol::kTcp;
  } else if (proto == "udp") {
    spec.protocol = Protocol::kUdp;
  } else {
    return spec_error(text, "protocol '" + std::string(proto) + "' is not tcp or udp");
  }
  if (addr.find(':') != std::string_view::npos && (addr.front() != '[' || addr.back() != ']')) {
    return spec_error(text, "write an IPv6 address in brackets, e.g. tcp:[::1]:8080");
  }
  auto ip = IpAddress::parse(addr);
  if (!ip) return spec_error(text, ip.error().message);
  spec.address = *ip;
  auto p = parse_port(port);
  if (!p)
    return spec_error(text, "port '" + std::string(port) + "' is not a number from 0 to 65535");
  spec.port = *p;

  bool mode_seen = false;
  // Every comma introduces an option, so a trailing comma is an empty option, as ",," is.
  bool more = comma != std::string_view::npos;
  while (more) {
    size_t next = opts.find(',');
    std::string_view item = opts.substr(0, next);
    more = next != std::string_view::npos;
    if (more) opts = opts.substr(next + 1);
    if (item.empty()) return spec_error(text, "empty option");
    std::optional<std::string_view> value;
    std::string_view key = item;
    if (size_t eq = item.find('='); eq != std::string_view::npos) {
      key = item.substr(0, eq);
      value = item.substr(eq + 1);
    }
    if (auto why = apply_option(spec, key, value, mode_seen); !why.empty())
      return spec_error(text, why);
  }
  if (auto why = spec_problem(spec); !why.empty()) return spec_error(text, why);
  return spec;
}

Result<void> validate_socket_spec(const SocketSpec& spec) {
  if (spec.address.family != AF_INET && spec.address.family != AF_INET6) {
    return make_error(ErrorCode::kBadRequest, "the address is neither IPv4 nor IPv6");
  }
  if (auto why = spec_problem(spec); !why.empty()) {
    return make_error(ErrorCode::kInvalidOption,
                      "invalid socket request for " +
                          format_endpoint(spec.protocol, spec.address, spec.port) + ": " + why);
  }
  return {};
}

std::string format_socket_spec(const SocketSpec& spec) {
  std::string out;
  if (!spec.name.empty()) out += spec.name + "=";
  std::string addr = spec.address.to_string();
  if (spec.address.family == AF_INET6) addr = "[" + addr + "]";
  out += std::string(protocol_name(spec.protocol)) + ":" + addr + ":" + std::to_string(spec.port);
  if (spec.mode != Mode::kExclusive) out += std::string(",") + mode_name(spec.mode);
  const auto& o = spec.options;
  auto b = [](bool v) { return v ? "true" : "false"; };
  if (o.backlog) out += ",backlog=" + std::to_string(*o.backlog);
  if (o.v6only) out += std::string(",v6only=") + b(*o.v6only);
  if (o.reuseaddr) out += std::string(",reuseaddr=") + b(*o.reuseaddr);
  if (o.freebind) out += std::string(",freebind=") + b(*o.freebind);
  if (o.defer_accept) out += ",defer_accept=" + std::to_string(*o.defer_accept);
  if (o.fastopen) out += ",fastopen=" + std::to_string(*o.fastopen);
  if (o.keepalive) out += std::string(",keepalive=") + b(*o.keepalive);
  if (o.rcvbuf) out += ",rcvbuf=" + std::to_string(*o.rcvbuf);
  if (o.sndbuf) out += ",sndbuf=" + std::to_string(*o.sndbuf);
  if (!o.device.empty()) out += ",device=" + o.device;
  if (spec.linger != 0) out += ",linger=" + std::to_string(spec.linger);
  if (!spec.token.empty()) out += ",token=" + spec.token;
  return out;
}

}  // namespace portbroker
