// libportbroker-intercept.so: LD_PRELOADed by `portbroker exec --intercept` (or by hand), it
// turns every bind(2) of a TCP or UDP socket into a broker request and puts the granted socket
// in place of the app's, at the same fd number, with the app's fd flags. It exports bind, close
// and the calls that copy an fd (dup, dup2, dup3, fcntl F_DUPFD[_CLOEXEC], fcntl64; see
// intercept.map); everything else the library holds is hidden.
//
// Why no more: the options an app sets before bind are read off its socket at bind time (so
// setsockopt needs no wrapper); the granted socket is bound to the real address, so
// getsockname is right; and listen(2) on it (already listening) just applies the app's
// backlog, as the kernel does for a second listen.
//
// A lease ends when the process that acquired it closes its last copy of the socket, with no
// fork since: the copies are counted as the dup wrappers make them (as Samba's socket_wrapper
// does), so close needs no system call to find them. A copy made by a raw system call or
// received over SCM_RIGHTS is not seen (README says so).
//
// close(2) and the dup calls run in signal handlers and in vfork children that share this
// library's memory: the copy counts are lock-free atomics, and only the process that acquired
// the lease, and only when it can take the lock without waiting, sends the release.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <optional>
#include <portbroker/client.hpp>

#include "client/intercept/plan.h"

namespace {

using BindFn = int (*)(int, const sockaddr*, socklen_t);
using CloseFn = int (*)(int);
using DupFn = int (*)(int);
using Dup2Fn = int (*)(int, int);
using Dup3Fn = int (*)(int, int, int);
using FcntlFn = int (*)(int, int, ...);

// libc's own functions. Resolved in the constructor; a call that comes earlier (another
// library's constructor) resolves its own.
template <typename Fn>
class Next {
 public:
  explicit constexpr Next(const char* name) : name_(name) {}
  Fn get() {
    Fn fn = fn_.load(std::memory_order_relaxed);
    if (fn == nullptr) {
      fn = reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name_));
      fn_.store(fn, std::memory_order_relaxed);
    }
    return fn;
  }

 private:
  const char* name_;
  std::atomic<Fn> fn_{nullptr};
};

Next<BindFn> g_bind("bind");
Next<CloseFn> g_close("close");
Next<DupFn> g_dup("dup");
Next<Dup2Fn> g_dup2("dup2");
Next<Dup3Fn> g_dup3("dup3");
Next<FcntlFn> g_fcntl("fcntl");
Next<FcntlFn> g_fcntl64("fcntl64");  // glibc 2.28 on; before it, fcntl does the same

// Which fd numbers refer to a brokered socket: fd -> slot in g_leases (0: none). A brokered
// fd at or above kTrackedFds, or one bound when every slot is taken, is not tracked: its lease
// just ends with the session rather than at close.
constexpr int kTrackedFds = 65536;
constexpr size_t kLeaseSlots = 4096;  // slot 0 means "none"
using Slot = uint16_t;
static_assert(std::atomic<Slot>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

struct LeaseSlot {
  std::atomic<bool> used{false};
  std::atomic<uint32_t> copies{0};  // tracked fds referring to the socket, plus untracked copies
  // Written before the slot is published (under the lock), read-only after.
  uint64_t lease_id = 0;
  pid_t owner = 0;
  uint64_t forks = 0;
};

std::array<std::atomic<Slot>, kTrackedFds> g_fd_slot{};
std::array<LeaseSlot, kLeaseSlots> g_leases{};
// Counts fork()s: a lease whose socket may live on in a child is not released at close.
std::atomic<uint64_t> g_forks{0};

// This process's pid, kept in a page the kernel empties in every child however it was made
// (MADV_WIPEONFORK, Linux 4.14: fork, _Fork, a raw clone), so glibc's uncached getpid() is
// paid once per process. A vfork child shares the page and reads its parent's pid: the one
// place that matters (ending a lease) asks the kernel. Null without MADV_WIPEONFORK.
std::atomic<pid_t>* g_pid_cache = nullptr;

pid_t this_pid() {
  std::atomic<pid_t>* cache = g_pid_cache;
  if (cache == nullptr) return ::getpid();
  pid_t pid = cache->load(std::memory_order_relaxed);
  if (pid == 0) {
    pid = ::getpid();
    cache->store(pid, std::memory_order_relaxed);
  }
  return pid;
}

void make_pid_cache() {
  const auto size = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  void* page = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return;
  if (::madvise(page, size, MADV_WIPEONFORK) != 0) {
    ::munmap(page, size);
    return;
  }
  g_pid_cache = new (page) std::atomic<pid_t>(0);
}

// Never destroyed: close() may run during exit, after static destructors.
struct State {
  std::mutex mu;
  std::optional<portbroker::Client> client;
  pid_t client_pid = 0;
  size_t next_slot = 1;  // where the search for a free slot starts
  portbroker::intercept::PassList pass = portbroker::intercept::PassList::from_env();
};

State& state() {
  static State* s = new State;
  return *s;
}

int raw_close(int fd) {
  CloseFn next = g_close.get();
  return next ? next(fd) : static_cast<int>(::syscall(SYS_close, fd));
}

int raw_bind(int fd, const sockaddr* addr, socklen_t len) {
  BindFn next = g_bind.get();
  return next ? next(fd, addr, len) : static_cast<int>(::syscall(SYS_bind, fd, addr, len));
}

int raw_fcntl(int fd, int cmd, int arg) { return g_fcntl.get()(fd, cmd, arg); }

void write_stderr(const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

Slot slot_of(int fd) {
  return fd >= 0 && fd < kTrackedFds ? g_fd_slot[fd].load(std::memory_order_acquire) : 0;
}

// Stops tracking `fd`; the slot it referred to (0: none).
Slot untrack(int fd) {
  return fd >= 0 && fd < kTrackedFds ? g_fd_slot[fd].exchange(0, std::memory_order_acq_rel) : 0;
}

// A lease whose last known copy is gone, to be released by the process that acquired it.
struct Ending {
  uint64_t lease_id = 0;
  pid_t owner = 0;
};

// One copy of slot's socket is gone. When it was the last, the slot is freed, and the lease is
// to end if this is the process that acquired it and it has not forked since (a child may hold
// a copy). Lock-free; the one system call (getpid) only when a lease is about to end.
std::optional<Ending> drop_copy(Slot slot) {
  if (slot == 0) return std::nullopt;
  LeaseSlot& l = g_leases[slot];
  if (l.copies.fetch_sub(1, std::memory_order_acq_rel) != 1) return std::nullopt;
  const Ending e{l.lease_id, l.owner};
  const bool forked = l.forks != g_forks.load();
  l.used.store(false, std::memory_order_release);
  // A vfork child shares this memory (and the pid cache): only the kernel knows who runs.
  if (forked || e.owner != this_pid() || e.owner != ::getpid()) return std::nullopt;
  return e;
}

// Talking to the broker goes through cancellation points (sendmsg, recvmsg): a thread
// cancelled there would unwind through the wrappers' catch-alls (std::terminate) or skip the
// app's own close. Cancellation waits until the app's next cancellation point instead.
class NoCancel {
 public:
  NoCancel() { ::pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
  ~NoCancel() { ::pthread_setcancelstate(old_, nullptr); }
  NoCancel(const NoCancel&) = delete;
  NoCancel& operator=(const NoCancel&) = delete;

 private:
  int old_ = PTHREAD_CANCEL_ENABLE;
};

// Called with the lock held.
void release(State& s, const Ending& e) {
  NoCancel no_cancel;
  if (s.client && s.client_pid == e.owner) (void)s.client->release_nowait(e.lease_id);
}

// drop_copy, then the release if the lock is free (a signal handler or another thread holds
// it: the session ends the lease instead).
void drop_copy_and_release(Slot slot) {
  auto ending = drop_copy(slot);
  if (!ending) return;
  State& s = state();
  std::unique_lock lock(s.mu, std::try_to_lock);
  if (lock.owns_lock()) release(s, *ending);
}

// After the kernel made `copy` a copy of `fd` (dup, dup2, dup3, F_DUPFD): `copy` now refers to
// fd's socket, and no longer to whatever it referred to before (dup2 and dup3 closed that; a
// fresh number's stale entry is one closed unseen). A copy too high to track is counted all
// the same, so its lease ends with the session.
void note_copy(int fd, int copy) {
  if (fd == copy) return;
  const Slot slot = slot_of(fd);
  if (slot == 0 && slot_of(copy) == 0) return;
  if (slot != 0) g_leases[slot].copies.fetch_add(1, std::memory_order_relaxed);
  const Slot before = copy >= 0 && copy < kTrackedFds
                          ? g_fd_slot[copy].exchange(slot, std::memory_order_acq_rel)
                          : 0;
  const int saved = errno;
  try {
    drop_copy_and_release(before);
  } catch (...) {  // the lease ends with the session instead
  }
  errno = saved;
}

// Tracks fd as the first copy of `lease_id`'s socket. Called with the lock held; false when
// every slot is taken (the lease then ends with the session).
bool track(State& s, int fd, uint64_t lease_id) {
  if (fd < 0 || fd >= kTrackedFds) return false;
  for (size_t n = 1; n < kLeaseSlots; ++n) {
    const size_t i = s.next_slot;
    s.next_slot = i + 1 < kLeaseSlots ? i + 1 : 1;
    LeaseSlot& l = g_leases[i];
    bool expected = false;
    if (!l.used.compare_exchange_strong(expected, true, std::memory_order_acquire)) continue;
    l.lease_id = lease_id;
    l.owner = this_pid();
    l.forks = g_forks.load();
    l.copies.store(1, std::memory_order_relaxed);
    g_fd_slot[fd].store(static_cast<Slot>(i), std::memory_order_release);
    return true;
  }
  return false;
}

// The connection of this process (a forked child makes its own: replies to two processes
// on one connection would cross). Called with the lock held.
portbroker::Result<portbroker::Client*> client_for_this_process(State& s) {
  const pid_t pid = this_pid();
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
// The broker's socket arrives blocking and close-on-exec (MSG_CMSG_CLOEXEC), and dup3 sets
// FD_CLOEXEC itself, so only an app's O_NONBLOCK needs a call of its own.
bool install(int granted, int fd) {
  const int fl = raw_fcntl(fd, F_GETFL, 0);
  const int fdfl = raw_fcntl(fd, F_GETFD, 0);
  if (fl < 0 || fdfl < 0) return false;
  if ((fl & O_NONBLOCK) != 0 && raw_fcntl(granted, F_SETFL, O_NONBLOCK) != 0) return false;
  return g_dup3.get()(granted, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) == fd;
}

int brokered_bind(int fd, const portbroker::SocketSpec& spec) {
  NoCancel no_cancel;
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
  // The app's fd is a fresh socket: a brokered socket it still names was closed unseen.
  if (auto ending = drop_copy(untrack(fd))) release(s, *ending);
  (void)track(s, fd, id);
  return 0;
}

// How fcntl's third argument is passed for `cmd`.
enum class FcntlArg { kNone, kInt, kPointer };

FcntlArg fcntl_arg(int cmd) {
  switch (cmd) {
    case F_GETFD:
    case F_GETFL:
    case F_GETOWN:
    case F_GETSIG:
    case F_GETLEASE:
    case F_GETPIPE_SZ:
    case F_GET_SEALS:
      return FcntlArg::kNone;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
    case F_SETFD:
    case F_SETFL:
    case F_SETOWN:
    case F_SETSIG:
    case F_SETLEASE:
    case F_NOTIFY:
    case F_SETPIPE_SZ:
    case F_ADD_SEALS:
      return FcntlArg::kInt;
    default:
      // The locks (F_GETLK, F_SETLK[W], F_OFD_*), F_[GS]ETOWN_EX, the read/write hints, and
      // commands newer than this library: a pointer-sized word, as glibc passes them on.
      return FcntlArg::kPointer;
  }
}

int copying_fcntl(FcntlFn next, int fd, int cmd, void* arg) {
  int r = 0;
  switch (fcntl_arg(cmd)) {
    case FcntlArg::kNone:
      r = next(fd, cmd);
      break;
    case FcntlArg::kInt:
      r = next(fd, cmd, static_cast<int>(reinterpret_cast<intptr_t>(arg)));
      break;
    case FcntlArg::kPointer:
      r = next(fd, cmd, arg);
      break;
  }
  if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) note_copy(fd, r);
  return r;
}

void before_fork() {
  g_forks.fetch_add(1);
  state().mu.lock();
}
void after_fork() { state().mu.unlock(); }

__attribute__((constructor)) void init() {
  (void)g_bind.get();
  (void)g_close.get();
  (void)g_dup.get();
  (void)g_dup2.get();
  (void)g_dup3.get();
  (void)g_fcntl.get();
  (void)g_fcntl64.get();
  make_pid_cache();
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
  if (slot_of(fd) != 0) {
    const int saved = errno;
    try {
      drop_copy_and_release(untrack(fd));
    } catch (...) {  // the lease ends with the session instead
    }
    errno = saved;
  }
  return raw_close(fd);
}

__attribute__((visibility("default"))) int dup(int fd) {
  const int copy = g_dup.get()(fd);
  if (copy >= 0) note_copy(fd, copy);
  return copy;
}

__attribute__((visibility("default"))) int dup2(int fd, int copy) {
  const int r = g_dup2.get()(fd, copy);
  if (r >= 0) note_copy(fd, r);
  return r;
}

__attribute__((visibility("default"))) int dup3(int fd, int copy, int flags) {
  const int r = g_dup3.get()(fd, copy, flags);
  if (r >= 0) note_copy(fd, r);
  return r;
}

// glibc reads fcntl's third argument as one pointer-sized word whatever the command (an int is
// passed in a full register or stack slot); it is handed on as the type the command takes.
__attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  return copying_fcntl(g_fcntl.get(), fd, cmd, arg);
}

__attribute__((visibility("default"))) int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  FcntlFn next = g_fcntl64.get();
  return copying_fcntl(next != nullptr ? next : g_fcntl.get(), fd, cmd, arg);
}

}  // extern "C"
