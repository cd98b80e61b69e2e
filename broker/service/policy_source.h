// Where the policy in force comes from: the policy file (or the embedded default when there is
// none), the command line's overrides and the runtime reservations kept in the state dir.
#pragma once

#include <optional>
#include <string>

#include "broker/core/policy.h"

namespace portbroker::broker {

// Runtime reservations (`portbroker reserve`), in the state dir.
inline constexpr const char* kReservationsFile = "reservations.toml";

struct PolicySource {
  std::string config_path;        // when it does not exist the embedded default serves
  std::string state_dir;          // runtime reservations persist here ("" for none)
  std::optional<PortRange> pool;  // --pool: replaces the ports of the pool named "default"
};

Result<Policy> load_policy(const PolicySource& source);

}  // namespace portbroker::broker
