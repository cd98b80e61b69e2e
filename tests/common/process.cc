#include "common/process.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <sstream>

namespace pbtest {

using portbroker::errno_error;
using portbroker::ErrorCode;
using portbroker::UniqueFd;

int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, ms_left(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

int ExitStatus::shell_code() const {
  if (exited) return code;
  return signal != 0 ? 128 + signal : -1;
}

std::string ExitStatus::describe() const {
  std::ostringstream os;
  if (timed_out) os << "timed out and was killed; ";
  if (exited) {
    os << "exited with code " << code;
  } else {
    os << "killed by signal " << signal << " (" << ::strsignal(signal) << ")";
  }
  return os.str();
}

ExitStatus reap(pid_t pid) {
  ExitStatus st;
  int raw = 0;
  int rc;
  while ((rc = ::waitpid(pid, &raw, 0)) < 0 && errno == EINTR) {
  }
  if (rc < 0) return st;
  if (WIFEXITED(raw)) {
    st.exited = true;
    st.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    st.signal = WTERMSIG(raw);
  }
  return st;
}

portbroker::Result<pid_t> fork_child(const std::function<int()>& body) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return errno_error(ErrorCode::kInternal, "fork", errno);
  if (pid > 0) return pid;
  int rc = kChildThrew;
  try {
    rc = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s (child): exception: %s\n", program_invocation_short_name, e.what());
  } catch (...) {
    std::fprintf(stderr, "%s (child): unknown exception\n", program_invocation_short_name);
  }
  std::cout.flush();
  std::fflush(nullptr);
  ::_exit(rc);
}

bool die_with_parent(pid_t parent, int sig) {
  ::prctl(PR_SET_PDEATHSIG, sig);
  return ::getppid() == parent;
}

portbroker::Result<UniqueFd> open_pidfd(pid_t pid) {
  UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!fd) return errno_error(ErrorCode::kInternal, "pidfd_open", errno);
  return fd;
}

std::map<int, std::string> list_fds(pid_t pid) {
  std::map<int, std::string> out;
  std::string dir = pid == 0 ? "/proc/self/fd" : "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (pid == 0 && fd == own) continue;
    char target[512];
    ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof(target) - 1);
    out[fd] = n < 0 ? std::string("?") : std::string(target, static_cast<size_t>(n));
  }
  ::closedir(d);
  return out;
}

std::string describe_fd_diff(const std::map<int, std::string>& before,
                             const std::map<int, std::string>& after) {
  std::ostringstream os;
  for (const auto& [fd, what] : after) {
    auto it = before.find(fd);
    if (it == before.end()) {
      os << "  new fd " << fd << " -> " << what << "\n";
    } else if (it->second != what) {
      os << "  fd " << fd << " was " << it->second << ", now " << what << "\n";
    }
  }
  for (const auto& [fd, what] : before) {
    if (!after.count(fd)) os << "  closed fd " << fd << " (was " << what << ")\n";
  }
  return os.str();
}

portbroker::Result<UniqueFd> bind_notify_socket(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return errno_error(ErrorCode::kInternal, "socket", errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return portbroker::make_error(ErrorCode::kInternal, "notify socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return errno_error(ErrorCode::kInternal, "bind notify socket " + path, errno);
  }
  // The daemon may run under another uid than the reader: 0666 is harmless in a 0755 dir.
  ::chmod(path.c_str(), 0666);
  return fd;
}

ReadyOutcome wait_ready(int notify, int pidfd, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p[2] = {{notify, POLLIN, 0}, {pidfd, POLLIN, 0}};
    int rc = ::poll(p, 2, ms_left(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return ReadyOutcome::kTimeout;
    if (p[0].revents & POLLIN) {
      char buf[4096];
      ssize_t n = ::recv(notify, buf, sizeof(buf), 0);
      if (n > 0) {
        // sd_notify sends newline-separated assignments; READY=1 may be among others.
        std::istringstream lines(std::string(buf, static_cast<size_t>(n)));
        for (std::string line; std::getline(lines, line);) {
          if (line == "READY=1") return ReadyOutcome::kReady;
        }
      }
      continue;
    }
    if (p[1].revents) return ReadyOutcome::kExited;
  }
}

}  // namespace pbtest
