#include "broker/daemon/privileges.h"

#include <dirent.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

// Sanitizer builds (make test-asan) need a few more calls; GCC and clang say so differently.
#if defined(__SANITIZE_ADDRESS__)
#define PB_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define PB_SANITIZED 1
#endif
#endif
#ifndef PB_SANITIZED
#define PB_SANITIZED 0
#endif

namespace portbroker::broker {

namespace {

// Set in the environment once the filter is in place: an upgraded daemon (execve of
// /proc/self/exe) inherits both, and installs only the SIGSYS handler again.
constexpr const char* kFilteredEnv = "PORTBROKER_SECCOMP_FILTERED";

std::string cap_name(int cap) {
  std::unique_ptr<char, int (*)(void*)> name(cap_to_name(static_cast<cap_value_t>(cap)), cap_free);
  return name ? std::string(name.get()) : "cap_" + std::to_string(cap);
}

int thread_count() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir)) n += e->d_name[0] != '.';
  ::closedir(dir);
  return n;
}

// ---- the SIGSYS handler: async-signal-safe, so it only formats into a stack buffer ---------

constexpr int kMaxSyscall = 512;
constexpr size_t kNameLen = 32;
// Filled before the filter goes in; only read afterwards (by the handler).
std::array<std::array<char, kNameLen>, kMaxSyscall> g_syscall_names{};
std::atomic<uint64_t> g_violations{0};

void fill_syscall_names() {
  for (int nr = 0; nr < kMaxSyscall; ++nr) {
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (name == nullptr) continue;
    std::strncpy(g_syscall_names[nr].data(), name, kNameLen - 1);
    std::free(name);
  }
}

struct Line {
  char buf[200];
  size_t len = 0;
  void add(const char* s) {
    while (*s != '\0' && len < sizeof(buf) - 1) buf[len++] = *s++;
  }
  void add_number(long v) {
    char digits[24];
    int n = 0;
    unsigned long u = v < 0 ? 0UL - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
    do {
      digits[n++] = static_cast<char>('0' + u % 10);
      u /= 10;
    } while (u != 0 && n < 23);
    if (v < 0) add("-");
    while (n > 0 && len < sizeof(buf) - 1) buf[len++] = digits[--n];
  }
};

void on_sigsys(int, siginfo_t* info, void* context) {
  int saved_errno = errno;
  g_violations.fetch_add(1, std::memory_order_relaxed);
  const int nr = info->si_syscall;
  Line line;
  line.add("portbrokerd: seccomp: system call ");
  if (nr >= 0 && nr < kMaxSyscall && g_syscall_names[nr][0] != '\0') {
    line.add(g_syscall_names[nr].data());
    line.add(" ");
  }
  line.add("(");
  line.add_number(nr);
  line.add(") is not in the daemon's allow-list; it fails with ENOSYS\n");
  (void)!::write(STDERR_FILENO, line.buf, line.len);
  // The call did not run; what the handler leaves in the return register is its result.
  auto* uc = static_cast<ucontext_t*>(context);
#if defined(__x86_64__)
  uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;
#elif defined(__aarch64__)
  uc->uc_mcontext.regs[0] = static_cast<unsigned long long>(-ENOSYS);
#else
#error "portbrokerd's SIGSYS handler knows the return register of x86_64 and aarch64 only"
#endif
  errno = saved_errno;
}

}  // namespace

Result<void> catch_filtered_syscalls() {
  static bool names_filled = false;
  if (!names_filled) {
    fill_syscall_names();
    names_filled = true;
  }
  struct sigaction sa {};
  sa.sa_sigaction = &on_sigsys;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGSYS, &sa, nullptr) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot install the SIGSYS handler", errno);
  }
  // A blocked SIGSYS would make the kernel kill the process instead.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGSYS);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  return {};
}

namespace {

bool filter_in_place() {
  return ::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 2 && std::getenv(kFilteredEnv) != nullptr;
}

}  // namespace

std::vector<NeededCapability> needed_capabilities(const PrivilegeFeatures& features) {
  std::vector<NeededCapability> out;
  out.push_back({CAP_NET_BIND_SERVICE, "bind ports below 1024"});
  out.push_back({CAP_SYS_PTRACE,
                 "who, check and a refusal's holder read other users' /proc/PID/fdinfo; a "
                 "restart without the fd store takes sockets back with pidfd_getfd"});
  out.push_back({CAP_DAC_READ_SEARCH,
                 "read other users' /proc/PID/fd links, one call per fd instead of three "
                 "(without it: /proc/PID/fdinfo)",
                 true});
  if (features.root) {
    out.push_back({CAP_SETUID, "create each socket as its holder's uid (setfsuid)"});
    out.push_back({CAP_SETGID, "create each socket as its holder's gid (setfsgid)"});
  }
  if (features.guard && !features.root) {
    // As root the sysctl file's owner bits already allow the write.
    out.push_back({CAP_NET_ADMIN, "the ephemeral-port guard writes ip_local_reserved_ports"});
  }
  return out;
}

Result<CapabilityOutcome> drop_privileges(const std::vector<NeededCapability>& needed) {
  if (int n = thread_count(); n != 1) {
    return make_error(ErrorCode::kInternal,
                      "cannot drop capabilities: " + std::to_string(n) +
                          " threads run already (capabilities are per thread)");
  }
  std::unique_ptr<_cap_struct, int (*)(void*)> current(cap_get_proc(), cap_free);
  std::unique_ptr<_cap_struct, int (*)(void*)> next(cap_init(), cap_free);
  if (!current || !next) {
    return errno_error(ErrorCode::kInternal, "cannot read the process's capabilities", errno);
  }
  CapabilityOutcome out;
  auto is_needed = [&needed](int cap) {
    for (const auto& n : needed) {
      if (n.cap == cap) return true;
    }
    return false;
  };
  for (const auto& n : needed) {
    cap_flag_value_t permitted = CAP_CLEAR;
    cap_value_t v = static_cast<cap_value_t>(n.cap);
    cap_get_flag(current.get(), v, CAP_PERMITTED, &permitted);
    std::string what = cap_name(n.cap) + " (" + n.why + ")";
    if (permitted != CAP_SET) {
      if (!n.optional) out.missing.push_back(std::move(what));
      continue;
    }
    cap_set_flag(next.get(), CAP_PERMITTED, 1, &v, CAP_SET);
    cap_set_flag(next.get(), CAP_EFFECTIVE, 1, &v, CAP_SET);
    out.kept.push_back(std::move(what));
  }

  // The bounding set first: dropping from it needs CAP_SETPCAP, which the new sets lack.
  cap_flag_value_t setpcap = CAP_CLEAR;
  cap_get_flag(current.get(), CAP_SETPCAP, CAP_EFFECTIVE, &setpcap);
  out.bounding_dropped = setpcap == CAP_SET;
  for (int cap = 0; out.bounding_dropped && cap <= static_cast<int>(cap_max_bits()) - 1; ++cap) {
    if (is_needed(cap) || cap_get_bound(static_cast<cap_value_t>(cap)) != 1) continue;
    if (cap_drop_bound(static_cast<cap_value_t>(cap)) != 0) {
      return errno_error(ErrorCode::kInternal,
                         "cannot drop " + cap_name(cap) + " from the bounding set", errno);
    }
  }
  if (cap_reset_ambient() != 0 && errno != EINVAL) {
    return errno_error(ErrorCode::kInternal, "cannot clear the ambient capabilities", errno);
  }
  // After an upgrade the sets are already these, and capset is not on the allow-list.
  if (cap_compare(current.get(), next.get()) != 0 && cap_set_proc(next.get()) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot set the process's capabilities", errno);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot set no_new_privs", errno);
  }
  return out;
}

// How many threads this process has (its /proc/self/task entries); 0 when that cannot be read.
size_t threads() {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return 0;
  size_t n = 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

uint64_t syscall_violations() { return g_violations.load(std::memory_order_relaxed); }

Result<FilterOutcome> install_syscall_filter() {
  if (auto r = catch_filtered_syscalls(); !r) return r.error();
  FilterOutcome out;
  out.syscalls = allowed_syscalls().size();
  if (filter_in_place()) {
    out.inherited = true;
    return out;
  }
  std::unique_ptr<scmp_filter_ctx, void (*)(scmp_filter_ctx*)> ctx(
      new scmp_filter_ctx(seccomp_init(SCMP_ACT_TRAP)), [](scmp_filter_ctx* c) {
        seccomp_release(*c);
        delete c;
      });
  if (*ctx == nullptr) return make_error(ErrorCode::kInternal, "seccomp_init failed");
  // Every thread, libuv's pool included, gets the same filter. Under a service manager's own
  // filter libseccomp may not be able to probe for thread sync; a process that has one thread
  // so far needs none (threads started later inherit the filter).
  if (int rc = seccomp_attr_set(*ctx, SCMP_FLTATR_CTL_TSYNC, 1); rc != 0 && threads() != 1) {
    return errno_error(ErrorCode::kInternal, "seccomp: cannot ask for thread sync", -rc);
  }
  for (const char* name : allowed_syscalls()) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not a call on this architecture
    if (int rc = seccomp_rule_add(*ctx, SCMP_ACT_ALLOW, nr, 0); rc != 0) {
      return errno_error(ErrorCode::kInternal, std::string("seccomp: cannot allow ") + name, -rc);
    }
  }
  if (int rc = seccomp_load(*ctx); rc != 0) {
    return errno_error(ErrorCode::kInternal, "cannot install the seccomp filter", -rc);
  }
  ::setenv(kFilteredEnv, "1", 1);
  return out;
}

}  // namespace portbroker::broker

namespace portbroker::broker {

// Measured: every call the daemon made across the integration tests (strace -f), plus the
// neighbours glibc, libuv and libstdc++ pick on other kernels or paths (fallbacks such as
// clone/clone3, stat/statx, epoll_wait/epoll_pwait), and what the sanitizers need in test builds.
const std::vector<const char*>& allowed_syscalls() {
  static const std::vector<const char*> list = [] {
    std::vector<const char*> l = {
        // memory, threads, time, process basics (glibc, libstdc++, libuv's thread pool)
        "brk",
        "mmap",
        "munmap",
        "mremap",
        "mprotect",
        "madvise",
        "futex",
        "set_robust_list",
        "get_robust_list",
        "rseq",
        "set_tid_address",
        "clone",
        "clone3",
        "exit",
        "exit_group",
        "gettid",
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "getresuid",
        "getresgid",
        "getgroups",
        "arch_prctl",
        "prctl",
        "prlimit64",
        "getrlimit",
        "setrlimit",
        "getrusage",
        "getrandom",
        "clock_gettime",
        "clock_getres",
        "gettimeofday",
        "time",
        "nanosleep",
        "clock_nanosleep",
        "sched_yield",
        "sched_getaffinity",
        "uname",
        "sysinfo",
        "getcwd",
        "umask",
        "restart_syscall",
        "membarrier",
        // signals (libuv's signal handles, this file's SIGSYS handler)
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sigaltstack",
        "rt_sigtimedwait",
        "tgkill",
        // files: policy, state and journal files, /proc (who, check, peers), the control
        // socket's path
        "openat",
        "open",
        "close",
        "close_range",
        "read",
        "pread64",
        "readv",
        "write",
        "pwrite64",
        "writev",
        "lseek",
        "fsync",
        "fdatasync",
        "ftruncate",
        "fallocate",  // the journal allocates its log's space ahead (posix_fallocate)
        "fstat",
        "newfstatat",
        "stat",
        "lstat",
        "statx",
        "statfs",
        "fstatfs",
        "access",
        "faccessat",
        "faccessat2",
        "getdents64",
        "readlink",
        "readlinkat",
        "mkdir",
        "mkdirat",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
        "rmdir",
        "chmod",
        "fchmod",
        "fchmodat",
        "fcntl",
        "dup",
        "dup2",
        "dup3",
        "pipe2",
        "ioctl",
        // the event loop
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "eventfd2",
        "poll",
        "ppoll",
        // sockets: leases, sessions, sock_diag, sd_notify and the fd store
        "socket",
        "socketpair",
        "bind",
        "listen",
        "accept4",
        "connect",
        "shutdown",
        "getsockopt",
        "setsockopt",
        "getsockname",
        "getpeername",
        "sendmsg",
        "recvmsg",
        "sendto",
        "recvfrom",
        "sendmmsg",
        "recvmmsg",
        // sockets as their holder (fsuid), holders' identity and the restart takeover
        "setfsuid",
        "setfsgid",
        "pidfd_open",
        "pidfd_getfd",
        "pidfd_send_signal",
        "capget",
        // upgrade in place: the re-executed daemon runs under this filter from its first call
        "execve",
        "execveat",
    };
#if PB_SANITIZED
    // AddressSanitizer's start-up and LeakSanitizer's exit check (it stops the world with a
    // ptrace'd helper thread): test builds only.
    for (const char* name : {"ptrace", "wait4", "waitid", "kill", "personality", "mincore",
                             "process_vm_readv", "sched_setaffinity", "getpriority"}) {
      l.push_back(name);
    }
#endif
    return l;
  }();
  return list;
}

bool sanitizer_build() { return PB_SANITIZED != 0; }

}  // namespace portbroker::broker
