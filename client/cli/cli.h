// Pieces of the `portbroker` command line, shared by main.cc, exec.cc and format.cc.
#pragma once

#include <nlohmann/json.hpp>
#include <portbroker/client.hpp>
#include <string>
#include <vector>

namespace portbroker::cli {

// Exit codes: the contract in DESIGN.md.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;

std::string format_lease_table(const std::vector<LeaseInfo>& leases);
nlohmann::json leases_to_json(const std::vector<LeaseInfo>& leases);
std::string format_status(const DaemonStatus& status);
nlohmann::json status_to_json(const DaemonStatus& status);
std::string format_reservation_table(const std::vector<ReservationInfo>& reservations);
nlohmann::json reservations_to_json(const std::vector<ReservationInfo>& reservations);
std::string format_reload(const ReloadReport& report);
std::string format_who(const WhoReport& report);
nlohmann::json who_to_json(const WhoReport& report);
std::string format_problems(const std::vector<Problem>& problems);  // "no problems found"
nlohmann::json problems_to_json(const std::vector<Problem>& problems);
// One line per event: "SEQ TIME KIND key=value...", logfmt-quoted.
std::string format_event(const Event& e);
nlohmann::json event_to_json(const Event& e);  // printed one object per line

// Acquires `specs`, then replaces this process with `command`, systemd socket-activation style:
// fds other than 0-2, the sockets and the session are not inherited unless `keep_fds`.
// Returns only on failure, with the exit code.
// With `intercept.enabled`, every bind() of CMD and its descendants is brokered too.
struct InterceptOptions;
int run_exec(const std::string& socket_path, const std::vector<std::string>& specs,
             const std::vector<std::string>& command, const InterceptOptions& intercept,
             bool keep_fds);

}  // namespace portbroker::cli
