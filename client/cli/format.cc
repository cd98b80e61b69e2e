// Human and JSON renderings of what the daemon reports.
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>

#include "cli.h"
#include "portbroker/container.hpp"

namespace portbroker::cli {

namespace {

// Local time, to the second, without spaces so that the table splits cleanly on whitespace.
std::string format_time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  time_t seconds = static_cast<time_t>(unix_ms / 1000);
  tm local{};
  if (::localtime_r(&seconds, &local) == nullptr) return "-";
  char buf[32];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &local);
  return n == 0 ? "-" : std::string(buf, n);
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

// Left-aligned columns, two spaces apart; the last column is not padded.
std::string format_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) {
      out += row[c];
      if (c + 1 < row.size()) out.append(width[c] - row[c].size() + 2, ' ');
    }
    out += "\n";
  }
  return out;
}

// "0.0.0.0:80", "[::1]:53".
std::string host_port(const IpAddress& a, uint16_t port) {
  std::string host = a.family == AF_INET6 ? "[" + a.to_string() + "]" : a.to_string();
  return host + ":" + std::to_string(port);
}

std::string join(const std::vector<std::string>& parts, const char* separator) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : separator) + p;
  return out;
}

std::string ports_text(const ReservationInfo& r) {
  std::string first = std::to_string(r.port_first);
  return r.port_first == r.port_last ? first : first + "-" + std::to_string(r.port_last);
}

// The daemon's own spelling when it gave one, else rebuilt from the fields.
std::string target_text(const ReservationInfo& r) {
  if (!r.target.empty()) return r.target;
  std::string proto = r.tcp && r.udp ? "both" : r.udp ? "udp" : "tcp";
  return proto + ":" + (r.address ? r.address->to_string() : "any") + ":" + ports_text(r);
}

nlohmann::json reservation_to_json(const ReservationInfo& r) {
  return {
      {"name", r.name},
      {"target", target_text(r)},
      {"tcp", r.tcp},
      {"udp", r.udp},
      {"address", r.address ? nlohmann::json(r.address->to_string()) : nlohmann::json()},
      {"port_first", r.port_first},
      {"port_last", r.port_last},
      {"hold", r.hold},
      {"no_listen", r.no_listen},
      {"principals", r.principals},
      {"origin", r.origin},
  };
}

}  // namespace

std::string format_lease_table(const std::vector<LeaseInfo>& leases) {
  std::vector<std::vector<std::string>> rows;
  rows.reserve(leases.size() + 1);
  rows.push_back(
      {"ID", "NAME", "PROTO", "ADDRESS", "PORT", "MODE", "PID", "UID", "COMM", "SINCE", "STATE"});
  // The CONTAINER column only when some holder runs in one: hosts without containers keep
  // the table they know.
  const bool containers = std::any_of(leases.begin(), leases.end(), [](const LeaseInfo& l) {
    return container_of_cgroup(l.holder.cgroup).has_value();
  });
  if (containers) rows.front().push_back("CONTAINER");
  for (const auto& l : leases) {
    std::string state = l.state == "lingering" ? "lingering until " + format_time(l.linger_until_ms)
                                               : or_dash(l.state);
    if (l.no_copy) state += " (no broker copy)";
    rows.push_back({std::to_string(l.id), or_dash(l.name), protocol_name(l.protocol),
                    l.address.to_string(), std::to_string(l.port), mode_name(l.mode),
                    std::to_string(l.holder.pid), std::to_string(l.holder.uid),
                    or_dash(l.holder.comm), format_time(l.created_at_ms), state});
    if (containers) {
      auto c = container_of_cgroup(l.holder.cgroup);
      rows.back().push_back(c ? c->to_string() : "-");
    }
  }
  return format_table(rows);
}

namespace {

nlohmann::json container_json(const std::string& cgroup) {
  auto c = container_of_cgroup(cgroup);
  if (!c) return nullptr;
  return {{"runtime", c->runtime}, {"name", c->name}};
}

// The holder's cgroup, and the container it names, under a `who` lease line.
std::string holder_place(const Holder& h) {
  if (auto c = container_of_cgroup(h.cgroup)) {
    return "    container: " + c->to_string() + " (cgroup " + h.cgroup + ")\n";
  }
  if (!h.cgroup.empty() && h.cgroup != "/") return "    cgroup: " + h.cgroup + "\n";
  return "";
}

}  // namespace

nlohmann::json leases_to_json(const std::vector<LeaseInfo>& leases) {
  auto out = nlohmann::json::array();
  for (const auto& l : leases) {
    out.push_back({
        {"id", l.id},
        {"name", l.name},
        {"protocol", protocol_name(l.protocol)},
        {"address", l.address.to_string()},
        {"port", l.port},
        {"mode", mode_name(l.mode)},
        {"holder",
         {{"pid", l.holder.pid},
          {"uid", l.holder.uid},
          {"gid", l.holder.gid},
          {"comm", l.holder.comm},
          {"cgroup", l.holder.cgroup},
          {"container", container_json(l.holder.cgroup)}}},
        {"session", l.session},
        {"created_at_ms", l.created_at_ms},
        {"state", l.state},
        {"linger_s", l.linger_s},
        {"linger_until_ms", l.linger_until_ms},
        {"broker_copy", !l.no_copy},
    });
  }
  return out;
}

std::string format_status(const DaemonStatus& s) {
  std::string out;
  auto line = [&](const char* key, const std::string& value) {
    out += key;
    out.append(10 - std::string_view(key).size(), ' ');
    out += value + "\n";
  };
  line("version:", or_dash(s.version));
  line("pid:", std::to_string(s.pid));
  line("started:", format_time(s.started_at_ms));
  line("socket:", or_dash(s.socket_path));
  line("sessions:", std::to_string(s.sessions));
  line("leases:", std::to_string(s.leases));
  line("pool:", std::to_string(s.pool_low) + "-" + std::to_string(s.pool_high));
  line("open fds:", std::to_string(s.open_fds));
  return out;
}

nlohmann::json status_to_json(const DaemonStatus& s) {
  return {
      {"version", s.version},
      {"pid", s.pid},
      {"started_at_ms", s.started_at_ms},
      {"socket_path", s.socket_path},
      {"sessions", s.sessions},
      {"leases", s.leases},
      {"pool_low", s.pool_low},
      {"pool_high", s.pool_high},
      {"open_fds", s.open_fds},
  };
}

std::string format_reservation_table(const std::vector<ReservationInfo>& reservations) {
  std::vector<std::vector<std::string>> rows;
  rows.reserve(reservations.size() + 1);
  rows.push_back({"NAME", "TARGET", "HOLD", "PRINCIPALS", "ORIGIN"});
  for (const auto& r : reservations) {
    rows.push_back({r.name, target_text(r),
                    r.no_listen ? "no-listen"
                    : r.hold    ? "yes"
                                : "no",
                    or_dash(r.principals), or_dash(r.origin)});
  }
  return format_table(rows);
}

nlohmann::json reservations_to_json(const std::vector<ReservationInfo>& reservations) {
  auto out = nlohmann::json::array();
  for (const auto& r : reservations) out.push_back(reservation_to_json(r));
  return out;
}

std::string format_reload(const ReloadReport& report) {
  std::string out = "policy reloaded from " + or_dash(report.source) + "\n";
  if (report.refused_leases.empty()) return out;
  out += std::to_string(report.refused_leases.size()) +
         " lease(s) the new policy would refuse (kept):\n";
  for (const auto& line : report.refused_leases) out += "  " + line + "\n";
  return out;
}

std::string format_who(const WhoReport& w) {
  const std::string port =
      std::string(protocol_name(w.protocol)) + " port " + std::to_string(w.port);
  std::string out = w.leases.empty() && w.outside.empty() && !w.held ? "nobody holds " + port + "\n"
                                                                     : port + "\n";
  for (const auto& l : w.leases) {
    out += "  leased: lease " + std::to_string(l.id) +
           (l.name.empty() ? "" : " \"" + l.name + "\"") + " " + mode_name(l.mode) + " " +
           host_port(l.address, l.port) + " by pid " + std::to_string(l.holder.pid) + " (" +
           or_dash(l.holder.comm) + ", uid " + std::to_string(l.holder.uid) + ") since " +
           format_time(l.created_at_ms) + "\n" + holder_place(l.holder);
  }
  for (const auto& o : w.outside) {
    out += "  outside the broker: " + or_dash(o.state) + " " + host_port(o.address, o.port) +
           (o.pid > 0 ? " by pid " + std::to_string(o.pid) + " (" + or_dash(o.comm) + ", uid " +
                            std::to_string(o.uid) + ")"
                      : " by a process of uid " + std::to_string(o.uid)) +
           "\n";
  }
  if (w.held) out += "  held: by portbrokerd for its reservation, until a lease takes it\n";
  for (const auto& r : w.reservations) {
    out += "  reserved: " + r.name + " (" + target_text(r) +
           (r.no_listen ? ", hold, not listening"
            : r.hold    ? ", hold"
                        : "") +
           ") for " + or_dash(r.principals) + (r.origin.empty() ? "" : ", from " + r.origin) + "\n";
  }
  if (!w.pools.empty()) {
    out += std::string(w.pools.size() == 1 ? "  pool: " : "  pools: ") + join(w.pools, ", ") + "\n";
  }
  out += "  ephemeral range: ";
  if (!w.in_ephemeral_range) {
    out += w.guarded ? "outside (and listed in ip_local_reserved_ports)" : "outside";
  } else if (w.guarded) {
    out += "inside, protected by ip_local_reserved_ports";
  } else {
    out += "inside and NOT protected: the kernel may hand it out as a source port";
  }
  return out + "\n";
}

nlohmann::json who_to_json(const WhoReport& w) {
  auto outside = nlohmann::json::array();
  for (const auto& o : w.outside) {
    outside.push_back({
        {"protocol", protocol_name(o.protocol)},
        {"address", o.address.to_string()},
        {"port", o.port},
        {"state", o.state},
        {"pid", o.pid},
        {"uid", o.uid},
        {"comm", o.comm},
    });
  }
  return {
      {"protocol", protocol_name(w.protocol)},
      {"port", w.port},
      {"leases", leases_to_json(w.leases)},
      {"outside", outside},
      {"reservations", reservations_to_json(w.reservations)},
      {"pools", w.pools},
      {"in_ephemeral_range", w.in_ephemeral_range},
      {"guarded", w.guarded},
      {"held", w.held},
  };
}

std::string format_problems(const std::vector<Problem>& problems) {
  if (problems.empty()) return "no problems found\n";
  std::string out;
  for (const auto& p : problems) out += or_dash(p.kind) + ": " + p.message + "\n";
  return out;
}

nlohmann::json problems_to_json(const std::vector<Problem>& problems) {
  auto out = nlohmann::json::array();
  for (const auto& p : problems) out.push_back({{"kind", p.kind}, {"message", p.message}});
  return out;
}

namespace {

// logfmt: key=value, the value quoted when it holds a blank, a quote or nothing.
void logfmt(std::string& out, const char* key, const std::string& value) {
  if (value.empty()) return;
  out.append(" ").append(key).append("=");
  if (value.find_first_of(" \t\"=\\") == std::string::npos) {
    out += value;
    return;
  }
  out += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  out += '"';
}

std::string time_ms_text(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  char ms[8];
  std::snprintf(ms, sizeof(ms), ".%03d", static_cast<int>(unix_ms % 1000));
  return format_time(unix_ms) + ms;
}

}  // namespace

std::string format_event(const Event& e) {
  std::string out = std::to_string(e.seq) + " " + time_ms_text(e.time_ms) + " " + e.kind;
  if (e.lease != 0) logfmt(out, "lease", std::to_string(e.lease));
  logfmt(out, "name", e.name);
  logfmt(out, "endpoint", e.endpoint);
  logfmt(out, "mode", e.mode);
  if (e.pid != 0) logfmt(out, "pid", std::to_string(e.pid));
  if (event_is_about_lease(e)) logfmt(out, "uid", std::to_string(e.uid));
  logfmt(out, "comm", e.comm);
  if (e.code != ErrorCode::kOk) logfmt(out, "code", error_code_name(e.code));
  if (e.kind == "lost" || e.kind == "daemon-started" || e.kind == "policy-reloaded") {
    logfmt(out, "count", std::to_string(e.count));
  }
  logfmt(out, "reason", e.reason);
  logfmt(out, "conflicts_with", e.conflicts_with);
  return out + "\n";
}

nlohmann::json event_to_json(const Event& e) {
  nlohmann::json j = {{"seq", e.seq}, {"time_ms", e.time_ms}, {"kind", e.kind}};
  if (e.lease != 0) j["lease"] = e.lease;
  if (!e.name.empty()) j["name"] = e.name;
  if (!e.endpoint.empty()) j["endpoint"] = e.endpoint;
  if (e.port != 0) j["port"] = e.port;
  if (!e.mode.empty()) j["mode"] = e.mode;
  if (e.pid != 0) j["pid"] = e.pid;
  if (event_is_about_lease(e)) j["uid"] = e.uid;
  if (!e.comm.empty()) j["comm"] = e.comm;
  if (e.code != ErrorCode::kOk) j["code"] = error_code_name(e.code);
  if (!e.reason.empty()) j["reason"] = e.reason;
  if (!e.conflicts_with.empty()) j["conflicts_with"] = e.conflicts_with;
  if (e.kind == "lost" || e.kind == "daemon-started" || e.kind == "policy-reloaded") {
    j["count"] = e.count;
  }
  return j;
}

}  // namespace portbroker::cli
