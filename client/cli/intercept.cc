#include "intercept.h"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <portbroker/fd.hpp>
#include <span>
#include <string>
#include <vector>

#include "client/intercept/plan.h"
#include "ipc/framing.h"

namespace portbroker::cli {

namespace {

constexpr const char* kPreloadName = "libportbroker-intercept.so";

// $PORTBROKER_INTERCEPT_LIBRARY, else next to this binary (the build tree), else installed.
std::string preload_path() {
  if (const char* env = std::getenv("PORTBROKER_INTERCEPT_LIBRARY"); env && *env) return env;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    std::string dir(self, static_cast<size_t>(n));
    dir.resize(dir.rfind('/') + 1);
    if (::access((dir + kPreloadName).c_str(), R_OK) == 0) return dir + kPreloadName;
  }
  return PB_INTERCEPT_INSTALLED_PATH;
}

// ---- handing the listener fd to the supervisor ----------------------------------------------

bool send_fd(int channel, int fd) {
  const char byte = 'f';
  return portbroker::ipc::send_bytes(channel, &byte, 1, std::span<const int>(&fd, 1), false) == 0;
}

int recv_fd(int channel) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  if (::recvmsg(channel, &msg, MSG_CMSG_CLOEXEC) != 1) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int))) {
    return -1;
  }
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

// ---- the supervisor -------------------------------------------------------------------------

// The thread group of a (possibly non-leader) thread: pidfds and fd tables are per process.
pid_t thread_group_of(pid_t tid) {
  std::ifstream status("/proc/" + std::to_string(tid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Tgid:", 0) == 0) return static_cast<pid_t>(std::atoi(line.c_str() + 5));
  }
  return -1;
}

// FD_CLOEXEC of the target's fd, from /proc/PID/fdinfo ("flags:" in octal, O_CLOEXEC in it).
bool target_cloexec(pid_t pid, int fd) {
  std::ifstream info("/proc/" + std::to_string(pid) + "/fdinfo/" + std::to_string(fd));
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("flags:", 0) == 0) {
      return (std::strtoul(line.c_str() + 6, nullptr, 8) & O_CLOEXEC) != 0;
    }
  }
  return false;
}

// Writes the refusal to the target's own stderr (it may have redirected it), else ours.
void tell_target(int pidfd, const std::string& line) {
  int err = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, STDERR_FILENO, 0));
  int out = err >= 0 ? err : STDERR_FILENO;
  ssize_t n = ::write(out, line.data(), line.size());
  (void)n;
  if (err >= 0) ::close(err);
}

class Supervisor {
 public:
  Supervisor(Client& client, int listener, const intercept::PassList& pass)
      : client_(client), listener_(listener), pass_(pass) {}

  [[noreturn]] void run() {
    seccomp_notif* req = nullptr;
    seccomp_notif_resp* resp = nullptr;
    if (seccomp_notify_alloc(&req, &resp) != 0) ::_exit(1);
    for (;;) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (p.revents & POLLIN) {
        int rc = seccomp_notify_receive(listener_, req);
        if (rc == -ENOENT || rc == -EINTR) continue;  // the target died meanwhile
        if (rc != 0) break;
        answer(req, resp);
      } else if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) {
        break;  // every process under the filter has exited
      }
    }
    ::_exit(0);
  }

 private:
  bool still_valid(uint64_t id) const { return seccomp_notify_id_valid(listener_, id) == 0; }

  void answer(const seccomp_notif* req, seccomp_notif_resp* resp) {
    resp->id = req->id;
    resp->val = 0;
    resp->error = 0;
    resp->flags = 0;
    switch (decide(req)) {
      case Outcome::kContinue:
        resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        break;
      case Outcome::kInstalled:
        break;
      case Outcome::kRefused:
        resp->error = -refusal_errno_;
        break;
      case Outcome::kGone:
        return;
    }
    (void)seccomp_notify_respond(listener_, resp);
  }

  enum class Outcome { kContinue, kInstalled, kRefused, kGone };

  Outcome decide(const seccomp_notif* req) {
    if (req->data.nr != __NR_bind) return Outcome::kContinue;
    const auto len = static_cast<socklen_t>(req->data.args[2]);
    sockaddr_storage ss{};
    const size_t want = std::min<size_t>(len, sizeof(ss));
    iovec local{&ss, want};
    iovec remote{reinterpret_cast<void*>(req->data.args[1]), want};
    const pid_t tid = static_cast<pid_t>(req->pid);
    // Unreadable memory: the kernel's own bind reports EFAULT.
    if (::process_vm_readv(tid, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(want)) {
      return Outcome::kContinue;
    }
    // The pid may have been recycled while we read: everything read counts only if the
    // request is still pending after the read.
    if (!still_valid(req->id)) return Outcome::kGone;
    auto target = intercept::bind_target(reinterpret_cast<const sockaddr*>(&ss), len);
    if (!target || pass_.passes(target->address, target->port)) return Outcome::kContinue;

    const pid_t pid = thread_group_of(tid);
    UniqueFd pidfd(pid > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)) : -1);
    if (!pidfd || !still_valid(req->id)) return pidfd ? Outcome::kGone : Outcome::kContinue;
    const int fd = static_cast<int>(req->data.args[0]);
    UniqueFd sock(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
    if (!sock) return Outcome::kContinue;  // EBADF, ENOTSOCK: the kernel says so itself
    auto spec = intercept::spec_for_socket(sock.get(), *target);
    if (!spec) return Outcome::kContinue;
    const bool nonblock = (::fcntl(sock.get(), F_GETFL) & O_NONBLOCK) != 0;
    const bool cloexec = target_cloexec(pid, fd);
    if (!still_valid(req->id)) return Outcome::kGone;
    return grant(req->id, pidfd.get(), fd, *spec, nonblock, cloexec);
  }

  Outcome grant(uint64_t id, int pidfd, int fd, const SocketSpec& spec, bool nonblock,
                bool cloexec) {
    auto lease = client_.acquire(spec);
    if (!lease) {
      tell_target(pidfd, intercept::refusal_line(lease.error()));
      refusal_errno_ = intercept::errno_for(lease.error());
      return Outcome::kRefused;
    }
    const uint64_t lease_id = lease->id();
    UniqueFd granted(lease->release_fd());
    const int fl = ::fcntl(granted.get(), F_GETFL);
    ::fcntl(granted.get(), F_SETFL, nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
    // SETFD replaces the app's socket at its own number. SEND is not used: it would make
    // bind() return the fd number, where the app expects 0.
    seccomp_notif_addfd addfd{};
    addfd.id = id;
    addfd.flags = SECCOMP_ADDFD_FLAG_SETFD;
    addfd.srcfd = static_cast<uint32_t>(granted.get());
    addfd.newfd = static_cast<uint32_t>(fd);
    addfd.newfd_flags = cloexec ? O_CLOEXEC : 0;
    if (::ioctl(listener_, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0) {
      const int err = errno;
      (void)client_.release(lease_id);
      if (err == ENOENT) return Outcome::kGone;
      refusal_errno_ = err == EMFILE ? EMFILE : ENOBUFS;
      return Outcome::kRefused;
    }
    return Outcome::kInstalled;
  }

  Client& client_;
  int listener_;
  const intercept::PassList& pass_;
  int refusal_errno_ = 0;
};

// Closes every fd but those in `keep`.
void close_all_but(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned next = 0;
  for (int fd : keep) {
    if (fd < 0) continue;
    if (static_cast<unsigned>(fd) > next) ::close_range(next, static_cast<unsigned>(fd) - 1, 0);
    next = static_cast<unsigned>(fd) + 1;
  }
  ::close_range(next, ~0U, 0);
}

[[noreturn]] void supervisor_main(Client& client, int channel) {
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU}) {
    ::signal(sig, SIG_IGN);
  }
  ::prctl(PR_SET_NAME, "pb-supervisor");
  const pid_t self = ::getpid();
  if (::write(channel, &self, sizeof(self)) != sizeof(self)) ::_exit(0);
  const int listener = recv_fd(channel);
  if (listener < 0) ::_exit(0);  // no filter (old kernel): nothing to supervise
  close_all_but({STDERR_FILENO, listener, client.session_fd()});
  const auto pass = intercept::PassList::from_env();
  Supervisor(client, listener, pass).run();
}

// Forks the supervisor, detached from CMD (CMD's child would be a stranger to it), and
// returns the channel to it and its pid.
Result<std::pair<UniqueFd, pid_t>> fork_supervisor(Client& client) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return errno_error(ErrorCode::kInternal, "socketpair", errno);
  }
  UniqueFd ours(pair[0]);
  UniqueFd theirs(pair[1]);
  std::fflush(nullptr);
  pid_t middle = ::fork();
  if (middle < 0) return errno_error(ErrorCode::kInternal, "fork", errno);
  if (middle == 0) {
    ours.reset();
    pid_t sup = ::fork();
    if (sup == 0) supervisor_main(client, theirs.get());
    ::_exit(sup < 0 ? 1 : 0);
  }
  theirs.reset();
  int status = 0;
  while (::waitpid(middle, &status, 0) < 0 && errno == EINTR) {
  }
  pid_t sup = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
      ::read(ours.get(), &sup, sizeof(sup)) != sizeof(sup)) {
    return make_error(ErrorCode::kInternal, "the bind supervisor did not start");
  }
  return std::make_pair(std::move(ours), sup);
}

// A filter that sends bind(2) to the supervisor and lets everything else through (other ABIs
// included: a 32-bit program must still run). Without CAP_SYS_ADMIN the kernel wants
// no_new_privs for it.
Result<UniqueFd> install_filter() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return make_error(ErrorCode::kInternal, "seccomp_init failed");
  int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ALLOW);
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_NOTIFY, SCMP_SYS(bind), 0);
  if (rc == 0) {
    // Without no_new_privs first (setuid programs under CMD keep working), which only
    // CAP_SYS_ADMIN allows; libseccomp reports that refusal as ECANCELED.
    (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
    rc = seccomp_load(ctx);
    if (rc != 0) {
      (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1);
      rc = seccomp_load(ctx);
    }
  }
  int fd = rc == 0 ? seccomp_notify_fd(ctx) : -1;
  seccomp_release(ctx);
  if (rc != 0) return errno_error(ErrorCode::kInternal, "loading the bind filter", -rc);
  if (fd < 0) return make_error(ErrorCode::kInternal, "the kernel gave no notification fd");
  return UniqueFd(fd);
}

}  // namespace

Result<void> start_intercept(Client& client, const std::string& socket_path,
                             const InterceptOptions& options) {
  const std::string library = preload_path();
  if (::access(library.c_str(), R_OK) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot use the preload library " + library, errno);
  }
  std::string preload = library;
  if (const char* old = std::getenv("LD_PRELOAD"); old && *old) preload += std::string(":") + old;
  if (::setenv("LD_PRELOAD", preload.c_str(), 1) != 0 ||
      ::setenv("PORTBROKER_SOCKET", socket_path.c_str(), 1) != 0 ||
      (!options.pass_loopback.empty() &&
       ::setenv(intercept::kPassLoopbackEnv, options.pass_loopback.c_str(), 1) != 0) ||
      (!options.linger.empty() &&
       ::setenv(intercept::kLingerEnv, options.linger.c_str(), 1) != 0)) {
    return errno_error(ErrorCode::kInternal, "cannot set the environment", errno);
  }

  auto sup = fork_supervisor(client);
  if (!sup) return sup.error();
  auto filter = install_filter();
  if (!filter) {
    std::fprintf(stderr,
                 "portbroker exec: static binaries will not be intercepted (%s); the preload "
                 "library serves dynamic ones\n",
                 filter.error().message.c_str());
    return {};  // closing the channel tells the supervisor to go
  }
  // Under Yama's ptrace_scope 1 the supervisor, not an ancestor of CMD, needs this to read
  // CMD's memory and take its fds. No Yama: nothing to do.
  (void)::prctl(PR_SET_PTRACER, sup->second, 0, 0, 0);
  if (!send_fd(sup->first.get(), filter->get())) {
    return errno_error(ErrorCode::kInternal, "cannot hand the filter to its supervisor", errno);
  }
  return {};
}

}  // namespace portbroker::cli
