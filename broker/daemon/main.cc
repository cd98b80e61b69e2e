// portbrokerd: owns the host's port leases and hands out bound, listening sockets.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>

#include "broker/daemon/privileges.h"
#include "broker/daemon/server.h"
#include "ipc/paths.h"

namespace {

using portbroker::broker::Server;
using portbroker::broker::ServerConfig;

// Leases are sockets: let the daemon use every fd the hard limit allows.
void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// Before anything is served (and before libuv's pool starts a thread): the capabilities the
// configured features need and nothing else, no_new_privs, and the system-call allow-list. An
// upgraded daemon starts with exactly this, so start-up itself must work within it.
bool reduce_privileges(const portbroker::broker::Policy& policy, bool filter) {
  namespace pb = portbroker::broker;
  pb::PrivilegeFeatures features{.root = ::geteuid() == 0,
                                 .guard = !policy.guarded_ports().empty()};
  auto caps = pb::drop_privileges(pb::needed_capabilities(features));
  if (!caps) {
    spdlog::critical("cannot start: {}", caps.error().message);
    return false;
  }
  for (const auto& c : caps->kept) spdlog::info("privileges: keeping {}", c);
  for (const auto& c : caps->missing) spdlog::warn("privileges: lacking {}", c);
  if (!caps->bounding_dropped) {
    spdlog::info("privileges: no CAP_SETPCAP, so the bounding set stays as given");
  }
  if (!filter) {
    spdlog::warn("privileges: no_new_privs set; system-call filter off (--no-seccomp)");
    return true;
  }
  if (pb::sanitizer_build()) {
    // LeakSanitizer's check at exit hangs under the filter (its tracer is stopped for good),
    // so `make test-asan` runs without it; `make test` runs every test with it.
    spdlog::warn("privileges: no_new_privs set; system-call filter off in a sanitizer build");
    return true;
  }
  auto f = pb::install_syscall_filter();
  if (!f) {
    spdlog::critical("cannot start: {}", f.error().message);
    return false;
  }
  spdlog::info("privileges: no_new_privs set; seccomp allow-list of {} system calls{}", f->syscalls,
               f->inherited ? " (inherited through the upgrade)" : "");
  return true;
}

struct Signals {
  uv_signal_t term{}, intr{}, hup{}, usr2{};
  Server* server = nullptr;
  bool stopped = false;

  static void on_hup(uv_signal_t* h, int) {
    auto* self = static_cast<Signals*>(h->data);
    spdlog::info("received SIGHUP; reloading the policy");
    try {
      (void)self->server->reload();
    } catch (const std::exception& e) {
      spdlog::error("reload failed: {}", e.what());
    }
  }

  static void on_stop(uv_signal_t* h, int signum) {
    auto* self = static_cast<Signals*>(h->data);
    spdlog::info("received {}; stopping (every holder keeps its sockets)",
                 signum == SIGTERM ? "SIGTERM" : "SIGINT");
    self->stop(false);
  }

  void stop(bool revoke_all) {
    if (stopped) return;
    stopped = true;
    sd_notify(0, "STOPPING=1");
    server->stop(revoke_all);
    uv_close(reinterpret_cast<uv_handle_t*>(&term), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&intr), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&hup), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&usr2), nullptr);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (auto r = portbroker::broker::catch_filtered_syscalls(); !r) {
    std::fprintf(stderr, "portbrokerd: %s\n", r.error().message.c_str());
    return 1;
  }
  CLI::App app{
      "portbrokerd: the port broker daemon. Owns the host's port leases and hands bound,\n"
      "listening sockets to local processes over a Unix socket. Runs in the foreground."};
  app.set_version_flag("--version", std::string("portbrokerd ") + PORTBROKER_VERSION,
                       "print the version and exit");
  ServerConfig cfg;
  cfg.socket_path = portbroker::ipc::default_socket_path();
  cfg.config_path = portbroker::ipc::default_config_path();
  cfg.state_dir = portbroker::ipc::default_state_dir();
  std::string log_level = "info";
  std::string pool;
  std::string check_config;
  app.add_option("--socket", cfg.socket_path, "control socket path")->capture_default_str();
  app.add_option("--config", cfg.config_path,
                 "policy file; without one the embedded default policy serves")
      ->capture_default_str();
  app.add_option("--check-config", check_config,
                 "validate a policy file, print what is wrong, and exit (0: valid)");
  app.add_option("--state-dir", cfg.state_dir, "directory for runtime state (reservations)")
      ->capture_default_str();
  app.add_option("--runtime-dir", cfg.runtime_dir,
                 "directory of the lease journal (default: the control socket's directory)");
  app.add_flag("--fd-store", cfg.fd_store,
               "keep every socket and session in systemd's fd store (FileDescriptorStoreMax=), "
               "so that a restart loses nothing; on by default when $FDSTORE is set");
  bool no_journal = false;
  app.add_flag("--no-journal", no_journal,
               "keep no lease journal: a restarted daemon forgets every lease");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--pool", pool,
                 "ports of the pool named \"default\" for port-0 requests, LOW-HIGH "
                 "(default 20000-29999)");
  app.add_option("--max-connections-per-uid", cfg.max_connections_per_uid,
                 "control connections per non-root uid (overrides the policy's [limits])")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-leases-per-uid", cfg.max_leases_per_uid,
                 "leases per non-root uid (overrides the policy's [limits])")
      ->check(CLI::Range(1, 1 << 20));
  double request_timeout_s = 30;
  app.add_option("--request-timeout", request_timeout_s,
                 "seconds a new connection has to send its first request")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  app.add_option("--max-root-leases", cfg.root_limits.leases, "leases held by root")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--metrics-textfile", cfg.metrics_textfile,
                 "write the metrics (Prometheus text) to this file every few seconds and on "
                 "change, atomically, for node_exporter's textfile collector (name it *.prom)");
  double metrics_interval_s = 5;
  app.add_option("--metrics-interval", metrics_interval_s,
                 "seconds between rewrites of the metrics textfile")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  app.add_option("--events-ring", cfg.events.ring,
                 "recent events kept for `portbroker events --since`")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--events-queue", cfg.events.queue,
                 "events waiting per subscriber that reads slowly, before it loses them")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  bool no_seccomp = false;
  app.add_flag("--no-seccomp", no_seccomp,
               "debugging: install no system-call filter (capabilities are still dropped)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  cfg.first_request_timeout_ms = static_cast<uint64_t>(request_timeout_s * 1000);
  cfg.metrics_interval_ms = static_cast<uint64_t>(metrics_interval_s * 1000);
  cfg.journal = !no_journal;
  // systemd 254 and later say how many fds it keeps for the service.
  if (const char* store = std::getenv("FDSTORE"); store && std::atoi(store) > 0) {
    cfg.fd_store = true;
  }
  if (!pool.empty()) {
    auto range = portbroker::broker::parse_port_range(pool);
    if (!range) {
      std::fprintf(stderr, "portbrokerd: --pool: %s\n", range.error().message.c_str());
      return 2;
    }
    cfg.pool = *range;
  }
  if (!check_config.empty()) {
    ServerConfig only_file = cfg;
    only_file.config_path = check_config;
    only_file.state_dir.clear();
    if (!std::filesystem::exists(check_config)) {
      std::fprintf(stderr, "portbrokerd: %s: no such file\n", check_config.c_str());
      return 1;
    }
    auto policy = portbroker::broker::load_policy(only_file.policy_source());
    if (!policy) {
      std::fprintf(stderr, "%s\n", policy.error().message.c_str());
      return 1;
    }
    for (const auto& line : policy->lint()) std::printf("warning: %s\n", line.c_str());
    std::printf("%s: valid (%zu rules, %zu reservations, %zu pools)\n", check_config.c_str(),
                policy->rules.size(), policy->reservations.size(), policy->pools.size());
    return 0;
  }

  auto logger = spdlog::stderr_color_mt("portbrokerd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern(std::getenv("JOURNAL_STREAM") ? "%^%l%$: %v"
                                                    : "%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  ::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();

  auto policy = portbroker::broker::load_policy(cfg.policy_source());
  if (!policy) {
    spdlog::critical("cannot start: {}", policy.error().message);
    return 1;
  }
  spdlog::info("policy: {}", policy->source);
  for (const auto& line : policy->lint()) spdlog::warn("policy: {}", line);

  if (!reduce_privileges(*policy, !no_seccomp)) return 1;

  uv_loop_t* loop = uv_default_loop();
  Server server(loop, cfg, std::move(policy).value());
  if (auto r = server.start(); !r) {
    spdlog::critical("cannot start: {}", r.error().message);
    server.stop();
    uv_run(loop, UV_RUN_DEFAULT);
    return 1;
  }

  Signals sig;
  sig.server = &server;
  for (auto [handle, signum] : {std::pair{&sig.term, SIGTERM}, std::pair{&sig.intr, SIGINT}}) {
    uv_signal_init(loop, handle);
    handle->data = &sig;
    uv_signal_start(handle, &Signals::on_stop, signum);
  }
  server.on_shutdown_request = [&sig](bool revoke_all) { sig.stop(revoke_all); };
  uv_signal_init(loop, &sig.usr2);
  sig.usr2.data = &server;
  uv_signal_start(
      &sig.usr2,
      [](uv_signal_t* h, int) {
        spdlog::info("received SIGUSR2; upgrading in place");
        static_cast<Server*>(h->data)->request_upgrade();
      },
      SIGUSR2);
  uv_signal_init(loop, &sig.hup);
  sig.hup.data = &sig;
  uv_signal_start(&sig.hup, &Signals::on_hup, SIGHUP);

  spdlog::info("portbrokerd {} serving on {}", PORTBROKER_VERSION, cfg.socket_path);
  sd_notify(0, "READY=1\nSTATUS=serving");
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  spdlog::info("stopped");
  return 0;
}
