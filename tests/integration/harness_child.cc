#include "harness_child.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

extern char** environ;

namespace pbtest {

namespace {

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// Closes every fd of this (just forked) process except `keep`.
void close_all_except(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  unsigned next = 0;
  for (int fd : keep) {
    if (fd < 0) continue;
    if (static_cast<unsigned>(fd) > next) {
      ::syscall(SYS_close_range, next, static_cast<unsigned>(fd) - 1, 0);
    }
    next = static_cast<unsigned>(fd) + 1;
  }
  ::syscall(SYS_close_range, next, ~0U, 0);
}

[[noreturn]] void child_die(const std::string& what) {
  std::string msg = "harness child: " + what + "\n";
  ssize_t ignored = ::write(2, msg.data(), msg.size());
  (void)ignored;
  ::_exit(126);
}

std::vector<std::string> build_env(const SpawnOptions& opts) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& name : opts.unset_env) env.erase(name);
  for (const auto& [k, v] : opts.env) env[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Takes the first whole line (without its '\n') off the front of `buf`.
std::optional<std::string> take_line(std::string& buf) {
  auto nl = buf.find('\n');
  if (nl == std::string::npos) return std::nullopt;
  std::string line = buf.substr(0, nl);
  buf.erase(0, nl + 1);
  return line;
}

std::string read_whole_fd(int fd) {
  std::string out;
  char buf[8192];
  off_t off = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof(buf), off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

}  // namespace

void ChildIo::send_line(const std::string& line) {
  std::string l = line + "\n";
  size_t off = 0;
  while (off < l.size()) {
    ssize_t n = ::write(to_parent_, l.data() + off, l.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

std::optional<std::string> ChildIo::read_line() {
  for (;;) {
    if (auto line = take_line(buf_)) return line;
    char tmp[512];
    ssize_t n = ::read(from_parent_, tmp, sizeof(tmp));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

struct SpawnPlan {
  std::function<int(ChildIo&)> fn;  // lambda child when set
  std::vector<std::string> argv;    // else command
};

struct ChildAccess {
  static Child spawn(const SpawnPlan& plan, const SpawnOptions& opts);
};

Child Child::run(std::function<int(ChildIo&)> fn, const SpawnOptions& opts) {
  SpawnPlan plan;
  plan.fn = std::move(fn);
  return ChildAccess::spawn(plan, opts);
}

Child Child::exec(const std::vector<std::string>& argv, const SpawnOptions& opts) {
  SpawnPlan plan;
  plan.argv = argv;
  return ChildAccess::spawn(plan, opts);
}

Child ChildAccess::spawn(const SpawnPlan& plan, const SpawnOptions& opts) {
  int events[2], control[2];
  REQUIRE_MESSAGE(::pipe2(events, O_CLOEXEC) == 0, errno_text("pipe2"));
  REQUIRE_MESSAGE(::pipe2(control, O_CLOEXEC) == 0, errno_text("pipe2"));
  int capture;
  if (!opts.output_path.empty()) {
    capture =
        ::open(opts.output_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  } else {
    capture = ::memfd_create("pb-child-output", MFD_CLOEXEC);
  }
  REQUIRE_MESSAGE(capture >= 0, errno_text("capture file"));
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  REQUIRE(devnull >= 0);

  std::vector<std::string> argv = plan.argv;
  std::vector<char*> c_argv = c_strings(argv);
  SpawnOptions with_listen = opts;
  if (!opts.listen_fds.empty()) {
    std::string names;
    for (const auto& [fd, name] : opts.listen_fds) names += (names.empty() ? "" : ":") + name;
    with_listen.env["LISTEN_FDS"] = std::to_string(opts.listen_fds.size());
    with_listen.env["LISTEN_FDNAMES"] = names;
    with_listen.env.erase("LISTEN_PID");
    with_listen.unset_env.push_back("LISTEN_PID");
  }
  std::vector<std::string> env = build_env(with_listen);
  // The child writes its own pid here after the fork, without allocating.
  std::string listen_pid(32, '\0');
  std::vector<char*> c_env = c_strings(env);
  if (!opts.listen_fds.empty()) c_env.insert(c_env.end() - 1, listen_pid.data());
  const bool is_lambda = static_cast<bool>(plan.fn);

  const pid_t parent = ::getpid();
  auto forked = fork_child([&]() -> int {
    // The child: stdio first, then identity, then close everything not meant for it.
    int in = (!is_lambda && opts.stdin_from_parent) ? control[0] : devnull;
    int out = (!is_lambda && opts.stdout_to_lines) ? events[1] : capture;
    if (::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(capture, 2) < 0) child_die("dup2");
    if (opts.nofile_limit) {
      rlimit rl{static_cast<rlim_t>(*opts.nofile_limit), static_cast<rlim_t>(*opts.nofile_limit)};
      if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) child_die(errno_text("setrlimit"));
    }
    if (opts.uid) {
      uid_t u = *opts.uid;
      if (::setgroups(0, nullptr) != 0) child_die(errno_text("setgroups"));
      if (::setresgid(u, u, u) != 0) child_die(errno_text("setresgid"));
      if (::setresuid(u, u, u) != 0) child_die(errno_text("setresuid"));
    }
    if (!die_with_parent(parent, SIGKILL)) return 125;
    if (!opts.name.empty()) ::prctl(PR_SET_NAME, opts.name.c_str());
    std::vector<int> keep = {0, 1, 2};
    if (!is_lambda && !opts.listen_fds.empty()) {
      // Copies above every number in use first, then into place at 3, 4, ...: a copy made
      // straight to 3 + i could land on a source not yet copied. stdio is already in place.
      const int n = static_cast<int>(opts.listen_fds.size());
      std::vector<int> high;
      for (const auto& [fd, name] : opts.listen_fds) {
        int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3 + n + 1024);
        if (copy < 0) child_die(errno_text("F_DUPFD listen fd"));
        high.push_back(copy);
      }
      for (int i = 0; i < n; ++i) {
        if (::dup2(high[static_cast<size_t>(i)], 3 + i) < 0) child_die(errno_text("dup2"));
        keep.push_back(3 + i);
      }
      std::snprintf(listen_pid.data(), listen_pid.size(), "LISTEN_PID=%d",
                    static_cast<int>(::getpid()));
    }
    for (int fd : opts.keep_fds) {
      keep.push_back(fd);
      ::fcntl(fd, F_SETFD, 0);
    }
    if (is_lambda) {
      keep.push_back(events[1]);
      keep.push_back(control[0]);
    }
    close_all_except(keep);
    if (is_lambda) {
      signal(SIGPIPE, SIG_IGN);
      ChildIo io(events[1], control[0]);
      return plan.fn(io);
    }
    signal(SIGPIPE, SIG_DFL);
    ::execve(c_argv[0], c_argv.data(), c_env.data());
    child_die(errno_text(("execve " + argv[0]).c_str()));
  });
  REQUIRE_MESSAGE(forked.ok(), forked.error().message);
  const pid_t pid = forked.value();
  ::close(events[1]);
  ::close(control[0]);
  ::close(devnull);
  auto pidfd = open_pidfd(pid);
  REQUIRE_MESSAGE(pidfd.ok(), pidfd.error().message);
  Child c;
  c.pid_ = pid;
  c.pidfd_ = std::move(pidfd).value();
  c.events_.reset(events[0]);
  c.control_.reset(control[1]);
  c.capture_.reset(capture);
  c.output_path_ = opts.output_path;
  return c;
}

Child::Child(Child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      pidfd_(std::move(o.pidfd_)),
      events_(std::move(o.events_)),
      control_(std::move(o.control_)),
      capture_(std::move(o.capture_)),
      output_path_(std::move(o.output_path_)),
      line_buf_(std::move(o.line_buf_)),
      events_seen_(std::move(o.events_seen_)),
      status_(std::move(o.status_)) {}

Child::~Child() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    reap(pid_);
  }
}

std::optional<std::string> Child::read_line(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto line = take_line(line_buf_)) return line;
    if (!events_ || !wait_fd(events_.get(), POLLIN, deadline)) return std::nullopt;
    char buf[4096];
    ssize_t n = ::read(events_.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    line_buf_.append(buf, static_cast<size_t>(n));
    events_seen_.append(buf, static_cast<size_t>(n));
  }
}

void Child::send_line(const std::string& line) {
  if (!control_) return;
  std::string l = line + "\n";
  ssize_t n = ::write(control_.get(), l.data(), l.size());
  (void)n;
}

void Child::close_input() { control_.reset(); }

ExitStatus Child::wait(std::chrono::milliseconds timeout) {
  if (status_) return *status_;
  if (pid_ <= 0) return ExitStatus{};
  bool timed_out = false;
  if (!wait_fd(pidfd_.get(), POLLIN, Clock::now() + timeout)) {
    ::kill(pid_, SIGKILL);
    timed_out = true;
  }
  ExitStatus st = reap(pid_);
  st.timed_out = timed_out;
  status_ = st;
  return st;
}

void Child::kill(int sig) {
  if (running()) ::kill(pid_, sig);
}

std::string Child::output() const {
  std::string out = capture_ ? read_whole_fd(capture_.get()) : std::string();
  if (!events_seen_.empty()) out += "[event lines]\n" + events_seen_;
  return out;
}

CommandResult run_command(const std::vector<std::string>& argv, const SpawnOptions& opts,
                          std::chrono::milliseconds timeout) {
  Child c = Child::exec(argv, opts);
  CommandResult r;
  r.status = c.wait(timeout);
  r.out = c.output();
  return r;
}

}  // namespace pbtest
