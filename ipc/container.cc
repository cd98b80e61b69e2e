#include "portbroker/container.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

namespace portbroker {

namespace {

bool hex_digit(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

bool is_hex_id(std::string_view s) {
  return s.size() >= 12 && std::all_of(s.begin(), s.end(), hex_digit);
}

std::string_view strip_suffix(std::string_view s, std::string_view suffix) {
  return s.ends_with(suffix) ? s.substr(0, s.size() - suffix.size()) : s;
}

// systemd escapes '-' (and other bytes) in unit names as "\xNN".
std::string unescape_unit(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] == 'x' && hex_digit(s[i + 2]) &&
        hex_digit(s[i + 3])) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 2, 2)), nullptr, 16));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

struct Prefix {
  std::string_view prefix;
  std::string_view runtime;
  bool hex_id;  // the rest is a container id (else a name)
};

constexpr Prefix kScopes[] = {
    {"libpod-", "podman", true},    {"docker-", "docker", true},
    {"crio-", "cri-o", true},       {"cri-containerd-", "containerd", true},
    {"machine-", "machine", false}, {"lxc.payload.", "lxc", false},
};

std::optional<ContainerRef> from_component(std::string_view comp, std::string_view parent) {
  // cgroupfs drivers: "/docker/ID", "/lxc/NAME".
  if (parent == "docker" && is_hex_id(comp))
    return ContainerRef{"docker", std::string(comp.substr(0, 12))};
  if (parent == "lxc" && !comp.empty()) return ContainerRef{"lxc", std::string(comp)};
  const std::string_view unit = strip_suffix(comp, ".scope");
  for (const Prefix& p : kScopes) {
    if (!unit.starts_with(p.prefix)) continue;
    std::string_view rest = unit.substr(p.prefix.size());
    if (rest.empty()) continue;
    if (!p.hex_id) return ContainerRef{std::string(p.runtime), unescape_unit(rest)};
    if (is_hex_id(rest))
      return ContainerRef{std::string(p.runtime), std::string(rest.substr(0, 12))};
  }
  return std::nullopt;
}

}  // namespace

std::optional<ContainerRef> container_of_cgroup(std::string_view cgroup) {
  std::vector<std::string_view> parts;
  size_t pos = 0;
  while (pos < cgroup.size()) {
    size_t slash = cgroup.find('/', pos);
    if (slash == std::string_view::npos) slash = cgroup.size();
    if (slash > pos) parts.push_back(cgroup.substr(pos, slash - pos));
    pos = slash + 1;
  }
  // The deepest naming component wins: a container nested in a machine is the container.
  for (size_t i = parts.size(); i-- > 0;) {
    if (auto c = from_component(parts[i], i > 0 ? parts[i - 1] : std::string_view())) return c;
  }
  return std::nullopt;
}

}  // namespace portbroker
