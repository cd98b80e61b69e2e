#include "harness_daemon.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <fstream>
#include <iostream>
#include <set>
#include <utility>

#include "harness.h"
#include "harness_fdstore.h"

namespace pbtest {

using portbroker::Client;

namespace {

// Daemons alive right now, for printing their logs when an assertion fails.
std::vector<Daemon*>& live_daemons() {
  static std::vector<Daemon*> v;
  return v;
}
std::set<const Daemon*>& dumped_daemons() {
  static std::set<const Daemon*> s;
  return s;
}

int g_daemon_serial = 0;

UniqueFd make_notify_socket(const std::string& path) {
  auto fd = bind_notify_socket(path);
  REQUIRE_MESSAGE(fd.ok(), fd.error().message);
  return std::move(fd).value();
}

}  // namespace

void Daemon::print_live_logs_once() {
  for (Daemon* d : live_daemons()) {
    if (!dumped_daemons().insert(d).second) continue;
    std::cerr << "\n----- portbrokerd pid " << d->pid_ << " (socket " << d->socket_path_
              << ") log, last part -----\n"
              << d->log_tail() << "\n----- end of portbrokerd log -----\n";
  }
}

void Daemon::new_test_case() { dumped_daemons().clear(); }

void Daemon::register_for_failure_log() { live_daemons().push_back(this); }

void Daemon::unregister_for_failure_log() {
  auto& v = live_daemons();
  v.erase(std::remove(v.begin(), v.end(), this), v.end());
  dumped_daemons().erase(this);
}

Daemon::Daemon(DaemonOptions opts) {
  if (opts.dir == nullptr) {
    own_dir_ = std::make_unique<TempDir>();
    dir_ = own_dir_.get();
  } else {
    dir_ = opts.dir;
  }
  int serial = ++g_daemon_serial;
  socket_path_ = opts.socket_path.empty() ? dir_->file("portbroker.sock") : opts.socket_path;
  log_path_ = dir_->file("portbrokerd." + std::to_string(serial) + ".log");
  manager_ = opts.manager;
  if (manager_ == nullptr) {
    notify_path_ = dir_->file("notify." + std::to_string(serial) + ".sock");
    notify_ = make_notify_socket(notify_path_);
  }
  // Without a config file the daemon applies its embedded default policy; an explicit path
  // keeps it off the host's /etc/portbroker.
  std::string config = dir_->file("portbroker.toml");
  if (!opts.config_text.empty()) std::ofstream(config) << opts.config_text;

  std::vector<std::string> argv = {daemon_path(), "--socket",          socket_path_,
                                   "--state-dir", dir_->file("state"), "--config",
                                   config,        "--log-level",       opts.log_level};
  argv.insert(argv.end(), opts.args.begin(), opts.args.end());
  SpawnOptions so;
  so.unset_env = {"PORTBROKER_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"};
  if (manager_ != nullptr) {
    argv.push_back("--fd-store");
    manager_->drain();
    so.listen_fds = manager_->listen_fds();
    so.env["NOTIFY_SOCKET"] = manager_->notify_path();
  } else {
    so.env["NOTIFY_SOCKET"] = notify_path_;
  }
  so.output_path = log_path_;
  so.nofile_limit = opts.nofile_limit;
  proc_.emplace(Child::exec(argv, so));
  pid_ = proc_->pid();
  register_for_failure_log();

  std::string cmdline;
  for (const auto& a : argv) cmdline += a + " ";
  ReadyOutcome r = manager_ != nullptr
                       ? manager_->wait_ready(proc_->pidfd(), std::chrono::seconds(30))
                       : wait_ready(notify_.get(), proc_->pidfd(), std::chrono::seconds(30));
  if (r != ReadyOutcome::kReady) {
    stopped_ = true;
    ExitStatus st = proc_->wait(std::chrono::seconds(5));
    unregister_for_failure_log();
    FAIL("portbrokerd did not become ready ("
         << (r == ReadyOutcome::kTimeout ? "no READY=1 within 30 s" : "it exited") << ", "
         << st.describe() << ")\ncommand: " << cmdline << "\nlog:\n"
         << log_tail());
  }
  auto c = Client::connect(socket_path_);
  auto s = c.ok() ? c->status() : portbroker::Result<portbroker::DaemonStatus>(c.error());
  if (!s.ok()) {
    // No destructor runs for a half-built object: tidy up here.
    stopped_ = true;
    proc_->kill(SIGKILL);
    proc_->wait();
    unregister_for_failure_log();
    FAIL("the ready daemon does not answer: " << s.error().message << "\nlog:\n" << log_tail());
  }
  probe_.emplace(std::move(c).value());
  baseline_fds_ = list_fds(pid_);
}

Daemon::~Daemon() {
  if (!stopped_ && std::uncaught_exceptions() == 0 && alive()) check_no_fd_leak();
  stop();
  unregister_for_failure_log();
  if (!notify_path_.empty()) ::unlink(notify_path_.c_str());
}

bool Daemon::wait_ready_again(std::chrono::milliseconds timeout) {
  if (!proc_ || stopped_) return false;
  ReadyOutcome r = manager_ != nullptr ? manager_->wait_ready(proc_->pidfd(), timeout)
                                       : wait_ready(notify_.get(), proc_->pidfd(), timeout);
  return r == ReadyOutcome::kReady;
}

std::string Daemon::log() const { return read_file(log_path_); }

std::string Daemon::log_tail(size_t max_bytes) const {
  std::string l = log();
  if (l.size() <= max_bytes) return l;
  auto cut = l.find('\n', l.size() - max_bytes);
  return "[... " + std::to_string(l.size() - max_bytes) + " bytes cut ...]\n" +
         l.substr(cut == std::string::npos ? l.size() - max_bytes : cut + 1);
}

bool Daemon::alive() const {
  if (!proc_ || stopped_) return false;
  pollfd p{proc_->pidfd(), POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

Client Daemon::connect() const {
  auto c = Client::connect(socket_path_);
  REQUIRE_MESSAGE(c.ok(), "cannot connect to portbrokerd: " << c.error().message);
  return std::move(c).value();
}

bool Daemon::wait_until(const std::function<bool(Client&)>& pred, int max_rounds) {
  REQUIRE(probe_.has_value());
  for (int i = 0; i < max_rounds; ++i) {
    if (pred(*probe_)) return true;
    // The predicate normally does its own round trip; make sure at least one happens.
    auto s = probe_->status();
    if (!s.ok()) return false;
  }
  return false;
}

std::vector<portbroker::LeaseInfo> Daemon::leases() {
  REQUIRE(probe_.has_value());
  auto l = probe_->list();
  REQUIRE_MESSAGE(l.ok(), "list failed: " << l.error().message);
  return l.value();
}

bool Daemon::wait_port_unleased(uint16_t port) {
  return wait_until([port](Client& c) {
    auto l = c.list();
    if (!l.ok()) return false;
    for (const auto& lease : l.value()) {
      if (lease.port == port) return false;
    }
    return true;
  });
}

void Daemon::check_no_fd_leak() {
  if (!probe_) return;
  std::map<int, std::string> now;
  for (int i = 0; i < 2000; ++i) {
    auto s = probe_->status();
    if (!s.ok()) {
      CHECK_MESSAGE(s.ok(), "the daemon stopped answering: " << s.error().message);
      return;
    }
    now = list_fds(pid_);
    if (now.size() == baseline_fds_.size()) break;
  }
  CHECK_MESSAGE(now.size() == baseline_fds_.size(),
                "portbrokerd holds " << now.size() << " fds, " << baseline_fds_.size()
                                     << " when it was idle:\n"
                                     << describe_fd_diff(baseline_fds_, now));
}

// Every daemon runs under its seccomp allow-list: a call it trapped (logged, failed with ENOSYS)
// is a path the list forgot, whatever the test was about.
void Daemon::check_no_filtered_syscall() const {
  std::string l = log();
  auto at = l.find("is not in the daemon's allow-list");
  CHECK_MESSAGE(at == std::string::npos,
                "portbrokerd made a system call outside its seccomp allow-list: " << l.substr(
                    l.rfind('\n', at) + 1, l.find('\n', at) - l.rfind('\n', at)));
}

void Daemon::stop(int sig) {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  proc_->kill(sig);
  ExitStatus st = proc_->wait(std::chrono::seconds(20));
  check_no_filtered_syscall();
  CHECK_MESSAGE(st.ok(),
                "portbrokerd did not exit cleanly on signal " << sig << ": " << st.describe());
  if (manager_ != nullptr) {
    CHECK_MESSAGE(path_exists(socket_path_),
                  "portbrokerd under an fd store removed its socket file " << socket_path_
                                                                           << " on signal " << sig);
  } else {
    CHECK_MESSAGE(!path_exists(socket_path_), "portbrokerd left its socket file "
                                                  << socket_path_ << " behind on signal " << sig);
  }
}

void Daemon::wait_stopped() {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  ExitStatus st = proc_->wait(std::chrono::seconds(20));
  check_no_filtered_syscall();
  CHECK_MESSAGE(st.ok(), "portbrokerd did not exit cleanly: " << st.describe());
  CHECK_MESSAGE(!path_exists(socket_path_), "portbrokerd left its socket file " << socket_path_);
}

void Daemon::kill_hard() {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  proc_->kill(SIGKILL);
  proc_->wait(std::chrono::seconds(20));
  check_no_filtered_syscall();
}

FailedStart start_daemon_expect_failure(const std::vector<std::string>& args, const TempDir& dir) {
  int serial = ++g_daemon_serial;
  std::string notify_path = dir.file("notify." + std::to_string(serial) + ".sock");
  UniqueFd notify = make_notify_socket(notify_path);
  std::vector<std::string> argv = {daemon_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  SpawnOptions so;
  so.env["NOTIFY_SOCKET"] = notify_path;
  Child c = Child::exec(argv, so);
  FailedStart out;
  ReadyOutcome r = wait_ready(notify.get(), c.pidfd(), std::chrono::seconds(30));
  ::unlink(notify_path.c_str());
  if (r == ReadyOutcome::kReady) {
    out.became_ready = true;
    c.kill(SIGTERM);
  }
  out.result.status = c.wait(std::chrono::seconds(20));
  out.result.out = c.output();
  return out;
}

CommandResult run_capi_check(const Daemon& d, const std::vector<std::string>& args,
                             SpawnOptions opts) {
  std::vector<std::string> argv{PB_CAPI_CHECK_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  opts.env = d.client_env();
  return run_command(argv, opts);
}

SpawnOptions python_options(const Daemon& d) {
  SpawnOptions opts{.env = d.client_env()};
  opts.env["PORTBROKER_LIBRARY"] = PB_LIBRARY_PATH;
  opts.env["PYTHONDONTWRITEBYTECODE"] = "1";
  if (!std::string(PB_ASAN_RUNTIME).empty()) {
    opts.env["LD_PRELOAD"] = PB_ASAN_RUNTIME;
    opts.env["ASAN_OPTIONS"] = "detect_leaks=0";
  }
  return opts;
}

CommandResult run_cli(const Daemon& d, const std::vector<std::string>& args, SpawnOptions opts) {
  for (const auto& [k, v] : d.client_env()) opts.env.emplace(k, v);
  std::vector<std::string> argv = {cli_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, opts);
}

}  // namespace pbtest
