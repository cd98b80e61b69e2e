// A flood of requests from one process, for the fairness test and the flood benchmark: one
// request kept outstanding on each of many connections, the next sent as soon as the last
// reply is whole (every part of a reply in parts read). No test framework.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace pbtest::common {

enum class FloodKind { kCheck, kWho, kList, kStatus, kGarbage };
inline constexpr FloodKind kFloodKinds[] = {FloodKind::kCheck, FloodKind::kWho, FloodKind::kList,
                                            FloodKind::kStatus, FloodKind::kGarbage};
const char* flood_name(FloodKind kind);

struct Flood {
  long replies = 0;     // whole replies so far
  int connections = 0;  // connections flooding
  std::string error;    // why it stopped, when it failed
};

// Connects `conns` times to `path` and floods with `kind` (who: tcp port `who_port`) until
// `on_control` returns false; it is called whenever `control_fd` is readable. Returns false
// (with flood.error) when a connection could not be made or was lost.
bool run_flood(const std::string& path, FloodKind kind, int conns, uint16_t who_port,
               int control_fd, const std::function<bool(const Flood&)>& on_control, Flood& flood);

}  // namespace pbtest::common
