// Conversions between the public C++ types and their Cap'n Proto wire form. Everything read
// from the wire is validated here, so a hostile record becomes an Error, never a crash.
#pragma once

#include "ipc/portbroker.capnp.h"
#include "portbroker/result.hpp"
#include "portbroker/spec.hpp"

namespace portbroker::ipc {

void address_to_wire(const IpAddress& a, capnp::Data::Builder out);
capnp::Data::Reader address_bytes(const IpAddress& a);
Result<IpAddress> address_from_wire(capnp::Data::Reader data);

void spec_to_wire(const SocketSpec& spec, wire::SocketRequest::Builder out);
Result<SocketSpec> spec_from_wire(wire::SocketRequest::Reader in);

wire::Protocol protocol_to_wire(Protocol p);
Result<Protocol> protocol_from_wire(wire::Protocol p);
wire::Mode mode_to_wire(Mode m);
Result<Mode> mode_from_wire(wire::Mode m);
wire::ErrorCode error_code_to_wire(ErrorCode c);
// A code this side does not know (a newer peer) reads as kInternal: the message still says what.
ErrorCode error_code_from_wire(wire::ErrorCode c);

}  // namespace portbroker::ipc
