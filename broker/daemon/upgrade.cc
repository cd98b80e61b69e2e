// Upgrade in place: the daemon re-executes its binary with every fd that matters passed as
// LISTEN_FDS (the control socket, each session's connection, every socket it keeps), exactly
// as a service manager would pass its fd store, so the next daemon takes over through the same
// path as a restart under systemd. The pid stays, so LISTEN_PID and a manager's MAINPID stay
// right; the control socket keeps accepting (connections queue in its backlog meanwhile).
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "broker/daemon/server_internal.h"

namespace portbroker::broker {

namespace {

// The daemon's own command line, for the exec.
std::vector<std::string> own_argv() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> out;
  std::string arg;
  while (std::getline(in, arg, '\0')) out.push_back(arg);
  return out;
}

}  // namespace

void Server::request_upgrade() {
  // The next loop iteration: a reply that asked for it goes out first.
  uv_timer_start(&upgrade_timer_, &Server::on_upgrade_timer, 0, 0);
}

void Server::on_upgrade_timer(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  bool busy = self->deferred_in_flight_ > 0;
  for (const auto& [id, s] : self->sessions_) {
    busy = busy || s->pending.size() != 0 || s->parts != nullptr;
  }
  if (busy) {
    // A reply in the making or waiting for room would be lost in the exec: wait for it.
    uv_timer_start(&self->upgrade_timer_, &Server::on_upgrade_timer, 10, 0);
    return;
  }
  if (auto r = self->upgrade(); !r) spdlog::error("upgrade failed: {}", r.error().message);
}

Result<void> Server::upgrade() {
  std::vector<std::string> argv = own_argv();
  if (argv.empty() || ::access("/proc/self/exe", X_OK) != 0) {
    return make_error(ErrorCode::kInternal, "cannot find the daemon's own binary to re-execute");
  }
  std::vector<std::pair<int, std::string>> fds;
  fds.emplace_back(listen_fd_.get(), kControlFdName);
  for (const auto& [id, s] : sessions_) {
    // An event stream does not survive: its subscriber sees EOF and reconnects.
    if (!s->subscriber) fds.emplace_back(s->conn.get(), session_fd_name(id));
  }
  for (auto& fd : service_.handover_fds()) fds.push_back(std::move(fd));

  // Everything is copied above all the numbers in use first, then put in place at 3, 4, ...:
  // a copy made straight to 3 + i could land on a source not yet copied.
  const int n = static_cast<int>(fds.size());
  std::vector<int> high;
  high.reserve(fds.size());
  for (const auto& [fd, name] : fds) {
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3 + n + 64);
    if (copy < 0) {
      int e = errno;
      for (int c : high) ::close(c);
      return errno_error(ErrorCode::kResourceExhausted, "cannot pass the daemon's fds on", e);
    }
    high.push_back(copy);
  }
  std::string names;
  for (const auto& [fd, name] : fds) names += (names.empty() ? "" : ":") + name;
  spdlog::info("upgrading in place: re-executing {} with {} fd(s) ({} session(s))", argv[0], n,
               sessions_.size());
  spdlog::default_logger()->flush();

  // From here on the fds are the next daemon's.
  for (int i = 0; i < n; ++i) ::dup2(high[i], 3 + i);  // dup2 leaves close-on-exec off
  ::setenv("LISTEN_FDS", std::to_string(n).c_str(), 1);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  ::execv("/proc/self/exe", args.data());
  // The fds in 3.. were overwritten: this daemon cannot go on. The holders keep their sockets
  // and the journal keeps the leases for the next start.
  spdlog::critical("upgrade: exec failed: {}; exiting", std::strerror(errno));
  std::_Exit(1);
}

}  // namespace portbroker::broker
