#include "broker/service/policy_source.h"

#include <filesystem>

#include "broker/os/files.h"
#include "broker/os/names.h"

namespace portbroker::broker {

Result<Policy> load_policy(const PolicySource& config) {
  Policy policy;
  std::error_code ec;
  if (!config.config_path.empty() && std::filesystem::exists(config.config_path, ec)) {
    auto text = read_whole_file(config.config_path);
    if (!text) return text.error();
    auto parsed = parse_policy(*text, config.config_path, system_name_resolver());
    if (!parsed) return parsed.error();
    policy = std::move(parsed).value();
  } else {
    policy = embedded_default_policy();
  }
  if (config.pool) {
    for (Pool& p : policy.pools) {
      if (p.name == "default") p.ports = {*config.pool};
    }
  }
  std::string state = config.state_dir + "/" + kReservationsFile;
  if (!config.state_dir.empty() && std::filesystem::exists(state, ec)) {
    auto text = read_whole_file(state);
    if (!text) return text.error();
    auto runtime = parse_state(*text, state);
    if (!runtime) return runtime.error();
    for (Reservation& r : *runtime) {
      std::string name = r.name;
      if (auto added = policy.add_reservation(std::move(r)); !added) {
        return make_error(added.error().code,
                          state + ": runtime reservation " + name + ": " + added.error().message);
      }
    }
  }
  return policy;
}

}  // namespace portbroker::broker
