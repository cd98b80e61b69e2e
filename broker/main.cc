// portbrokerd: owns the host's port leases and hands out bound, listening sockets.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <uv.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <string>
#include <utility>

#include "broker/server.h"
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

bool parse_pool(const std::string& text, ServerConfig& cfg, std::string& why) {
  auto dash = text.find('-');
  unsigned lo = 0, hi = 0;
  if (dash == std::string::npos) {
    why = "expected LOW-HIGH, e.g. 20000-29999";
    return false;
  }
  auto a = std::from_chars(text.data(), text.data() + dash, lo);
  auto b = std::from_chars(text.data() + dash + 1, text.data() + text.size(), hi);
  if (a.ec != std::errc() || a.ptr != text.data() + dash || b.ec != std::errc() ||
      b.ptr != text.data() + text.size() || lo < 1 || hi > 65535 || lo > hi) {
    why = "'" + text + "' is not a range LOW-HIGH within 1-65535";
    return false;
  }
  cfg.pool_low = static_cast<uint16_t>(lo);
  cfg.pool_high = static_cast<uint16_t>(hi);
  return true;
}

struct Signals {
  uv_signal_t term{}, intr{};
  Server* server = nullptr;

  static void on_stop(uv_signal_t* h, int signum) {
    auto* self = static_cast<Signals*>(h->data);
    spdlog::info("received {}; shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    sd_notify(0, "STOPPING=1");
    self->server->stop();
    uv_close(reinterpret_cast<uv_handle_t*>(&self->term), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&self->intr), nullptr);
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "portbrokerd: the port broker daemon. Owns the host's port leases and hands bound,\n"
      "listening sockets to local processes over a Unix socket. Runs in the foreground."};
  ServerConfig cfg;
  cfg.socket_path = portbroker::ipc::default_socket_path();
  std::string config_path = portbroker::ipc::default_config_path();
  std::string state_dir = portbroker::ipc::default_state_dir();
  std::string log_level = "info";
  std::string pool = "20000-29999";
  app.add_option("--socket", cfg.socket_path, "control socket path")->capture_default_str();
  app.add_option("--config", config_path, "policy file (optional)")->capture_default_str();
  app.add_option("--state-dir", state_dir, "directory for runtime state")->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--pool", pool, "dynamic port pool for port-0 requests, LOW-HIGH")
      ->capture_default_str();
  app.add_option("--max-connections-per-uid", cfg.user_limits.connections,
                 "control connections per non-root uid")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-leases-per-uid", cfg.user_limits.leases, "leases per non-root uid")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-root-leases", cfg.root_limits.leases, "leases held by root")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  std::string why;
  if (!parse_pool(pool, cfg, why)) {
    std::fprintf(stderr, "portbrokerd: --pool: %s\n", why.c_str());
    return 2;
  }

  auto logger = spdlog::stderr_color_mt("portbrokerd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern(std::getenv("JOURNAL_STREAM") ? "%^%l%$: %v"
                                                    : "%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  ::signal(SIGPIPE, SIG_IGN);
  raise_fd_limit();

  uv_loop_t* loop = uv_default_loop();
  Server server(loop, cfg);
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

  spdlog::info("portbrokerd {} serving on {} (pool {}-{})", PORTBROKER_VERSION, cfg.socket_path,
               cfg.pool_low, cfg.pool_high);
  sd_notify(0, "READY=1\nSTATUS=serving");
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  spdlog::info("stopped");
  return 0;
}
