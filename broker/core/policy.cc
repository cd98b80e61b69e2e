#include "broker/core/policy.h"

#include <fnmatch.h>
#include <sys/socket.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <exception>
#include <new>
#include <sstream>
#include <utility>

namespace portbroker::broker {

namespace {

constexpr std::string_view kEmbeddedSource = "<embedded default>";
constexpr std::string_view kReserveCommand = "portbroker reserve";
constexpr int64_t kMaxId = 4294967294;  // (uid_t)-1 means "no change" to the kernel
constexpr int64_t kMaxCount = 1000000;

// Like chown: a name first, then a number. Without a resolver (state files) numbers only.
std::optional<Principals::Id> resolve_id(const NameResolver* names, bool user,
                                         const std::string& text) {
  if (names && !text.empty()) {
    if (auto id = user ? names->uid_of(text) : names->gid_of(text))
      return Principals::Id{*id, text};
  }
  if (auto id = parse_decimal(text, kMaxId)) return Principals::Id{static_cast<uint32_t>(*id), {}};
  return std::nullopt;
}

// Rule, reservation and pool names appear in CLI arguments, logs and messages.
constexpr std::string_view kNameRule =
    "use 1-64 letters, digits and . _ - @, starting with a letter or digit";
bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
           c == '@';
  });
}

// ::ffff:a.b.c.d is the IPv4 address a.b.c.d as far as collisions go.
IpAddress unmapped(const IpAddress& a) {
  if (a.family != AF_INET6) return a;
  for (int i = 0; i < 10; ++i)
    if (a.bytes[i] != 0) return a;
  if (a.bytes[10] != 0xff || a.bytes[11] != 0xff) return a;
  IpAddress v4;
  v4.family = AF_INET;
  std::copy(a.bytes.begin() + 12, a.bytes.end(), v4.bytes.begin());
  return v4;
}

// Whether binding both could conflict. :: is treated as dual-stack (the Linux default), and an
// address of unknown family as a wildcard, erring towards "collides".
bool addresses_collide(const IpAddress& x0, const IpAddress& y0) {
  IpAddress x = unmapped(x0), y = unmapped(y0);
  if (x == y) return true;
  auto wild6 = [](const IpAddress& a) { return a.family != AF_INET && a.is_any(); };
  if (wild6(x) || wild6(y)) return true;
  return x.family == AF_INET && y.family == AF_INET && (x.is_any() || y.is_any());
}

bool address_sets_collide(const std::vector<IpAddress>& a, const std::vector<IpAddress>& b) {
  if (a.empty() || b.empty()) return true;
  for (const auto& x : a)
    for (const auto& y : b)
      if (addresses_collide(x, y)) return true;
  return false;
}

bool address_set_collides(const std::vector<IpAddress>& set, const IpAddress& a) {
  if (set.empty()) return true;
  return std::any_of(set.begin(), set.end(),
                     [&](const IpAddress& x) { return addresses_collide(x, a); });
}

bool address_set_grants(const std::vector<IpAddress>& set, const IpAddress& a) {
  if (set.empty()) return true;
  IpAddress want = unmapped(a);
  return std::any_of(set.begin(), set.end(),
                     [&](const IpAddress& x) { return unmapped(x) == want; });
}

bool ports_contain(const std::vector<PortRange>& ranges, uint16_t port) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [&](const PortRange& r) { return r.contains(port); });
}

// The first stretch of ports two lists share, for messages.
std::optional<PortRange> first_common_ports(const std::vector<PortRange>& a,
                                            const std::vector<PortRange>& b) {
  std::optional<PortRange> best;
  for (const auto& x : a) {
    for (const auto& y : b) {
      if (!x.overlaps(y)) continue;
      PortRange r{std::max(x.first, y.first), std::min(x.last, y.last)};
      if (!best || r.first < best->first) best = r;
    }
  }
  return best;
}

std::string port_word(const PortRange& r) {
  return (r.first == r.last ? "port " : "ports ") + r.to_string();
}

bool reservation_covers(const Reservation& r, Protocol p, const IpAddress& a, uint16_t port) {
  return r.protocols.has(p) && ports_contain(r.ports, port) && address_set_collides(r.addresses, a);
}

bool reservations_collide(const Reservation& a, const Reservation& b) {
  return a.protocols.overlaps(b.protocols) && first_common_ports(a.ports, b.ports) &&
         address_sets_collide(a.addresses, b.addresses);
}

// Unnamed rules are known by their position ("rule #2"), which is not a name to quote.
std::string short_rule_label(const Rule& r) {
  return r.name.starts_with('#') ? "rule " + r.name : "rule '" + r.name + "'";
}

std::string rule_label(const Rule& r) {
  return short_rule_label(r) + " (" + r.origin.to_string() + ")";
}

std::string reservation_label(const Reservation& r) {
  return "'" + r.name + "' (reservation " + r.name + " in " + r.origin.to_string() + ")";
}

std::string short_reservation_label(const Reservation& r) {
  return "reservation '" + r.name + "' (" + r.origin.to_string() + ")";
}

std::string pool_label(const Pool& p) {
  return "pool '" + p.name + "' (" + p.origin.to_string() + ")";
}

bool cgroup_matches(const std::string& pattern, std::string_view cgroup) {
  if (cgroup.empty() || cgroup.front() != '/') return false;
  std::string path(cgroup);
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  for (;;) {
    if (::fnmatch(pattern.c_str(), path.c_str(), FNM_PATHNAME) == 0) return true;
    if (path == "/") return false;
    size_t slash = path.rfind('/');
    path.resize(slash == 0 ? 1 : slash);
  }
}

// Principals that are literally the same entry in both sets, for lint.
std::optional<std::string> shared_principal(const Principals& a, const Principals& b) {
  if (a.anyone && b.anyone) return "anyone";
  for (const auto& x : a.users)
    for (const auto& y : b.users)
      if (x.id == y.id) return (x.name.empty() ? "uid " + std::to_string(x.id) : "user " + x.name);
  for (const auto& x : a.groups)
    for (const auto& y : b.groups)
      if (x.id == y.id) return (x.name.empty() ? "gid " + std::to_string(x.id) : "group " + x.name);
  for (const auto& x : a.cgroups)
    for (const auto& y : b.cgroups)
      if (x == y) return "cgroup " + x;
  return std::nullopt;
}

}  // namespace

// --- small types ----------------------------------------------------------------------------

std::vector<PortRange> normalize_ports(std::vector<PortRange> ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const PortRange& a, const PortRange& b) { return a.first < b.first; });
  std::vector<PortRange> out;
  for (const auto& r : ranges) {
    if (!out.empty() && uint32_t{r.first} <= uint32_t{out.back().last} + 1) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

std::string Principal::describe() const { return "uid " + std::to_string(uid); }

std::string Origin::to_string() const {
  return line == 0 ? file : file + ":" + std::to_string(line);
}

bool Principals::matches(const Principal& who) const {
  if (anyone) return true;
  for (const auto& u : users)
    if (u.id == who.uid) return true;
  for (const auto& g : groups) {
    if (g.id == who.gid) return true;
    if (std::find(who.groups.begin(), who.groups.end(), g.id) != who.groups.end()) return true;
  }
  for (const auto& c : cgroups)
    if (cgroup_matches(c, who.cgroup)) return true;
  return false;
}

std::string Principals::to_string() const {
  std::vector<std::string> parts;
  if (anyone) parts.push_back("anyone");
  for (const auto& u : users)
    parts.push_back(u.name.empty() ? "uid " + std::to_string(u.id) : "user " + u.name);
  for (const auto& g : groups)
    parts.push_back(g.name.empty() ? "gid " + std::to_string(g.id) : "group " + g.name);
  for (const auto& c : cgroups) parts.push_back("cgroup " + c);
  if (parts.empty()) return "nobody";
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

std::string ProtocolSet::to_string() const {
  return tcp && udp ? "tcp/udp" : tcp ? "tcp" : udp ? "udp" : "none";
}

bool ModeSet::has(Mode m) const {
  switch (m) {
    case Mode::kShared:
      return shared;
    case Mode::kReuseport:
      return reuseport;
    case Mode::kExclusive:
      break;
  }
  return exclusive;
}

std::string ModeSet::to_string() const {
  std::string s;
  for (Mode m : {Mode::kExclusive, Mode::kShared, Mode::kReuseport})
    if (has(m)) s += (s.empty() ? "" : ", ") + std::string(mode_name(m));
  return s.empty() ? "none" : s;
}

// --- parsing --------------------------------------------------------------------------------

namespace {

using Status = std::optional<Error>;  // nullopt: fine

constexpr std::string_view kTopKeys[] = {"daemon",      "limits", "events", "rule",
                                         "reservation", "pool",   "share"};
constexpr std::string_view kStateTopKeys[] = {"version", "reservation"};
constexpr std::string_view kDaemonKeys[] = {"root_unrestricted", "ephemeral_guard"};
constexpr std::string_view kLimitsKeys[] = {"max_connections_per_uid", "max_leases_per_uid"};
constexpr std::string_view kEventsKeys[] = {"users", "groups", "cgroups"};
constexpr std::string_view kRuleKeys[] = {"name",     "users",   "groups", "cgroups",   "ports",
                                          "protocol", "address", "modes",  "max_leases"};
constexpr std::string_view kReservationKeys[] = {"name",  "users",    "groups",  "cgroups",
                                                 "ports", "protocol", "address", "modes",
                                                 "hold",  "listen"};
constexpr std::string_view kShareKeys[] = {"name",  "users",    "groups",  "cgroups",
                                           "ports", "protocol", "address", "modes"};
constexpr std::string_view kPoolKeys[] = {"name",    "users", "groups",
                                          "cgroups", "ports", "protocol"};

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string a_type(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// Parsing goes on past an error, so that one pass (`portbrokerd --check-config`) reports every
// error in the file. The Parser records errors as it goes; a helper that checks several things
// records all its errors but the last, which it returns, so that `if (auto e = ...) return e;`
// still reads as "stop here" and the caller records it (the order stays that of the file).
class Parser {
 public:
  Parser(std::string_view file, const NameResolver* names) : file_(file), names_(names) {}

  // Records `e`, if any; true when there was one.
  bool note(Status e) const {
    if (!e) return false;
    errors_.push_back(std::move(*e));
    return true;
  }

  // The last error recorded since `before`, taken back so that the caller returns it.
  Status last_error_since(size_t before) const {
    if (errors_.size() == before) return std::nullopt;
    Error last = std::move(errors_.back());
    errors_.pop_back();
    return last;
  }

  // `value`, unless an error was recorded since `before`.
  template <typename T>
  Result<T> finish(T value, size_t before) const {
    if (auto e = last_error_since(before)) return *e;
    return value;
  }

  // The whole file's outcome: `value`, or every error recorded, one "FILE:LINE:COL: ..." a line,
  // in the order of the file.
  template <typename T>
  Result<T> outcome(T value) const {
    if (errors_.empty()) return value;
    std::vector<std::pair<std::pair<uint64_t, uint64_t>, const Error*>> sorted;
    for (const Error& e : errors_) sorted.emplace_back(position(e.message), &e);
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string all;
    for (const auto& [where, e] : sorted) all += (all.empty() ? "" : "\n") + e->message;
    return make_error(ErrorCode::kBadRequest, all);
  }

  // LINE and COL of a message made by at(): "FILE:LINE:COL: ...".
  std::pair<uint64_t, uint64_t> position(std::string_view message) const {
    uint64_t line = 0, column = 0;
    std::string_view rest = message.substr(std::min(message.size(), file_.size() + 1));
    auto [after_line, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), line);
    if (ec == std::errc() && after_line < rest.data() + rest.size() && *after_line == ':') {
      std::from_chars(after_line + 1, rest.data() + rest.size(), column);
    }
    return {line, column};
  }

  // Calls f(element) for a scalar or for each element of an array, so that `ports = 80` and
  // `ports = [80, "8000-8099"]` read alike.
  template <typename F>
  Status for_each_value(const toml::node& n, F&& f) const {
    const auto* arr = n.as_array();
    if (!arr) return f(n);
    const size_t before = errors_.size();
    for (const auto& el : *arr) note(f(el));
    return last_error_since(before);
  }

  Error at(const toml::source_region& where, const std::string& what) const {
    return make_error(ErrorCode::kBadRequest, file_ + ":" + std::to_string(where.begin.line) + ":" +
                                                  std::to_string(where.begin.column) + ": " + what);
  }
  Origin origin(const toml::node& n) const {
    return Origin{file_, static_cast<uint32_t>(n.source().begin.line)};
  }

  // Where a duplicate name is reported: the name, or the table when the name was implied.
  static const toml::source_region& name_source(const toml::table& t) {
    const toml::node* n = t.get("name");
    return n ? n->source() : t.source();
  }

  Status check_keys(const toml::table& t, std::span<const std::string_view> allowed,
                    std::string_view section) const {
    const size_t before = errors_.size();
    for (const auto& [key, value] : t) {
      std::string_view k = key.str();
      if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
      std::string msg = "unknown key '" + std::string(k) + "'";
      if (!section.empty()) msg += " in " + std::string(section);
      std::string_view best;
      size_t best_d = 3;  // only suggest near misses
      for (auto cand : allowed) {
        size_t d = edit_distance(k, cand);
        if (d < best_d) best_d = d, best = cand;
      }
      if (!best.empty()) {
        msg += "; did you mean '" + std::string(best) + "'?";
      } else {
        msg += "; expected one of:";
        for (auto cand : allowed) msg += " " + std::string(cand);
      }
      note(at(key.source(), msg));
    }
    return last_error_since(before);
  }

  Status get_bool(const toml::table& t, std::string_view key, bool& out) const {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    if (!n->is_boolean()) {
      return at(n->source(), "'" + std::string(key) + "' must be true or false, not " + a_type(*n));
    }
    out = n->as_boolean()->get();
    return std::nullopt;
  }

  Status get_count(const toml::table& t, std::string_view key, std::optional<uint32_t>& out) const {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    if (!n->is_integer()) {
      return at(n->source(), "'" + std::string(key) + "' must be an integer, not " + a_type(*n));
    }
    int64_t v = n->as_integer()->get();
    if (v < 1 || v > kMaxCount) {
      return at(n->source(), "'" + std::string(key) + "' must be from 1 to " +
                                 std::to_string(kMaxCount) + ", not " + std::to_string(v));
    }
    out = static_cast<uint32_t>(v);
    return std::nullopt;
  }

  Status get_count(const toml::table& t, std::string_view key, uint32_t& out) const {
    std::optional<uint32_t> v;
    if (auto e = get_count(t, key, v)) return e;
    if (v) out = *v;
    return std::nullopt;
  }

  // A name key; `required` for reservations and pools, which are referred to by name.
  Status get_name(const toml::table& t, bool required, std::string_view what,
                  std::string& out) const {
    const toml::node* n = t.get("name");
    if (!n) {
      if (required) return at(t.source(), std::string(what) + " needs a 'name'");
      return std::nullopt;
    }
    if (!n->is_string()) return at(n->source(), "'name' must be a string, not " + a_type(*n));
    const std::string& s = n->as_string()->get();
    if (!valid_name(s)) {
      return at(n->source(), "invalid name '" + s + "': " + std::string(kNameRule));
    }
    out = s;
    return std::nullopt;
  }

  Status get_ports(const toml::table& t, std::string_view what, std::vector<PortRange>& out) const {
    const toml::node* n = t.get("ports");
    if (!n) return at(t.source(), std::string(what) + " needs 'ports'");
    if (const auto* arr = n->as_array(); arr && arr->empty())
      return at(n->source(), "'ports' must not be empty");
    return for_each_value(*n, [&](const toml::node& el) -> Status {
      if (const auto* i = el.as_integer()) {
        int64_t v = i->get();
        if (v < 1 || v > 65535) {
          return at(el.source(), "port " + std::to_string(v) + " is out of range (1-65535)");
        }
        out.push_back(PortRange{static_cast<uint16_t>(v), static_cast<uint16_t>(v)});
        return std::nullopt;
      }
      if (const auto* s = el.as_string()) {
        auto r = parse_port_range(s->get());
        if (!r) return at(el.source(), r.error().message);
        out.push_back(r.value());
        return std::nullopt;
      }
      return at(el.source(),
                "a port must be an integer or a \"FIRST-LAST\" string, not " + a_type(el));
    });
  }

  Status get_protocols(const toml::table& t, ProtocolSet& out) const {
    const toml::node* n = t.get("protocol");
    if (!n) return std::nullopt;
    const auto* s = n->as_string();
    if (!s) return at(n->source(), "'protocol' must be a string, not " + a_type(*n));
    if (s->get() == "tcp") {
      out = ProtocolSet{true, false};
    } else if (s->get() == "udp") {
      out = ProtocolSet{false, true};
    } else if (s->get() == "both") {
      out = ProtocolSet{true, true};
    } else {
      return at(n->source(), "unknown protocol '" + s->get() + "'; expected tcp, udp or both");
    }
    return std::nullopt;
  }

  Status get_addresses(const toml::table& t, std::vector<IpAddress>& out) const {
    const toml::node* n = t.get("address");
    if (!n) return std::nullopt;
    if (const auto* arr = n->as_array(); arr && arr->empty())
      return at(n->source(), "'address' must not be empty (use \"any\")");
    bool any = false;
    auto st = for_each_value(*n, [&](const toml::node& el) -> Status {
      const auto* s = el.as_string();
      if (!s) return at(el.source(), "an address must be a string, not " + a_type(el));
      if (s->get() == "any") {
        any = true;
        return std::nullopt;
      }
      auto a = IpAddress::parse(s->get());
      if (!a)
        return at(el.source(), "'" + s->get() + "' is not an IPv4 or IPv6 address or \"any\"");
      out.push_back(a.value());
      return std::nullopt;
    });
    if (st) return st;
    if (any && !out.empty()) {
      return at(n->source(), "\"any\" already covers every address; list addresses or \"any\"");
    }
    return std::nullopt;
  }

  Status get_modes(const toml::table& t, ModeSet& out) const {
    const toml::node* n = t.get("modes");
    if (!n) return std::nullopt;
    if (const auto* arr = n->as_array(); arr && arr->empty())
      return at(n->source(), "'modes' must not be empty");
    out = ModeSet{false, false, false};
    return for_each_value(*n, [&](const toml::node& el) -> Status {
      const auto* s = el.as_string();
      if (!s) return at(el.source(), "a mode must be a string, not " + a_type(el));
      if (s->get() == "exclusive") {
        out.exclusive = true;
      } else if (s->get() == "shared") {
        out.shared = true;
      } else if (s->get() == "reuseport") {
        out.reuseport = true;
      } else {
        return at(el.source(),
                  "unknown mode '" + s->get() + "'; expected exclusive, shared or reuseport");
      }
      return std::nullopt;
    });
  }

  Status get_ids(const toml::table& t, std::string_view key, bool user, Principals& out) const {
    const toml::node* n = t.get(key);
    if (!n) return std::nullopt;
    const char* kind = user ? "user" : "group";
    return for_each_value(*n, [&](const toml::node& el) -> Status {
      Principals::Id id;
      if (const auto* i = el.as_integer()) {
        if (i->get() < 0 || i->get() > kMaxId) {
          return at(el.source(), std::string(user ? "uid " : "gid ") + std::to_string(i->get()) +
                                     " is out of range (0-" + std::to_string(kMaxId) + ")");
        }
        id.id = static_cast<uint32_t>(i->get());
      } else if (const auto* s = el.as_string()) {
        const std::string& name = s->get();
        if (name == "*") {
          if (!user) return at(el.source(), "use users = [\"*\"] for anyone, not groups");
          out.anyone = true;
          return std::nullopt;
        }
        auto found = resolve_id(names_, user, name);
        if (!found) {
          return at(el.source(), "unknown " + std::string(kind) + " '" + name + "'" +
                                     (names_ ? "" : " (state files store numeric ids)"));
        }
        id = std::move(*found);
      } else {
        return at(el.source(),
                  std::string("a ") + kind + " must be a name or a numeric id, not " + a_type(el));
      }
      (user ? out.users : out.groups).push_back(std::move(id));
      return std::nullopt;
    });
  }

  Status get_principals(const toml::table& t, Principals& out) const {
    const size_t before = errors_.size();
    note(get_ids(t, "users", true, out));
    note(get_ids(t, "groups", false, out));
    const toml::node* n = t.get("cgroups");
    if (!n) return last_error_since(before);
    note(for_each_value(*n, [&](const toml::node& el) -> Status {
      const auto* s = el.as_string();
      if (!s) return at(el.source(), "a cgroup must be a string, not " + a_type(el));
      if (s->get().empty() || s->get().front() != '/') {
        return at(el.source(), "cgroup '" + s->get() +
                                   "' must be an absolute path or glob, like "
                                   "\"/system.slice/nginx.service\"");
      }
      out.cgroups.push_back(s->get());
      return std::nullopt;
    }));
    return last_error_since(before);
  }

  // [[name]] must be an array of tables; hands each table to f.
  template <typename F>
  Status each_table(const toml::table& root, std::string_view key, F&& f) const {
    const toml::node* n = root.get(key);
    if (!n) return std::nullopt;
    const auto* arr = n->as_array();
    if (!arr) {
      return at(n->source(), "'" + std::string(key) + "' must be written [[" + std::string(key) +
                                 "]] (an array of tables), not " + a_type(*n));
    }
    for (const auto& el : *arr) {
      const auto* t = el.as_table();
      if (!t) {
        note(at(el.source(), "each '" + std::string(key) + "' must be a table, not " + a_type(el)));
        continue;
      }
      note(f(*t));
    }
    return std::nullopt;
  }

  // [key] must be a table of the `allowed` keys; hands it to f.
  template <typename F>
  Status section(const toml::table& root, std::string_view key,
                 std::span<const std::string_view> allowed, F&& f) const {
    const toml::node* n = root.get(key);
    if (!n) return std::nullopt;
    const auto* t = n->as_table();
    if (!t) {
      return at(n->source(), "'" + std::string(key) + "' must be a table ([" + std::string(key) +
                                 "]), not " + a_type(*n));
    }
    note(check_keys(*t, allowed, "[" + std::string(key) + "]"));
    return f(*t);
  }

  Status daemon_settings(const toml::table& d, DaemonSettings& out) const {
    note(get_bool(d, "root_unrestricted", out.root_unrestricted));
    return get_bool(d, "ephemeral_guard", out.ephemeral_guard);
  }

  Status limits(const toml::table& l, Limits& out) const {
    note(get_count(l, "max_connections_per_uid", out.max_connections_per_uid));
    return get_count(l, "max_leases_per_uid", out.max_leases_per_uid);
  }

  // Rules, reservations and pools are named in messages and commands, so a name is one thing.
  template <typename T>
  Status unique_name(const toml::table& t, std::string_view kind, const std::string& name,
                     const std::vector<T>& earlier) const {
    for (const auto& other : earlier) {
      if (other.name == name) {
        return at(name_source(t), "duplicate " + std::string(kind) + " name '" + name +
                                      "' (first defined at " + other.origin.to_string() + ")");
      }
    }
    return std::nullopt;
  }

  template <typename T>
  static Status append(Result<T> parsed, std::vector<T>& out) {
    if (!parsed) return parsed.error();
    out.push_back(std::move(parsed).value());
    return std::nullopt;
  }

  Result<Rule> rule(const toml::table& t, const std::vector<Rule>& earlier) const {
    Rule r;
    r.origin = origin(t);
    const size_t before = errors_.size();
    note(check_keys(t, kRuleKeys, "[[rule]]"));
    note(get_name(t, false, "a [[rule]]", r.name));
    if (r.name.empty()) r.name = "#" + std::to_string(earlier.size() + 1);
    note(unique_name(t, "rule", r.name, earlier));
    const std::string label = short_rule_label(r);
    note(get_ports(t, label, r.ports));
    note(get_protocols(t, r.protocols));
    note(get_addresses(t, r.addresses));
    note(get_modes(t, r.modes));
    note(get_count(t, "max_leases", r.max_leases));
    if (!note(get_principals(t, r.principals)) && r.principals.empty()) {
      note(at(t.source(), label + " grants nobody: give it users, groups or cgroups "
                                  "(users = [\"*\"] for anyone)"));
    }
    return finish(std::move(r), before);
  }

  Result<Reservation> reservation(const toml::table& t, bool runtime,
                                  const std::vector<Reservation>& earlier) const {
    Reservation r;
    r.origin = origin(t);
    r.runtime = runtime;
    const size_t before = errors_.size();
    note(check_keys(t, kReservationKeys, "[[reservation]]"));
    const bool named = !note(get_name(t, true, "a [[reservation]]", r.name));
    note(get_ports(t, "reservation '" + r.name + "'", r.ports));
    note(get_protocols(t, r.protocols));
    note(get_addresses(t, r.addresses));
    note(get_modes(t, r.modes));
    note(get_principals(t, r.principals));
    note(get_bool(t, "hold", r.hold));
    note(reservation_listen(t, r));
    if (named) note(unique_name(t, "reservation", r.name, earlier));
    return finish(std::move(r), before);
  }

  Status reservation_listen(const toml::table& t, Reservation& r) const {
    if (auto e = get_bool(t, "listen", r.listen)) return e;
    if (!r.listen && !r.hold) {
      return at(t.get("listen")->source(),
                "'listen = false' needs 'hold = true': only a held port is bound by the daemon");
    }
    return std::nullopt;
  }

  Result<Pool> pool(const toml::table& t, const std::vector<Pool>& earlier) const {
    Pool pool;
    pool.origin = origin(t);
    const size_t before = errors_.size();
    note(check_keys(t, kPoolKeys, "[[pool]]"));
    if (!note(get_name(t, true, "a [[pool]]", pool.name))) {
      note(unique_name(t, "pool", pool.name, earlier));
    }
    note(get_ports(t, "pool '" + pool.name + "'", pool.ports));
    note(get_protocols(t, pool.protocols));
    if (!note(get_principals(t, pool.principals)) && pool.principals.empty()) {
      note(at(t.source(), "pool '" + pool.name +
                              "' is open to nobody: give it users, groups or cgroups "
                              "(users = [\"*\"] for anyone)"));
    }
    return finish(std::move(pool), before);
  }

  // [[share]] is read by its own functions: sharing across uids is its own concern.
  Result<Share> share(const toml::table& t, const std::vector<Share>& earlier) const {
    Share sh;
    sh.origin = origin(t);
    const size_t before = errors_.size();
    note(check_keys(t, kShareKeys, "[[share]]"));
    if (!note(get_name(t, true, "a [[share]]", sh.name))) {
      note(unique_name(t, "share", sh.name, earlier));
    }
    const std::string label = "share '" + sh.name + "'";
    note(get_ports(t, label, sh.ports));
    note(get_protocols(t, sh.protocols));
    note(get_addresses(t, sh.addresses));
    note(share_modes(t, sh.modes));
    if (!note(get_principals(t, sh.principals)) && sh.principals.empty()) {
      note(at(t.source(), label + " shares with nobody: give it users, groups or cgroups"));
    }
    return finish(std::move(sh), before);
  }

  Status share_modes(const toml::table& t, ModeSet& out) const {
    if (auto e = get_modes(t, out)) return e;
    if (out.exclusive) {
      return at(t.get("modes")->source(),
                "a [[share]] cannot share an exclusive lease; its modes are shared and/or "
                "reuseport");
    }
    return std::nullopt;
  }

  Status reservations(const toml::table& root, bool runtime, std::vector<Reservation>& out) const {
    return each_table(root, "reservation", [&](const toml::table& t) {
      return append(reservation(t, runtime, out), out);
    });
  }

  Result<Policy> policy(const toml::table& root) const {
    Policy p;
    p.source = file_;
    auto read_daemon = [&](const toml::table& t) { return daemon_settings(t, p.daemon); };
    auto read_limits = [&](const toml::table& t) { return limits(t, p.limits); };
    auto read_rule = [&](const toml::table& t) { return append(rule(t, p.rules), p.rules); };
    auto read_pool = [&](const toml::table& t) { return append(pool(t, p.pools), p.pools); };
    auto read_events = [&](const toml::table& t) { return get_principals(t, p.event_readers); };
    auto read_share = [&](const toml::table& t) { return append(share(t, p.shares), p.shares); };
    note(check_keys(root, kTopKeys, ""));
    note(section(root, "daemon", kDaemonKeys, read_daemon));
    note(section(root, "limits", kLimitsKeys, read_limits));
    note(section(root, "events", kEventsKeys, read_events));
    note(each_table(root, "rule", read_rule));
    note(reservations(root, false, p.reservations));
    note(each_table(root, "pool", read_pool));
    note(each_table(root, "share", read_share));
    if (p.pools.empty()) p.pools.push_back(embedded_default_policy().pools.front());
    return outcome(std::move(p));
  }

  Result<std::vector<Reservation>> state(const toml::table& root) const {
    note(check_keys(root, kStateTopKeys, ""));
    const toml::node* v = root.get("version");
    if (!v) return at(root.source(), "state file has no 'version'");
    if (!v->is_integer() || v->as_integer()->get() != 1) {
      return at(v->source(), "unsupported state file version (this daemon writes version 1)");
    }
    std::vector<Reservation> out;
    note(reservations(root, true, out));
    return outcome(std::move(out));
  }

 private:
  std::string file_;
  const NameResolver* names_;
  mutable std::vector<Error> errors_;  // in the order of the file
};

template <typename T, typename F>
Result<T> parse_toml(std::string_view text, std::string_view file, F&& f) {
  try {
    toml::table root = toml::parse(text, file);
    return f(root);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    // toml++ quotes the offending input verbatim; keep the message on one line.
    std::string what;
    for (char c : e.description()) {
      if (c == '\n') {
        what += "\\n";
      } else if (static_cast<unsigned char>(c) < 0x20) {
        what += '?';
      } else {
        what += c;
      }
    }
    return make_error(ErrorCode::kBadRequest, std::string(file) + ":" + std::to_string(where.line) +
                                                  ":" + std::to_string(where.column) +
                                                  ": TOML syntax error: " + what);
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted,
                      std::string(file) + ": out of memory while parsing");
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInternal, std::string(file) + ": " + e.what());
  }
}

}  // namespace

Result<Policy> parse_policy(std::string_view toml_text, std::string_view file_name,
                            const NameResolver& names) {
  Parser parser(file_name, &names);
  return parse_toml<Policy>(toml_text, file_name,
                            [&](const toml::table& root) { return parser.policy(root); });
}

Result<std::vector<Reservation>> parse_state(std::string_view toml_text,
                                             std::string_view file_name) {
  Parser parser(file_name, nullptr);
  return parse_toml<std::vector<Reservation>>(
      toml_text, file_name, [&](const toml::table& root) { return parser.state(root); });
}

Policy embedded_default_policy() {
  Policy p;
  p.source = std::string(kEmbeddedSource);
  Rule unprivileged;
  unprivileged.name = "unprivileged-ports";
  unprivileged.origin = Origin{std::string(kEmbeddedSource), 0};
  unprivileged.principals.anyone = true;
  unprivileged.ports = {PortRange{1024, 65535}};
  p.rules.push_back(std::move(unprivileged));
  Pool pool;
  pool.name = "default";
  pool.origin = Origin{std::string(kEmbeddedSource), 0};
  pool.ports = {PortRange{20000, 29999}};
  pool.principals.anyone = true;
  p.pools.push_back(std::move(pool));
  return p;
}

// --- decisions ------------------------------------------------------------------------------

namespace {

Decision allow(std::string reason) {
  Decision d;
  d.allowed = true;
  d.code = ErrorCode::kOk;
  d.reason = std::move(reason);
  return d;
}

Decision deny(std::string reason, ErrorCode code = ErrorCode::kPermissionDenied) {
  Decision d;
  d.code = code;
  d.reason = std::move(reason);
  return d;
}

// Why a reservation that covers the request refuses it; empty when it admits the caller.
std::string reservation_refusal(const Reservation& r, const Principal& who, const Request& req) {
  const std::string reserved =
      "port " + std::to_string(req.port) + " is reserved for " + reservation_label(r);
  if (req.from_pool) return reserved + "; reserved ports are never handed out from a pool";
  if (!r.principals.matches(who)) {
    return reserved + "; " + who.describe() + " is not among its principals";
  }
  if (!r.modes.has(req.mode)) {
    return reserved + " in modes " + r.modes.to_string() + " only, not " + mode_name(req.mode);
  }
  return {};
}

// Any covering reservation that refuses decides; else the first that admits the caller grants.
// nullopt: no reservation covers the request.
std::optional<Decision> reservation_decision(std::span<const Reservation> reservations,
                                             const Principal& who, const Request& req) {
  const Reservation* grant = nullptr;
  for (const auto& r : reservations) {
    if (!reservation_covers(r, req.protocol, req.address, req.port)) continue;
    if (std::string why = reservation_refusal(r, who, req); !why.empty()) {
      Decision d = deny(std::move(why));
      d.reservation = r.name;
      return d;
    }
    if (!grant) grant = &r;
  }
  if (!grant) return std::nullopt;
  Decision d =
      allow("port " + std::to_string(req.port) + " is reserved for " + reservation_label(*grant) +
            " and " + who.describe() + " is among its principals");
  d.reservation = grant->name;
  return d;
}

Decision pool_decision(const Policy& policy, const Principal& who, const Request& req) {
  for (const auto& pool : policy.pools) {
    if (!pool.protocols.has(req.protocol) || !pool.principals.matches(who)) continue;
    if (req.port != 0 && !ports_contain(pool.ports, req.port)) continue;
    Decision d = allow("allowed by " + pool_label(pool));
    d.pool = pool.name;
    return d;
  }
  if (req.port == 0) {
    return deny("no pool in " + policy.source + " is open to " + who.describe() + " for " +
                protocol_name(req.protocol));
  }
  return deny("port " + std::to_string(req.port) + " is in no pool open to " + who.describe() +
              " for " + protocol_name(req.protocol));
}

bool rule_covers(const Rule& rule, Protocol p, const IpAddress& address, uint16_t port) {
  return rule.protocols.has(p) && ports_contain(rule.ports, port) &&
         address_set_grants(rule.addresses, address);
}

// Why a rule that covers the request does not grant it; nullopt when it grants.
std::optional<Decision> rule_refusal(const Rule& rule, const Principal& who, const Request& req,
                                     std::span<const HeldLease> held) {
  if (!rule.modes.has(req.mode)) {
    return deny(rule_label(rule) + " grants " + who.describe() + " " +
                format_endpoint(req.protocol, req.address, req.port) + " only in modes " +
                rule.modes.to_string() + ", not " + mode_name(req.mode));
  }
  if (!rule.max_leases) return std::nullopt;
  size_t count = std::count_if(held.begin(), held.end(), [&](const HeldLease& h) {
    return rule_covers(rule, h.protocol, h.address, h.port);
  });
  if (count < *rule.max_leases) return std::nullopt;
  return deny(who.describe() + " already holds " + std::to_string(count) + " leases under " +
                  rule_label(rule) + ", its max_leases",
              ErrorCode::kLimitExceeded);
}

// Rules only grant: the first covering rule that grants decides; else the first covering
// rule's refusal explains, else deny by default.
Decision rule_decision(const Policy& policy, const Principal& who, const Request& req,
                       std::span<const HeldLease> held) {
  std::optional<Decision> refusal;
  for (const auto& rule : policy.rules) {
    if (!rule_covers(rule, req.protocol, req.address, req.port) || !rule.principals.matches(who)) {
      continue;
    }
    auto why = rule_refusal(rule, who, req, held);
    if (!why) return allow("allowed by " + rule_label(rule));
    if (!refusal) refusal = std::move(why);
  }
  if (refusal) return *refusal;
  const std::string endpoint = format_endpoint(req.protocol, req.address, req.port);
  if (policy.source == kEmbeddedSource && req.port < 1024) {
    return deny(who.describe() + " may not lease " + endpoint +
                ": ports below 1024 are for root only under the embedded default policy (no "
                "policy file; a rule in one can grant it)");
  }
  return deny("no rule in " + policy.source + " grants " + who.describe() + " " + endpoint +
              " (deny by default)");
}

std::string share_label(const Share& sh) {
  return "share '" + sh.name + "' (" + sh.origin.to_string() + ")";
}

bool share_covers(const Share& sh, const Request& req) {
  return sh.protocols.has(req.protocol) && ports_contain(sh.ports, req.port) &&
         address_set_grants(sh.addresses, req.address) && sh.modes.has(req.mode);
}

// A share grants its principals its ports in its modes, as a rule would.
std::optional<Decision> share_grant(const Policy& policy, const Principal& who,
                                    const Request& req) {
  for (const auto& sh : policy.shares) {
    if (share_covers(sh, req) && sh.principals.matches(who)) {
      return allow("allowed by " + share_label(sh));
    }
  }
  return std::nullopt;
}

}  // namespace

Decision Policy::may_join(const Principal& joiner, const Principal& creator,
                          const Request& req) const {
  const Share* covering = nullptr;
  for (const auto& sh : shares) {
    if (!share_covers(sh, req)) continue;
    if (sh.principals.matches(joiner) && sh.principals.matches(creator)) {
      return allow("joined under " + share_label(sh));
    }
    if (covering == nullptr) covering = &sh;
  }
  const std::string endpoint = format_endpoint(req.protocol, req.address, req.port);
  if (covering == nullptr) {
    return deny("only " + creator.describe() + " or root may join it (no [[share]] in " + source +
                    " covers " + endpoint + " in mode " + mode_name(req.mode) + ")",
                ErrorCode::kConflict);
  }
  const Principal& outsider = covering->principals.matches(joiner) ? creator : joiner;
  return deny(outsider.describe() + " is not among the principals of " + share_label(*covering) +
                  " (" + covering->principals.to_string() + "), so " + joiner.describe() +
                  " may not join " + creator.describe() + "'s group",
              ErrorCode::kConflict);
}

Decision Policy::check(const Principal& who, const Request& req,
                       std::span<const HeldLease> held) const {
  const bool free_root = who.uid == 0 && daemon.root_unrestricted;
  if (!free_root && held.size() >= limits.max_leases_per_uid) {
    return deny(who.describe() + " already holds " + std::to_string(held.size()) +
                    " leases, the most allowed ([limits] max_leases_per_uid = " +
                    std::to_string(limits.max_leases_per_uid) + " in " + source + ")",
                ErrorCode::kLimitExceeded);
  }
  if (req.port != 0) {
    if (auto d = reservation_decision(reservations, who, req)) return *d;
  }
  if (free_root) {
    Decision d = allow("root is unrestricted ([daemon] root_unrestricted in " + source + ")");
    if (req.from_pool) {
      auto here = pools_at(req.protocol, req.port);
      if (!here.empty()) d.pool = here.front()->name;
    }
    return d;
  }
  if (req.port == 0 || req.from_pool) return pool_decision(*this, who, req);
  Decision d = rule_decision(*this, who, req, held);
  if (!d && d.code != ErrorCode::kLimitExceeded) {
    if (auto shared = share_grant(*this, who, req)) return *shared;
  }
  return d;
}

std::vector<const Pool*> Policy::pools_for(const Principal& who, Protocol p) const {
  std::vector<const Pool*> out;
  const bool free_root = who.uid == 0 && daemon.root_unrestricted;
  for (const auto& pool : pools)
    if (pool.protocols.has(p) && (free_root || pool.principals.matches(who))) out.push_back(&pool);
  return out;
}

std::vector<const Reservation*> Policy::reservations_at(Protocol p, uint16_t port) const {
  std::vector<const Reservation*> out;
  for (const auto& r : reservations)
    if (r.protocols.has(p) && ports_contain(r.ports, port)) out.push_back(&r);
  return out;
}

std::vector<const Pool*> Policy::pools_at(Protocol p, uint16_t port) const {
  std::vector<const Pool*> out;
  for (const auto& pool : pools)
    if (pool.protocols.has(p) && ports_contain(pool.ports, port)) out.push_back(&pool);
  return out;
}

std::vector<PortRange> Policy::guarded_ports() const {
  if (!daemon.ephemeral_guard) return {};
  std::vector<PortRange> all;
  for (const auto& r : reservations) all.insert(all.end(), r.ports.begin(), r.ports.end());
  for (const auto& p : pools) all.insert(all.end(), p.ports.begin(), p.ports.end());
  return normalize_ports(std::move(all));
}

namespace {

// Calls f(a, b) for every two entries of a list, each pair once, in list order.
template <typename T, typename F>
void for_each_pair(const std::vector<T>& list, F&& f) {
  for (size_t i = 0; i < list.size(); ++i)
    for (size_t j = i + 1; j < list.size(); ++j) f(list[i], list[j]);
}

void lint_reservations(const Policy& p, std::vector<std::string>& out) {
  for_each_pair(p.reservations, [&](const Reservation& a, const Reservation& b) {
    if (!reservations_collide(a, b)) return;
    ProtocolSet both{a.protocols.tcp && b.protocols.tcp, a.protocols.udp && b.protocols.udp};
    out.push_back(short_reservation_label(a) + " and " + short_reservation_label(b) +
                  " both claim " + both.to_string() + " " +
                  port_word(*first_common_ports(a.ports, b.ports)));
  });
}

void lint_pools(const Policy& p, std::vector<std::string>& out) {
  for (const auto& pool : p.pools) {
    for (const auto& r : p.reservations) {
      if (!pool.protocols.overlaps(r.protocols)) continue;
      if (auto common = first_common_ports(pool.ports, r.ports)) {
        out.push_back(pool_label(pool) + " contains " + port_word(*common) + " reserved by " +
                      short_reservation_label(r) +
                      "; reserved ports are never handed out from a pool");
      }
    }
  }
  for_each_pair(p.pools, [&](const Pool& a, const Pool& b) {
    if (!a.protocols.overlaps(b.protocols)) return;
    if (auto common = first_common_ports(a.ports, b.ports)) {
      out.push_back(pool_label(a) + " and " + pool_label(b) + " overlap on " + port_word(*common));
    }
  });
}

bool rule_addresses_overlap(const Rule& a, const Rule& b) {
  return a.addresses.empty() || b.addresses.empty() ||
         std::any_of(a.addresses.begin(), a.addresses.end(),
                     [&](const IpAddress& x) { return address_set_grants(b.addresses, x); });
}

// Two rules granting one principal the same ports: one of them is redundant or misleading.
std::optional<std::string> rule_overlap(const Rule& a, const Rule& b) {
  if (!a.protocols.overlaps(b.protocols)) return std::nullopt;
  auto common = first_common_ports(a.ports, b.ports);
  if (!common || !rule_addresses_overlap(a, b)) return std::nullopt;
  auto who = shared_principal(a.principals, b.principals);
  if (!who) return std::nullopt;
  bool same = a.modes.to_string() == b.modes.to_string() && a.max_leases == b.max_leases;
  return rule_label(a) + " and " + rule_label(b) + " both grant " + *who + " " +
         port_word(*common) +
         (same ? " (redundant)"
               : " with different modes or max_leases; either one suffices, since rules only "
                 "grant");
}

void lint_rules(const Policy& p, std::vector<std::string>& out) {
  // Each rule's own remark follows its overlaps, so that a rule's lines stay together.
  for (size_t i = 0; i < p.rules.size(); ++i) {
    const Rule& a = p.rules[i];
    for (size_t j = i + 1; j < p.rules.size(); ++j) {
      if (auto overlap = rule_overlap(a, p.rules[j])) out.push_back(std::move(*overlap));
    }
    if (a.max_leases && *a.max_leases > p.limits.max_leases_per_uid) {
      out.push_back(rule_label(a) + " allows max_leases = " + std::to_string(*a.max_leases) +
                    ", more than [limits] max_leases_per_uid = " +
                    std::to_string(p.limits.max_leases_per_uid) + "; the smaller limit applies");
    }
  }
}

}  // namespace

std::vector<std::string> Policy::lint() const {
  std::vector<std::string> out;
  lint_reservations(*this, out);
  lint_pools(*this, out);
  lint_rules(*this, out);
  return out;
}

// --- runtime reservations -------------------------------------------------------------------

namespace {

Error invalid_reservation_name(const std::string& name) {
  return make_error(ErrorCode::kBadRequest,
                    "invalid reservation name '" + name + "': " + std::string(kNameRule));
}

}  // namespace

Result<void> Policy::add_reservation(Reservation r) {
  if (!valid_name(r.name)) return invalid_reservation_name(r.name);
  if (r.ports.empty()) return make_error(ErrorCode::kBadRequest, "a reservation needs ports");
  for (const auto& other : reservations) {
    if (other.name == r.name) {
      return make_error(ErrorCode::kConflict, "reservation '" + r.name + "' already exists (" +
                                                  other.origin.to_string() + ")");
    }
    if (reservations_collide(r, other)) {
      return make_error(ErrorCode::kConflict,
                        "reservation '" + r.name + "' overlaps " + reservation_label(other) +
                            " on " + port_word(*first_common_ports(r.ports, other.ports)));
    }
  }
  r.runtime = true;
  reservations.push_back(std::move(r));
  return {};
}

Result<void> Policy::remove_reservation(std::string_view name) {
  auto it = std::find_if(reservations.begin(), reservations.end(),
                         [&](const Reservation& r) { return r.name == name; });
  if (it == reservations.end()) {
    return make_error(ErrorCode::kNotFound, "no reservation named '" + std::string(name) + "'");
  }
  if (!it->runtime) {
    return make_error(ErrorCode::kPermissionDenied,
                      "reservation '" + it->name + "' is defined in " + it->origin.to_string() +
                          "; edit that file and reload to remove it");
  }
  reservations.erase(it);
  return {};
}

std::vector<Reservation> Policy::runtime_reservations() const {
  std::vector<Reservation> out;
  for (const auto& r : reservations)
    if (r.runtime) out.push_back(r);
  return out;
}

Result<Reservation> make_runtime_reservation(std::string_view name, std::string_view target,
                                             std::span<const std::string> users,
                                             std::span<const std::string> groups, bool hold,
                                             const NameResolver& names) {
  Reservation r;
  r.name = std::string(name);
  r.origin = Origin{std::string(kReserveCommand), 0};
  r.runtime = true;
  r.hold = hold;
  if (!valid_name(name)) return invalid_reservation_name(r.name);
  auto parsed = ReservationTarget::parse(target);
  if (!parsed) return parsed.error();
  r.protocols = ProtocolSet{parsed->tcp, parsed->udp};
  if (parsed->address) r.addresses.push_back(*parsed->address);
  r.ports.push_back(parsed->ports);
  for (bool user : {true, false}) {
    for (const auto& n : user ? users : groups) {
      auto id = resolve_id(&names, user, n);
      if (!id) {
        return make_error(ErrorCode::kBadRequest,
                          std::string("unknown ") + (user ? "user" : "group") + " '" + n + "'");
      }
      (user ? r.principals.users : r.principals.groups).push_back(std::move(*id));
    }
  }
  return r;
}

Result<void> set_no_listen(Reservation& r) {
  if (!r.hold) {
    return make_error(ErrorCode::kBadRequest,
                      "--no-listen needs --hold: only a held port is bound by the daemon");
  }
  r.listen = false;
  return {};
}

namespace {

template <typename List, typename F>
toml::array toml_array(const List& list, F&& element) {
  toml::array out;
  for (const auto& x : list) out.push_back(element(x));
  return out;
}

int64_t numeric_id(const Principals::Id& id) { return int64_t{id.id}; }

toml::table state_table(const Reservation& r) {
  toml::table t;
  t.insert("name", r.name);
  t.insert("protocol", r.protocols.tcp && r.protocols.udp ? "both"
                       : r.protocols.udp                  ? "udp"
                                                          : "tcp");
  if (r.addresses.empty()) {
    t.insert("address", "any");
  } else {
    t.insert("address", toml_array(r.addresses, [](const IpAddress& a) { return a.to_string(); }));
  }
  t.insert("ports", toml_array(r.ports, [](const PortRange& p) { return p.to_string(); }));
  if (r.principals.anyone || !r.principals.users.empty()) {
    toml::array users;
    if (r.principals.anyone) users.push_back("*");
    for (const auto& u : r.principals.users) users.push_back(numeric_id(u));
    t.insert("users", std::move(users));
  }
  if (!r.principals.groups.empty()) t.insert("groups", toml_array(r.principals.groups, numeric_id));
  if (!r.principals.cgroups.empty()) {
    t.insert("cgroups", toml_array(r.principals.cgroups, [](const std::string& c) { return c; }));
  }
  toml::array modes;
  for (Mode m : {Mode::kExclusive, Mode::kShared, Mode::kReuseport})
    if (r.modes.has(m)) modes.push_back(mode_name(m));
  t.insert("modes", std::move(modes));
  t.insert("hold", r.hold);
  if (!r.listen) t.insert("listen", false);
  return t;
}

}  // namespace

std::string to_state_toml(std::span<const Reservation> runtime) {
  toml::array list = toml_array(runtime, state_table);
  toml::table root;
  root.insert("version", 1);
  if (!list.empty()) root.insert("reservation", std::move(list));
  std::ostringstream os;
  os << "# Runtime port reservations (portbroker reserve / unreserve).\n"
        "# Written by portbrokerd; edits are lost on the next change.\n"
     << root << "\n";
  return os.str();
}

}  // namespace portbroker::broker
