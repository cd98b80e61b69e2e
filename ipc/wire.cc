#include "ipc/wire.h"

#include <sys/socket.h>

#include <cstring>

namespace portbroker::ipc {

capnp::Data::Reader address_bytes(const IpAddress& a) {
  return capnp::Data::Reader(a.bytes.data(), a.family == AF_INET ? 4 : 16);
}

Result<IpAddress> address_from_wire(capnp::Data::Reader data) {
  IpAddress a;
  if (data.size() == 4) {
    a.family = AF_INET;
  } else if (data.size() == 16) {
    a.family = AF_INET6;
  } else {
    return make_error(ErrorCode::kBadRequest,
                      "address must be 4 or 16 bytes, got " + std::to_string(data.size()));
  }
  std::memcpy(a.bytes.data(), data.begin(), data.size());
  return a;
}

wire::Protocol protocol_to_wire(Protocol p) {
  return p == Protocol::kUdp ? wire::Protocol::UDP : wire::Protocol::TCP;
}

wire::Mode mode_to_wire(Mode m) {
  switch (m) {
    case Mode::kShared:
      return wire::Mode::SHARED;
    case Mode::kReuseport:
      return wire::Mode::REUSEPORT;
    case Mode::kExclusive:
      break;
  }
  return wire::Mode::EXCLUSIVE;
}

Result<Protocol> protocol_from_wire(wire::Protocol p) {
  switch (p) {
    case wire::Protocol::TCP:
      return Protocol::kTcp;
    case wire::Protocol::UDP:
      return Protocol::kUdp;
  }
  return make_error(ErrorCode::kBadRequest,
                    "unknown protocol " + std::to_string(static_cast<int>(p)));
}

Result<Mode> mode_from_wire(wire::Mode m) {
  switch (m) {
    case wire::Mode::EXCLUSIVE:
      return Mode::kExclusive;
    case wire::Mode::SHARED:
      return Mode::kShared;
    case wire::Mode::REUSEPORT:
      return Mode::kReuseport;
  }
  return make_error(ErrorCode::kBadRequest, "unknown mode " + std::to_string(static_cast<int>(m)));
}

wire::ErrorCode error_code_to_wire(ErrorCode c) { return static_cast<wire::ErrorCode>(c); }

ErrorCode error_code_from_wire(wire::ErrorCode c) {
  auto v = static_cast<uint16_t>(c);
  if (v > static_cast<uint16_t>(ErrorCode::kInternal)) return ErrorCode::kInternal;
  return static_cast<ErrorCode>(v);
}

void spec_to_wire(const SocketSpec& spec, wire::SocketRequest::Builder out) {
  out.setName(spec.name);
  out.setProtocol(protocol_to_wire(spec.protocol));
  out.setAddress(address_bytes(spec.address));
  out.setPort(spec.port);
  out.setMode(mode_to_wire(spec.mode));
  const auto& o = spec.options;
  unsigned n = (o.backlog ? 1 : 0) + (o.v6only ? 1 : 0) + (o.reuseaddr ? 1 : 0) +
               (o.freebind ? 1 : 0) + (o.defer_accept ? 1 : 0) + (o.fastopen ? 1 : 0) +
               (o.keepalive ? 1 : 0) + (o.rcvbuf ? 1 : 0) + (o.sndbuf ? 1 : 0) +
               (o.device.empty() ? 0 : 1);
  auto list = out.initOptions(n);
  unsigned i = 0;
  if (o.backlog) list[i++].setBacklog(*o.backlog);
  if (o.v6only) list[i++].setV6only(*o.v6only);
  if (o.reuseaddr) list[i++].setReuseaddr(*o.reuseaddr);
  if (o.freebind) list[i++].setFreebind(*o.freebind);
  if (o.defer_accept) list[i++].setDeferAccept(*o.defer_accept);
  if (o.fastopen) list[i++].setFastopen(*o.fastopen);
  if (o.keepalive) list[i++].setKeepalive(*o.keepalive);
  if (o.rcvbuf) list[i++].setRcvbuf(*o.rcvbuf);
  if (o.sndbuf) list[i++].setSndbuf(*o.sndbuf);
  if (!o.device.empty()) list[i++].setDevice(o.device);
  out.setLinger(spec.linger);
  if (!spec.token.empty()) out.setToken(spec.token);
}

Result<SocketSpec> spec_from_wire(wire::SocketRequest::Reader in) {
  SocketSpec spec;
  auto name = in.getName();
  spec.name = std::string(name.cStr(), name.size());
  auto protocol = protocol_from_wire(in.getProtocol());
  if (!protocol) return protocol.error();
  spec.protocol = *protocol;
  auto addr = address_from_wire(in.getAddress());
  if (!addr) return addr.error();
  spec.address = *addr;
  spec.port = in.getPort();
  auto mode = mode_from_wire(in.getMode());
  if (!mode) return mode.error();
  spec.mode = *mode;
  auto& o = spec.options;
  for (auto opt : in.getOptions()) {
    switch (opt.which()) {
      case wire::SocketOption::BACKLOG:
        o.backlog = opt.getBacklog();
        break;
      case wire::SocketOption::V6ONLY:
        o.v6only = opt.getV6only();
        break;
      case wire::SocketOption::REUSEADDR:
        o.reuseaddr = opt.getReuseaddr();
        break;
      case wire::SocketOption::FREEBIND:
        o.freebind = opt.getFreebind();
        break;
      case wire::SocketOption::DEFER_ACCEPT:
        o.defer_accept = opt.getDeferAccept();
        break;
      case wire::SocketOption::FASTOPEN:
        o.fastopen = opt.getFastopen();
        break;
      case wire::SocketOption::KEEPALIVE:
        o.keepalive = opt.getKeepalive();
        break;
      case wire::SocketOption::RCVBUF:
        o.rcvbuf = opt.getRcvbuf();
        break;
      case wire::SocketOption::SNDBUF:
        o.sndbuf = opt.getSndbuf();
        break;
      case wire::SocketOption::DEVICE: {
        auto d = opt.getDevice();
        o.device = std::string(d.cStr(), d.size());
        break;
      }
      default:
        return make_error(ErrorCode::kInvalidOption,
                          "unknown socket option kind " +
                              std::to_string(static_cast<int>(opt.which())) +
                              " (client newer than daemon?)");
    }
  }
  spec.linger = in.getLinger();
  auto token = in.getToken();
  spec.token = std::string(token.cStr(), token.size());
  if (auto valid = validate_socket_spec(spec); !valid) return valid.error();
  return spec;
}

}  // namespace portbroker::ipc
