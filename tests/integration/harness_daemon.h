// Harness, the daemon: one real portbrokerd per Daemon object, started in the test process's
// private network namespace, and the `portbroker` CLI run against it.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness_child.h"
#include "harness_files.h"
#include "portbroker/client.hpp"

namespace pbtest {

class ServiceManager;

struct DaemonOptions {
  std::vector<std::string> args;  // extra command-line arguments
  const TempDir* dir = nullptr;   // share a directory (e.g. to restart on the same socket)
  std::string log_level = "debug";
  std::optional<long> nofile_limit;
  std::string config_text;  // written to <dir>/portbroker.toml when set; else no config file
  std::string socket_path;  // default: <dir>/portbroker.sock
  // Plays systemd (harness_fdstore.h): the daemon runs with --fd-store, NOTIFY_SOCKET is the
  // manager's, and what the manager keeps is passed as LISTEN_FDS. Its control socket file then
  // outlives a SIGTERM, as it must for the next daemon.
  ServiceManager* manager = nullptr;
};

// One running portbrokerd, in its own 0755 temp dir with its log in a file there. The constructor
// returns once it has sent READY=1 and answered a status request (the test fails otherwise).
// Destruction checks it leaked no fd (declare it before the test's clients, so they are gone by
// then), SIGTERMs it and checks it exited 0 and removed its socket file. While it lives, its log
// is printed with any failing assertion.
class Daemon {
 public:
  // For the failure-log listener (harness_main.cc): prints the log of every live daemon once
  // per test case.
  static void print_live_logs_once();
  static void new_test_case();

  explicit Daemon(DaemonOptions opts = {});
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  const std::string& dir() const { return dir_->path(); }
  pid_t pid() const { return pid_; }
  std::string log() const;
  std::string log_tail(size_t max_bytes = 12000) const;
  int fd_count() const { return static_cast<int>(list_fds(pid_).size()); }
  bool alive() const;

  // The environment that makes a client (library or CLI) find this daemon.
  std::map<std::string, std::string> client_env() const {
    return {{"PORTBROKER_SOCKET", socket_path_}};
  }
  portbroker::Client connect() const;  // REQUIREs success

  // Repeats `pred` (each call doing at least one blocking round trip to the daemon through the
  // harness's own connection) until it holds; false after `max_rounds`. A state change the
  // daemon has already been told about (a closed connection, a released lease) is visible
  // after a round trip or two, so the bound is generous and never reached in a passing run.
  bool wait_until(const std::function<bool(portbroker::Client&)>& pred, int max_rounds = 2000);
  // Waits until no lease is listed for `port`.
  bool wait_port_unleased(uint16_t port);
  std::vector<portbroker::LeaseInfo> leases();

  // A daemon that restored leases at start holds their sockets in its first count: give it the
  // idle count of its predecessor (the fds it held with no lease) to check against instead.
  const std::map<int, std::string>& fd_baseline() const { return baseline_fds_; }
  void set_fd_baseline(std::map<int, std::string> fds) { baseline_fds_ = std::move(fds); }

  // CHECKs the daemon holds exactly the fds it held once ready (after letting it process every
  // pending disconnect), and that it still answers a status request.
  void check_no_fd_leak();

  // After `portbroker upgrade` or SIGUSR2: waits for the re-executed daemon's READY=1.
  bool wait_ready_again(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Signals it (SIGTERM by default) and waits; CHECKs a clean exit and the socket file removed.
  // Idempotent.
  void stop(int sig = SIGTERM);
  // SIGKILL and reap (the socket file stays behind, as after a crash).
  void kill_hard();
  // For a daemon told to stop some other way (`portbroker shutdown`): waits for its clean exit.
  void wait_stopped();

 private:
  void check_no_filtered_syscall() const;
  void register_for_failure_log();
  void unregister_for_failure_log();

  std::unique_ptr<TempDir> own_dir_;
  const TempDir* dir_ = nullptr;
  std::string socket_path_;
  std::string log_path_;
  std::string notify_path_;
  UniqueFd notify_;  // kept for readiness after an upgrade
  ServiceManager* manager_ = nullptr;
  pid_t pid_ = -1;
  std::optional<Child> proc_;
  bool stopped_ = false;
  std::optional<portbroker::Client> probe_;
  std::map<int, std::string> baseline_fds_;
};

// Starts portbrokerd with `args` (NOTIFY_SOCKET set) expecting it NOT to become ready: returns
// its exit status and output, or a failure status if it did signal readiness (then it is
// SIGTERMed).
struct FailedStart {
  bool became_ready = false;
  CommandResult result;
};
FailedStart start_daemon_expect_failure(const std::vector<std::string>& args, const TempDir& dir);

// The `portbroker` CLI against `d`.
CommandResult run_cli(const Daemon& d, const std::vector<std::string>& args,
                      SpawnOptions opts = {});

// tests/capi/capi_check, in the mode `args` names, as a client of `d`.
CommandResult run_capi_check(const Daemon& d, const std::vector<std::string>& args,
                             SpawnOptions opts = {});

// What python3 needs to use this tree's libportbroker against `d` (the package itself comes
// from PYTHONPATH, which the caller sets). In an ASan build: the runtime first, and CPython's
// own allocations at exit are not the library's leaks (capi_check covers those).
SpawnOptions python_options(const Daemon& d);

}  // namespace pbtest
