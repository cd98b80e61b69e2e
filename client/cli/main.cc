// `portbroker`: the command line for portbrokerd (leases, exec, reservations, diagnostics).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "client/intercept/plan.h"
#include "intercept.h"

namespace portbroker::cli {
namespace {

int fail(const Error& e) {
  std::fprintf(stderr, "portbroker: %s\n", e.message.c_str());
  return kExitFailed;
}

int print(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  return std::fflush(stdout) == 0 ? kExitOk : kExitFailed;
}

int run_list(const std::string& socket_path, bool json) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto leases = client->list();
  if (!leases) return fail(leases.error());
  return print(json ? leases_to_json(*leases).dump(2) + "\n" : format_lease_table(*leases));
}

int run_status(const std::string& socket_path, bool json) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto status = client->status();
  if (!status) return fail(status.error());
  return print(json ? status_to_json(*status).dump(2) + "\n" : format_status(*status));
}

int run_release(const std::string& socket_path, const std::string& id_text) {
  // Parsed here rather than by CLI11, which wraps "-1" into the largest uint64.
  auto id = parse_decimal(id_text);
  if (!id) {
    std::fprintf(stderr, "portbroker release: '%s' is not a lease ID\n", id_text.c_str());
    return kExitUsage;
  }
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto released = client->release(*id);
  if (!released) return fail(released.error());
  return kExitOk;
}

int run_reserve(const std::string& socket_path, const std::string& name, const std::string& target,
                const std::vector<std::string>& users, const std::vector<std::string>& groups,
                bool hold, bool no_listen) {
  if (no_listen && !hold) {
    std::fprintf(stderr, "portbroker reserve: --no-listen needs --hold\n");
    return kExitUsage;
  }
  // Checked here too, so that a typo is a usage error even before reaching the daemon.
  if (auto parsed = parse_reservation_target(target); !parsed) {
    std::fprintf(stderr, "portbroker reserve: %s\n", parsed.error().message.c_str());
    return kExitUsage;
  }
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto reserved = client->reserve(name, target, users, groups, hold, no_listen);
  if (!reserved) return fail(reserved.error());
  return kExitOk;
}

int run_unreserve(const std::string& socket_path, const std::string& name) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto removed = client->unreserve(name);
  if (!removed) return fail(removed.error());
  return kExitOk;
}

int run_reservations(const std::string& socket_path, bool json) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto list = client->reservations();
  if (!list) return fail(list.error());
  return print(json ? reservations_to_json(*list).dump(2) + "\n" : format_reservation_table(*list));
}

int run_reload(const std::string& socket_path) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto report = client->reload();
  if (!report) return fail(report.error());
  return print(format_reload(*report));
}

int run_shutdown(const std::string& socket_path, bool revoke_all) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  if (auto done = client->shutdown(revoke_all); !done) return fail(done.error());
  return print(revoke_all ? "portbrokerd revoked every lease and is stopping\n"
                          : "portbrokerd is stopping; every holder keeps its sockets\n");
}

int run_upgrade(const std::string& socket_path) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  if (auto done = client->upgrade(); !done) return fail(done.error());
  return print("portbrokerd is re-executing itself; leases, sessions and listeners carry on\n");
}

int run_who(const std::string& socket_path, const std::string& port_text, bool udp, bool json) {
  auto port = parse_port(port_text);
  if (!port || *port == 0) {
    std::fprintf(stderr, "portbroker who: '%s' is not a port (1-65535)\n", port_text.c_str());
    return kExitUsage;
  }
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto report = client->who(udp ? Protocol::kUdp : Protocol::kTcp, *port);
  if (!report) return fail(report.error());
  return print(json ? who_to_json(*report).dump(2) + "\n" : format_who(*report));
}

int run_check(const std::string& socket_path, bool json) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto problems = client->check();
  if (!problems) return fail(problems.error());
  int printed =
      print(json ? problems_to_json(*problems).dump(2) + "\n" : format_problems(*problems));
  return problems->empty() ? printed : kExitFailed;
}

// What `exec --help` (and portbroker(1)) says about a socket request.
constexpr const char* kSpecGrammar =
    "SPEC is [NAME=]PROTO:ADDRESS:PORT[,OPTION...], e.g. http=tcp:0.0.0.0:80,\n"
    "tcp:[::]:0,reuseport,backlog=1024 or udp:127.0.0.1:5353,shared.\n"
    "  NAME     the socket's name in LISTEN_FDNAMES and in listings\n"
    "  PROTO    tcp or udp\n"
    "  ADDRESS  an IPv4 address, or an IPv6 address in brackets ([::], [::1])\n"
    "  PORT     1-65535, or 0 for any free port from a pool\n"
    "  OPTION   exclusive (default) | shared | reuseport, backlog=N, v6only[=BOOL],\n"
    "           reuseaddr[=BOOL] (on by default for TCP), freebind[=BOOL],\n"
    "           defer_accept=SECONDS, fastopen=N, keepalive[=BOOL], rcvbuf=BYTES,\n"
    "           sndbuf=BYTES, device=IFNAME, linger=SECONDS (at most 3600), token=HEX\n";

// Every subcommand takes the global options itself too, so that its --help lists them and
// `portbroker list --socket X` reads as naturally as `portbroker --socket X list`.
void add_global_options(CLI::App& app, std::string& socket_path) {
  const char* help =
      "portbrokerd's control socket (default: $PORTBROKER_SOCKET, else the standard path)";
  app.add_option("--socket", socket_path, help);
  for (CLI::App* sub : app.get_subcommands({})) sub->add_option("--socket", socket_path, help);
}

int run_metrics(const std::string& socket_path) {
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto text = client->metrics();
  if (!text) return fail(text.error());
  return print(*text);
}

int run_events(const std::string& socket_path, bool json, const std::string& since_text) {
  std::optional<uint64_t> since;
  if (!since_text.empty()) {
    since = parse_decimal(since_text);
    if (!since) {
      std::fprintf(stderr, "portbroker events: --since '%s' is not a sequence number\n",
                   since_text.c_str());
      return kExitUsage;
    }
  }
  auto client = Client::connect(socket_path);
  if (!client) return fail(client.error());
  auto stream = client->events(since);
  if (!stream) return fail(stream.error());
  // Line-buffered: whoever reads the pipe sees each event as it happens.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  for (const Event& e : *stream) {
    if (print(json ? event_to_json(e).dump() + "\n" : format_event(e)) != kExitOk) {
      return kExitFailed;  // the reader went away
    }
  }
  return fail(stream->error());
}

int run(int argc, char** argv) {
  CLI::App app{
      "Ask portbrokerd for ports; list and release leases; reserve ports; find out "
      "who holds a port.",
      "portbroker"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("portbroker ") + PORTBROKER_VERSION,
                       "Print the version and exit.");
  app.footer("Run `portbroker COMMAND --help` for a command's options; see portbroker(1).");
  std::string socket_path;

  bool json = false;
  auto* list = app.add_subcommand("list", "List leases.");
  list->add_flag("--json", json, "Print JSON.");

  auto* status = app.add_subcommand("status", "Show the daemon's status.");
  status->add_flag("--json", json, "Print JSON.");

  std::string lease_id;
  auto* release = app.add_subcommand("release", "Release (revoke) a lease.");
  release->add_option("ID", lease_id, "Lease ID, as shown by `portbroker list`.")->required();

  std::vector<std::string> specs;
  std::vector<std::string> command;
  auto* exec = app.add_subcommand("exec", "Acquire sockets, then run a command with them.");
  exec->footer(std::string(kSpecGrammar) +
               "\nCMD gets the sockets as fds 3, 4, ... with LISTEN_FDS, LISTEN_PID and "
               "LISTEN_FDNAMES set as systemd socket activation sets them, so any "
               "sd_listen_fds(3) server runs unchanged. Like systemd-socket-activate, CMD "
               "inherits no other fd than 0-2, the sockets and the session's (its number in "
               "PORTBROKER_SESSION_FD) unless --keep-fds. The leases last as long as CMD (or "
               "any process it passes the session fd to) runs. With --intercept, CMD's own "
               "bind() calls become broker requests (a preload library, and a seccomp filter "
               "for static binaries), so a server that binds by itself runs unchanged too.\n"
               "Examples: portbroker exec --listen http=tcp:0.0.0.0:8080 -- lighttpd -D -f "
               "lighttpd.conf\n          portbroker exec --intercept -- nginx -g 'daemon off;'");
  exec->add_option("--listen", specs,
                   "A socket to acquire (SPEC, below), e.g. http=tcp:0.0.0.0:8080. Repeat for "
                   "more; all are acquired or none.")
      ->type_name("SPEC")
      ->allow_extra_args(false);
  bool keep_fds = false;
  exec->add_flag("--keep-fds", keep_fds,
                 "Pass every inherited fd on to CMD, not only stdio, the sockets and the "
                 "session.");
  InterceptOptions intercept;
  exec->add_flag("--intercept", intercept.enabled,
                 "Broker every bind() CMD and its descendants make (an unmodified server: "
                 "nginx, redis, node, a static Go binary), as well as any --listen.");
  exec->add_option("--pass-loopback", intercept.pass_loopback,
                   "With --intercept: loopback ports (PORT[-PORT][,...]) whose binds on "
                   "127.0.0.0/8 or ::1 go to the kernel untouched.");
  exec->add_option("--linger", intercept.linger,
                   "With --intercept: seconds each intercepted lease lingers after its holder "
                   "exits, for a restarted server to take back.");
  exec->add_option("CMD", command, "The command and its arguments (after `--`).")->required();
  exec->positionals_at_end();  // everything from CMD on belongs to CMD

  std::string name, target;
  std::vector<std::string> users, groups;
  bool hold = false, no_listen = false;
  auto* reserve = app.add_subcommand("reserve", "Reserve a port or range for a service (root).");
  reserve->footer(
      "Only the given users and groups may lease a reserved port; with --hold the daemon binds "
      "it now and keeps it, so no process outside the broker can take it, and the first "
      "entitled lease receives that very socket. Runtime reservations survive daemon "
      "restarts.\nExample: portbroker reserve web tcp:any:80 --user www-data --hold");
  reserve->add_option("NAME", name, "The reservation's name.")->required();
  reserve
      ->add_option("TARGET", target,
                   "PROTO:ADDRESS:PORT[-PORT]: PROTO tcp, udp or both; ADDRESS an address "
                   "or any.")
      ->required();
  reserve->add_option("--user", users, "A user (name or uid) who may lease it. Repeatable.")
      ->allow_extra_args(false);
  reserve->add_option("--group", groups, "A group (name or gid) that may lease it. Repeatable.")
      ->allow_extra_args(false);
  reserve->add_flag("--hold", hold, "Bind the port now and keep it until leased.");
  reserve->add_flag("--no-listen", no_listen,
                    "With --hold: keep TCP sockets bound but never listening, for ports "
                    "published by DNAT (CNI portmap, hostPort): no connection is accepted.");

  auto* unreserve = app.add_subcommand("unreserve", "Remove a runtime reservation (root).");
  unreserve->add_option("NAME", name, "The reservation's name.")->required();

  auto* reservations = app.add_subcommand("reservations", "List reservations.");
  reservations->add_flag("--json", json, "Print JSON.");

  auto* reload = app.add_subcommand("reload", "Reload the policy, keeping every lease (root).");

  bool revoke_all = false;
  auto* shutdown = app.add_subcommand("shutdown", "Stop the daemon (root).");
  shutdown->footer(
      "Holders keep their sockets (stopping is not revoking), as with SIGTERM. With "
      "--revoke-all every lease is revoked first: each listener is shut down.");
  shutdown->add_flag("--revoke-all", revoke_all, "Revoke every lease before stopping.");

  auto* upgrade = app.add_subcommand("upgrade", "Re-execute the daemon in place (root).");
  upgrade->footer(
      "The new binary takes over the control socket, every session and every socket: no "
      "listener closes and no request is refused. SIGUSR2 does the same.");

  std::string port;
  bool udp = false;
  auto* who = app.add_subcommand("who", "Show who holds a port, and why one may not bind it.");
  who->footer(
      "Lists the port's leases, the processes outside the broker holding it, its reservations "
      "and pools, and whether it lies in the kernel's ephemeral range unprotected.");
  who->add_option("PORT", port, "The port (1-65535).")->required();
  who->add_flag("--udp", udp, "The UDP port (default: TCP).");
  who->add_flag("--json", json, "Print JSON.");

  auto* check = app.add_subcommand("check", "Report problems to fix before a restart.");
  check->footer(
      "Reservations held outside the broker, reservations in the ephemeral range unprotected, "
      "contradictory rules, leases the current policy would refuse. Exit status 1 when there "
      "is any problem.");
  check->add_flag("--json", json, "Print JSON.");

  std::string since;
  auto* events = app.add_subcommand("events", "Stream what the daemon does, as it happens.");
  events->footer(
      "One line per event: SEQ TIME KIND then key=value fields. Kinds: acquired, reclaimed, "
      "released, revoked, holder-exited, lingering, expired, refused, reservation-added, "
      "reservation-removed, reservation-held, hold-failed, policy-reloaded, daemon-started, and "
      "lost (this reader missed COUNT events). Users other than root see only events about "
      "their own leases unless the policy's [events] names them.");
  events->add_flag("--json", json, "Print one JSON object per line.");
  events->add_option("--since", since,
                     "First print the recent events after sequence number SEQ that the daemon "
                     "still keeps (after a reconnect: the last SEQ seen).");

  auto* metrics = app.add_subcommand("metrics", "Print the daemon's metrics (Prometheus text).");
  add_global_options(app, socket_path);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports an unknown command as a missing one; name what was typed instead.
    if (app.get_subcommands().empty()) {
      for (const std::string& word : app.remaining()) {
        if (!word.empty() && word[0] != '-') {
          std::fprintf(stderr, "portbroker: unknown command '%s' (see portbroker --help)\n",
                       word.c_str());
          return kExitUsage;
        }
      }
    }
    int code = app.exit(e);  // prints help (exit 0) or the error
    return code == 0 ? kExitOk : kExitUsage;
  }

  if (*list) return run_list(socket_path, json);
  if (*status) return run_status(socket_path, json);
  if (*release) return run_release(socket_path, lease_id);
  if (*exec) {
    if (specs.empty() && !intercept.enabled) {
      std::fprintf(stderr, "portbroker exec: --listen is required (or --intercept)\n");
      return kExitUsage;
    }
    if (!intercept.pass_loopback.empty()) {
      if (auto pass = intercept::PassList::parse(intercept.pass_loopback); !pass) {
        std::fprintf(stderr, "portbroker exec: %s\n", pass.error().message.c_str());
        return kExitUsage;
      }
    }
    if (!intercept.linger.empty() && !parse_decimal(intercept.linger, 3600)) {
      std::fprintf(stderr, "portbroker exec: --linger takes seconds (0-3600), not '%s'\n",
                   intercept.linger.c_str());
      return kExitUsage;
    }
    return run_exec(socket_path, specs, command, intercept, keep_fds);
  }
  if (*reserve) return run_reserve(socket_path, name, target, users, groups, hold, no_listen);
  if (*unreserve) return run_unreserve(socket_path, name);
  if (*reservations) return run_reservations(socket_path, json);
  if (*reload) return run_reload(socket_path);
  if (*who) return run_who(socket_path, port, udp, json);
  if (*check) return run_check(socket_path, json);
  if (*shutdown) return run_shutdown(socket_path, revoke_all);
  if (*upgrade) return run_upgrade(socket_path);
  if (*events) return run_events(socket_path, json, since);
  if (*metrics) return run_metrics(socket_path);
  return kExitUsage;
}

}  // namespace
}  // namespace portbroker::cli

int main(int argc, char** argv) {
  try {
    return portbroker::cli::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "portbroker: %s\n", e.what());
    return portbroker::cli::kExitFailed;
  }
}
