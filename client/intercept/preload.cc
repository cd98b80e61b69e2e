// libportbroker-intercept.so: LD_PRELOADed by `portbroker exec --intercept` (or by hand), it
// turns every bind(2) of a TCP or UDP socket into a broker request and puts the granted socket
// in place of the app's, at the same fd number, with the app's fd flags. Only bind and close
// are exported (see intercept.map); everything else the library holds is hidden.
//
// Why only these two: the options an app sets before bind are read off its socket at bind
// time (so setsockopt needs no wrapper); the granted socket is bound to the real address, so
// getsockname is right; and listen(2) on it (already listening) just applies the app's
// backlog, as the kernel does for a second listen.
//
// close(2) runs in signal handlers and in vfork children that share this library's memory:
// it takes a lock-free look at a table of brokered fds, and only the process that acquired
// the lease, and only when it can take the lock without waiting, touches any state.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <portbroker/client.hpp>
#include <unordered_map>

#include "client/intercept/plan.h"

namespace {

using BindFn = int (*)(int, const sockaddr*, socklen_t);
using CloseFn = int (*)(int);

BindFn g_next_bind = nullptr;
CloseFn g_next_close = nullptr;

// fds at or above this are brokered all the same; their leases just end with the session
// rather than at close.
constexpr int kTrackedFds = 65536;
std::array<std::atomic<bool>, kTrackedFds> g_marked{};
// Counts fork()s: a lease whose socket may live on in a child is not released at close.
std::atomic<uint64_t> g_forks{0};

struct Brokered {
  uint64_t lease_id = 0;
  ino_t inode = 0;
  pid_t owner = 0;
  uint64_t forks = 0;
};

// Never destroyed: close() may run during exit, after static destructors.
struct State {
  std::mutex mu;
  std::optional<portbroker::Client> client;
  pid_t client_pid = 0;
  std::unordered_map<int, Brokered> fds;
  portbroker::intercept::PassList pass = portbroker::intercept::PassList::from_env();
};

State& state() {
  static State* s = new State;
  return *s;
}

int raw_close(int fd) {
  return g_next_close ? g_next_close(fd) : static_cast<int>(::syscall(SYS_close, fd));
}

int raw_bind(int fd, const sockaddr* addr, socklen_t len) {
  return g_next_bind ? g_next_bind(fd, addr, len)
                     : static_cast<int>(::syscall(SYS_bind, fd, addr, len));
}

void write_stderr(const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

ino_t inode_of(int fd) {
  struct stat st {};
  return ::fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// Another fd of this process on the same socket (the app dup'ed it)?
bool other_fd_on(int fd, ino_t inode) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return true;  // cannot tell: keep the lease
  bool found = false;
  const int self = ::dirfd(dir);
  while (dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    long other = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || end == e->d_name || other == fd || other == self) continue;
    if (inode_of(static_cast<int>(other)) == inode) {
      found = true;
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// The connection of this process (a forked child makes its own: replies to two processes
// on one connection would cross). Called with the lock held.
portbroker::Result<portbroker::Client*> client_for_this_process(State& s) {
  const pid_t pid = ::getpid();
  if (!s.client || s.client_pid != pid) {
    // The parent's connection stays open in this process: its leases may be sockets this
    // process inherited, and they last as long as some copy does.
    if (s.client) (void)s.client->detach_session_fd();
    s.client.reset();
    auto c = portbroker::Client::connect();
    if (!c) {
      return portbroker::make_error(c.error().code,
                                    "cannot reach portbrokerd: " + c.error().message);
    }
    s.client.emplace(std::move(c).value());
    s.client_pid = pid;
  }
  return &*s.client;
}

// Puts the granted socket at the app's fd number with the app's O_NONBLOCK and FD_CLOEXEC.
bool install(int granted, int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  const int fdfl = ::fcntl(fd, F_GETFD);
  if (fl < 0 || fdfl < 0) return false;
  const int gfl = ::fcntl(granted, F_GETFL);
  if (gfl < 0 || ::fcntl(granted, F_SETFL, (gfl & ~O_NONBLOCK) | (fl & O_NONBLOCK)) != 0) {
    return false;
  }
  return ::dup3(granted, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) == fd;
}

int brokered_bind(int fd, const portbroker::SocketSpec& spec) {
  State& s = state();
  std::lock_guard lock(s.mu);
  auto client = client_for_this_process(s);
  portbroker::Result<portbroker::Lease> lease =
      client ? (*client)->acquire(spec) : portbroker::Result<portbroker::Lease>(client.error());
  if (!lease) {
    write_stderr(portbroker::intercept::refusal_line(lease.error()));
    errno = portbroker::intercept::errno_for(lease.error());
    return -1;
  }
  const uint64_t id = lease->id();
  const int granted = lease->release_fd();
  const bool placed = install(granted, fd);
  const int err = errno;
  raw_close(granted);
  if (!placed) {
    (void)(*client)->release(id);
    errno = err;
    return -1;
  }
  s.fds[fd] = Brokered{id, inode_of(fd), ::getpid(), g_forks.load()};
  if (fd < kTrackedFds) g_marked[fd].store(true);
  return 0;
}

// Ends the lease of `fd` when this close drops the last copy of its socket that the broker
// can know of: in the process that acquired it, with no fork since and no dup left.
void brokered_close(int fd) {
  State& s = state();
  std::unique_lock lock(s.mu, std::try_to_lock);
  if (!lock.owns_lock()) return;  // a signal handler or another thread: the session ends it
  auto it = s.fds.find(fd);
  if (it == s.fds.end()) return;
  const Brokered b = it->second;
  if (b.owner != ::getpid()) return;  // a vfork child shares this memory: leave it alone
  s.fds.erase(it);
  g_marked[fd].store(false);
  const ino_t inode = inode_of(fd);
  if (inode != b.inode || b.forks != g_forks.load() || other_fd_on(fd, inode)) return;
  if (s.client && s.client_pid == b.owner) (void)s.client->release_nowait(b.lease_id);
}

void before_fork() {
  g_forks.fetch_add(1);
  state().mu.lock();
}
void after_fork() { state().mu.unlock(); }

__attribute__((constructor)) void init() {
  g_next_bind = reinterpret_cast<BindFn>(::dlsym(RTLD_NEXT, "bind"));
  g_next_close = reinterpret_cast<CloseFn>(::dlsym(RTLD_NEXT, "close"));
  (void)state();
  ::pthread_atfork(before_fork, after_fork, after_fork);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int bind(int fd, const sockaddr* addr, socklen_t len) {
  auto target = portbroker::intercept::bind_target(addr, len);
  if (!target || state().pass.passes(target->address, target->port)) {
    return raw_bind(fd, addr, len);
  }
  const int saved = errno;
  try {
    auto spec = portbroker::intercept::spec_for_socket(fd, *target);
    if (!spec) {
      errno = saved;
      return raw_bind(fd, addr, len);
    }
    return brokered_bind(fd, *spec);
  } catch (...) {
    errno = ENOBUFS;  // only the allocator throws here
    return -1;
  }
}

__attribute__((visibility("default"))) int close(int fd) {
  if (fd >= 0 && fd < kTrackedFds && g_marked[fd].load(std::memory_order_relaxed)) {
    const int saved = errno;
    try {
      brokered_close(fd);
    } catch (...) {  // the lease ends with the session instead
    }
    errno = saved;
  }
  return raw_close(fd);
}

}  // extern "C"
