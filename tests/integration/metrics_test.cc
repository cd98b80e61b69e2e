// Metrics: `portbroker metrics` and --metrics-textfile, read by the real prometheus-node-exporter
// (Debian's package) through its textfile collector, with values matching list and status.
#include <doctest/doctest.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <string>

#include "harness.h"

using namespace pbtest;

namespace {

constexpr const char* kNodeExporter = "/usr/bin/prometheus-node-exporter";
constexpr uint16_t kExporterPort = 19100;

// "name{a="1",b="2"}" with its labels sorted, so that it compares whatever order a writer chose.
using Samples = std::map<std::string, double>;

Samples parse_exposition(const std::string& text) {
  static const std::regex label(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)")re");
  Samples out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty() || line[0] == '#') continue;
    size_t space = line.rfind(' ');
    if (space == std::string::npos) continue;
    std::string series = line.substr(0, space);
    double value = std::stod(line.substr(space + 1));
    std::string key = series.substr(0, series.find('{'));
    std::map<std::string, std::string> labels;
    for (std::sregex_iterator it(series.begin(), series.end(), label), stop; it != stop; ++it) {
      labels[(*it)[1]] = (*it)[2];
    }
    if (!labels.empty()) {
      key += "{";
      for (const auto& [k, v] : labels) key += k + "=\"" + v + "\",";
      key.back() = '}';
    }
    out[key] = value;
  }
  return out;
}

std::optional<double> value(const Samples& s, const std::string& key) {
  auto it = s.find(key);
  if (it == s.end()) return std::nullopt;
  return it->second;
}

// One HTTP/1.0 GET of /metrics on the exporter; empty when it does not answer.
std::string scrape() {
  UniqueFd c = connect_tcp(kExporterPort);
  if (!c.valid()) return {};
  if (!send_all(c.get(), "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")) return {};
  std::string body;
  char buf[65536];
  for (;;) {
    pollfd p{c.get(), POLLIN, 0};
    if (::poll(&p, 1, 20'000) <= 0) return {};
    ssize_t n = ::read(c.get(), buf, sizeof(buf));
    if (n < 0) return {};
    if (n == 0) break;
    body.append(buf, static_cast<size_t>(n));
  }
  size_t head = body.find("\r\n\r\n");
  return head == std::string::npos ? std::string() : body.substr(head + 4);
}

// Repeats `pred` on a fresh scrape until it holds, up to a generous deadline: the daemon
// rewrites the file on change, the exporter reads it at each scrape.
bool scrape_until(const std::function<bool(const Samples&)>& pred, std::string& last) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    last = scrape();
    if (!last.empty() && pred(parse_exposition(last))) return true;
    ::poll(nullptr, 0, 50);
  }
  return false;
}

}  // namespace

TEST_CASE("portbroker metrics: Prometheus text with what the daemon did") {
  FdLeakCheck fds;
  Daemon d;
  portbroker::Client c = d.connect();
  auto lease = c.acquire("tcp:127.0.0.1:18500,reuseport");
  REQUIRE(lease.ok());
  AcquireOutcome refused = acquire_in_child(d, "tcp:127.0.0.1:18500");
  CHECK_FALSE(refused.ok);

  CommandResult r = run_cli(d, {"metrics"});
  REQUIRE_MESSAGE(r.status.ok(), r.describe());
  INFO(r.out);
  const Samples s = parse_exposition(r.out);
  CHECK(value(s, R"(portbroker_leases{mode="reuseport",protocol="tcp",state="active"})") == 1);
  CHECK(value(s, R"(portbroker_leases{mode="exclusive",protocol="tcp",state="active"})") == 0);
  CHECK(value(s, "portbroker_grants_total") == 1);
  CHECK(value(s, R"(portbroker_refusals_total{reason="conflict"})") == 1);
  CHECK(value(s, R"(portbroker_refusals_total{reason="permission-denied"})") == 0);
  CHECK(value(s, "portbroker_acquire_duration_seconds_count") == 2);
  CHECK(value(s, R"(portbroker_acquire_duration_seconds_bucket{le="+Inf"})") == 2);
  CHECK(value(s, R"(portbroker_uid_leases{uid=")" + std::to_string(::getuid()) + "\"}") == 1);
  CHECK(value(s, R"(portbroker_pool_free_ports{pool="default",protocol="tcp"})") == 10000);
  CHECK(value(s, R"(portbroker_pool_ports{pool="default"})") == 10000);
  CHECK(value(s, "portbroker_max_fds") > 0);
  CHECK(value(s, R"(portbroker_build_info{version=")" + std::string(PORTBROKER_VERSION) + "\"}") ==
        1);
  // Every sample's family is declared (HELP and TYPE) before it.
  CHECK(contains(r.out, "# TYPE portbroker_acquire_duration_seconds histogram\n"));
  CHECK(contains(r.out, "# TYPE portbroker_refusals_total counter\n"));
  CHECK(contains(r.out, "# TYPE portbroker_leases gauge\n"));

  auto status = c.status();
  REQUIRE(status.ok());
  CHECK(value(s, "portbroker_start_time_seconds") ==
        doctest::Approx(static_cast<double>(status->started_at_ms) / 1000.0));
}

TEST_CASE("node_exporter reads the metrics textfile; its values match list and status") {
  REQUIRE_MESSAGE(::access(kNodeExporter, X_OK) == 0,
                  kNodeExporter << " is missing: run packaging/install-deps.sh");
  FdLeakCheck fds;
  TempDir textdir;
  const std::string prom = textdir.path() + "/portbroker.prom";
  Daemon d(DaemonOptions{.args = {"--metrics-textfile", prom, "--metrics-interval", "0.2"}});
  // Written at start, before anything happened.
  REQUIRE(path_exists(prom));
  CHECK(contains(read_file(prom), "portbroker_grants_total 0\n"));

  Child exporter =
      Child::exec({kNodeExporter, "--collector.disable-defaults", "--collector.textfile",
                   "--collector.textfile.directory=" + textdir.path(),
                   "--web.listen-address=127.0.0.1:" + std::to_string(kExporterPort)});

  portbroker::Client c = d.connect();
  auto a = c.acquire("tcp:127.0.0.1:18510");
  auto b = c.acquire("udp:127.0.0.1:18511,shared");
  auto pooled = c.acquire("tcp:127.0.0.1:0");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(pooled.ok());
  auto leases = c.list();
  auto status = c.status();
  REQUIRE(leases.ok());
  REQUIRE(status.ok());
  REQUIRE(leases->size() == 3);

  const std::string uid = std::to_string(::getuid());
  std::string last;
  bool matched = scrape_until(
      [&](const Samples& s) {
        return value(s, "node_textfile_scrape_error") == 0 &&
               value(s, R"(portbroker_leases{mode="exclusive",protocol="tcp",state="active"})") ==
                   2 &&
               value(s, R"(portbroker_leases{mode="shared",protocol="udp",state="active"})") == 1 &&
               value(s, "portbroker_sessions") == status->sessions;
      },
      last);
  INFO("exporter output:\n" << exporter.output() << "\nlast scrape:\n" << last);
  REQUIRE(matched);
  const Samples s = parse_exposition(last);
  double total = 0;
  for (const auto& [key, v] : s) {
    if (key.starts_with("portbroker_leases{")) total += v;
  }
  CHECK(total == static_cast<double>(leases->size()));
  CHECK(value(s, "portbroker_uid_leases{uid=\"" + uid + "\"}") ==
        static_cast<double>(leases->size()));
  CHECK(value(s, "portbroker_grants_total") == 3);
  CHECK(value(s, "portbroker_start_time_seconds") ==
        doctest::Approx(static_cast<double>(status->started_at_ms) / 1000.0));
  CHECK(value(s, R"(portbroker_pool_ports{pool="default"})") ==
        status->pool_high - status->pool_low + 1);
  // The pooled lease took one of the pool's ports.
  CHECK(value(s, R"(portbroker_pool_free_ports{pool="default",protocol="tcp"})") ==
        status->pool_high - status->pool_low);
  CHECK(value(s, "portbroker_open_fds") > 0);

  // On change: the released leases are seen without waiting for the period.
  a = portbroker::Error{};
  b = portbroker::Error{};
  pooled = portbroker::Error{};
  CHECK(scrape_until(
      [&](const Samples& now) {
        return value(now, "node_textfile_scrape_error") == 0 &&
               value(now, R"(portbroker_lease_ends_total{why="released"})") == 3 &&
               value(now, R"(portbroker_leases{mode="exclusive",protocol="tcp",state="active"})") ==
                   0;
      },
      last));

  exporter.kill(SIGTERM);
  exporter.wait();
}
