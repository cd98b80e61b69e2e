#include "broker/core/port_set.h"

#include <algorithm>
#include <cerrno>

namespace portbroker::broker {

namespace {

std::vector<PortRange> normalized(std::span<const PortRange> ports) {
  return normalize_ports(std::vector<PortRange>(ports.begin(), ports.end()));
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kBlanks = " \t\r\n";
  size_t b = s.find_first_not_of(kBlanks);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kBlanks) - b + 1);
}

}  // namespace

Result<std::vector<PortRange>> parse_port_list(std::string_view text) {
  std::string_view rest = trim(text);
  std::vector<PortRange> out;
  if (rest.empty()) return out;
  for (;;) {
    size_t comma = rest.find(',');
    std::string_view item = trim(rest.substr(0, comma));
    size_t dash = item.find('-');
    auto first = parse_port(trim(item.substr(0, dash)));
    auto last = dash == std::string_view::npos ? first : parse_port(trim(item.substr(dash + 1)));
    if (!first || !last) {
      return make_error(
          ErrorCode::kBadRequest,
          "bad entry '" + std::string(item) + "' in port list '" + std::string(trim(text)) + "'");
    }
    if (*first > *last) {
      return make_error(ErrorCode::kBadRequest, "inverted range '" + std::string(item) +
                                                    "' in port list '" + std::string(trim(text)) +
                                                    "'");
    }
    out.push_back(PortRange{*first, *last});
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return normalize_ports(std::move(out));
}

std::string format_port_list(std::vector<PortRange> ports) {
  std::string out;
  for (const auto& r : normalize_ports(std::move(ports))) {
    if (!out.empty()) out += ',';
    out += r.to_string();
  }
  return out;
}

std::vector<PortRange> port_set_union(std::span<const PortRange> a, std::span<const PortRange> b) {
  std::vector<PortRange> all(a.begin(), a.end());
  all.insert(all.end(), b.begin(), b.end());
  return normalize_ports(std::move(all));
}

std::vector<PortRange> port_set_intersection(std::span<const PortRange> a,
                                             std::span<const PortRange> b) {
  auto x = normalized(a), y = normalized(b);
  std::vector<PortRange> out;
  size_t i = 0, j = 0;
  while (i < x.size() && j < y.size()) {
    uint16_t lo = std::max(x[i].first, y[j].first), hi = std::min(x[i].last, y[j].last);
    if (lo <= hi) out.push_back(PortRange{lo, hi});
    // Drop whichever ends first; the other may still meet the next range.
    if (x[i].last < y[j].last) {
      ++i;
    } else {
      ++j;
    }
  }
  return out;
}

std::vector<PortRange> port_set_difference(std::span<const PortRange> a,
                                           std::span<const PortRange> b) {
  auto x = normalized(a), y = normalized(b);
  std::vector<PortRange> out;
  size_t j = 0;
  for (const auto& r : x) {
    uint32_t lo = r.first;
    const uint32_t hi = r.last;
    while (j < y.size() && y[j].last < lo) ++j;
    for (size_t k = j; k < y.size() && lo <= hi && y[k].first <= hi; ++k) {
      if (y[k].first > lo) out.push_back(PortRange{uint16_t(lo), uint16_t(y[k].first - 1)});
      lo = uint32_t{y[k].last} + 1;
    }
    if (lo <= hi) out.push_back(PortRange{uint16_t(lo), uint16_t(hi)});
  }
  return out;
}

GuardPlan plan_reserved_ports(std::span<const PortRange> current,
                              std::span<const PortRange> ours_before,
                              std::span<const PortRange> wanted) {
  auto now = normalized(current);
  auto drop = port_set_difference(ours_before, wanted);
  GuardPlan plan;
  plan.value = port_set_union(port_set_difference(now, drop), wanted);
  // Still ours: what we had added, still want, and is still there (if the admin removed one
  // and we re-add it, it is ours again through the second term).
  auto kept = port_set_intersection(port_set_intersection(ours_before, now), wanted);
  plan.ours = port_set_union(kept, port_set_difference(wanted, now));
  plan.changed = plan.value != now;
  return plan;
}

Result<PortRange> parse_local_port_range(std::string_view text) {
  std::string_view s = trim(text);
  size_t gap = s.find_first_of(" \t");
  auto bad = [&] {
    return make_error(ErrorCode::kBadRequest,
                      "bad ip_local_port_range '" + std::string(s) + "' (expected 'FIRST LAST')");
  };
  if (gap == std::string_view::npos) return bad();
  auto first = parse_port(s.substr(0, gap));
  auto last = parse_port(trim(s.substr(gap)));
  if (!first || !last || *first > *last) return bad();
  return PortRange{*first, *last};
}

std::vector<PortRange> unprotected_ports(std::span<const PortRange> wanted,
                                         std::span<const PortRange> reserved_now,
                                         PortRange ephemeral) {
  const PortRange eph[] = {ephemeral};
  return port_set_difference(port_set_intersection(wanted, eph), reserved_now);
}

}  // namespace portbroker::broker
