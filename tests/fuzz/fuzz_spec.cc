// The socket-spec grammar ([NAME=]PROTO:ADDRESS:PORT[,OPTION...]), the reservation target and
// the port range, as the CLI and the daemon read them. What parses must survive its own
// canonical form: format, parse again, format again, same text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "portbroker/spec.hpp"
#include "tests/fuzz/targets.h"

namespace pbfuzz {

int spec_one(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto spec = portbroker::parse_socket_spec(text); spec.ok()) {
    if (!portbroker::validate_socket_spec(*spec).ok()) std::abort();
    std::string canonical = portbroker::format_socket_spec(*spec);
    auto again = portbroker::parse_socket_spec(canonical);
    if (!again.ok() || portbroker::format_socket_spec(*again) != canonical) std::abort();
  }
  if (auto target = portbroker::ReservationTarget::parse(text); target.ok()) {
    if (!target->tcp && !target->udp) std::abort();
    if (target->ports.first > target->ports.last) std::abort();
  }
  if (auto range = portbroker::parse_port_range(text); range.ok()) {
    if (range->first > range->last) std::abort();
    auto again = portbroker::parse_port_range(range->to_string());
    if (!again.ok() || again->first != range->first || again->last != range->last) std::abort();
  }
  (void)portbroker::IpAddress::parse(text);
  return 0;
}

}  // namespace pbfuzz

// The unit tests replay the corpus and every regression input through spec_one (without libFuzzer).
#ifndef PB_FUZZ_NO_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return pbfuzz::spec_one(data, size);
}
#endif
