// `portbroker exec`: acquire sockets, then become CMD with them passed the way systemd socket
// activation passes them (sd_listen_fds(3)), so an unmodified server runs unchanged.
#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli.h"
#include "intercept.h"
#include "ipc/paths.h"

namespace portbroker::cli {

namespace {

constexpr int kFirstListenFd = 3;  // SD_LISTEN_FDS_START

int fail(const std::string& message) {
  std::fprintf(stderr, "portbroker exec: %s\n", message.c_str());
  return kExitFailed;
}

// Moves every fd in `fds` to a number >= `floor`, so that dup2 onto the final numbers below
// `floor` can never overwrite a source that has not been placed yet.
bool move_above(std::vector<int>& fds, int floor) {
  for (int& fd : fds) {
    int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, floor);
    if (moved < 0) return false;
    ::close(fd);
    fd = moved;
  }
  return true;
}

// Marks every fd from `first` on close-on-exec, so that CMD inherits only stdio, its sockets
// and the session, as under systemd-socket-activate. Marked rather than closed: should execvp
// fail, this process still holds what it had and can say why.
bool cloexec_from(int first) {
  if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, CLOSE_RANGE_CLOEXEC) == 0) {
    return true;
  }
  // Kernels before 5.11: walk the fd table instead.
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return false;
  bool ok = true;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd < first) continue;
    int flags = ::fcntl(static_cast<int>(fd), F_GETFD);
    if (flags >= 0 && ::fcntl(static_cast<int>(fd), F_SETFD, flags | FD_CLOEXEC) < 0) ok = false;
  }
  ::closedir(dir);
  return ok;
}

}  // namespace

int run_exec(const std::string& socket_path, const std::vector<std::string>& spec_texts,
             const std::vector<std::string>& command, const InterceptOptions& intercept,
             bool keep_fds) {
  std::vector<SocketSpec> specs;
  for (const auto& text : spec_texts) {
    auto spec = parse_socket_spec(text);
    if (!spec) {
      std::fprintf(stderr, "portbroker exec: %s\n", spec.error().message.c_str());
      return kExitUsage;
    }
    specs.push_back(std::move(spec).value());
  }

  const std::string path = socket_path.empty() ? ipc::client_socket_path() : socket_path;
  auto client = Client::connect(path);
  if (!client) return fail(client.error().message);
  std::vector<Lease> acquired;
  if (!specs.empty()) {
    auto leases = client->acquire_all(specs);
    if (!leases) return fail(leases.error().message);
    acquired = std::move(leases).value();
  }
  if (intercept.enabled) {
    // Before the session fd is detached: the supervisor asks the broker on this session.
    if (auto started = start_intercept(*client, path, intercept); !started) {
      return fail(started.error().message);
    }
  }

  // The leases belong to the session, which lives as long as its fd is open: in CMD.
  std::vector<int> fds;
  for (auto& lease : acquired) fds.push_back(lease.release_fd());
  fds.push_back(client->detach_session_fd());
  if (fds.back() < 0) return fail("lost the connection to portbrokerd");
  const int n = static_cast<int>(specs.size());
  const int session_fd = kFirstListenFd + n;
  if (!move_above(fds, session_fd + 1)) {
    return fail(std::string("cannot move fds: ") + std::strerror(errno));
  }
  // dup2 leaves the new fd without FD_CLOEXEC, which is exactly what must survive execvp;
  // the moved copies keep theirs and vanish at exec.
  for (int i = 0; i <= n; ++i) {
    if (::dup2(fds[i], kFirstListenFd + i) < 0) {
      return fail(std::string("cannot place fd: ") + std::strerror(errno));
    }
    ::close(fds[i]);
  }
  if (!keep_fds && !cloexec_from(session_fd + 1)) {
    return fail(std::string("cannot close inherited fds: ") + std::strerror(errno));
  }

  std::string names;
  for (const auto& spec : specs) {
    if (!names.empty()) names += ':';
    names += spec.name.empty() ? "unknown" : spec.name;
  }
  // With --intercept alone there is nothing to pass as LISTEN_FDS.
  const bool listen_fds = n > 0 || !intercept.enabled;
  if ((listen_fds && (::setenv("LISTEN_FDS", std::to_string(n).c_str(), 1) != 0 ||
                      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1) != 0 ||
                      ::setenv("LISTEN_FDNAMES", names.c_str(), 1) != 0)) ||
      ::setenv("PORTBROKER_SESSION_FD", std::to_string(session_fd).c_str(), 1) != 0) {
    return fail(std::string("cannot set the environment: ") + std::strerror(errno));
  }

  std::vector<char*> argv;
  for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  // Like env(1): 127 when CMD is not found, 126 when it is found but cannot run.
  int e = errno;
  std::fprintf(stderr, "portbroker exec: %s: %s\n", command[0].c_str(), std::strerror(e));
  return e == ENOENT || e == ENOTDIR ? 127 : 126;
}

}  // namespace portbroker::cli
