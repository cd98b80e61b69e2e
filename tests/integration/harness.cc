#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "ipc/wire.h"

extern char** environ;

namespace pbtest {

using portbroker::Client;

namespace {

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

// poll() one fd until `events` or the deadline; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, ms_left(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

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

}  // namespace

// ---- files and fds ------------------------------------------------------------------------------

TempDir::TempDir() {
  char tmpl[] = "/tmp/pb-it-XXXXXX";
  char* p = ::mkdtemp(tmpl);
  REQUIRE_MESSAGE(p != nullptr, errno_text("mkdtemp"));
  path_ = p;
  // mkdtemp makes 0700; other uids must reach the daemon socket inside.
  REQUIRE_MESSAGE(::chmod(path_.c_str(), 0755) == 0, errno_text("chmod"));
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  ::nftw(
      path_.c_str(),
      [](const char* p, const struct stat*, int, FTW*) -> int {
        ::remove(p);
        return 0;
      },
      16, FTW_DEPTH | FTW_PHYS);
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

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

FdLeakCheck::FdLeakCheck() : before_(list_fds(0)) {}

FdLeakCheck::~FdLeakCheck() {
  auto after = list_fds(0);
  CHECK_MESSAGE(after.size() == before_.size(), "the test process leaked fds:\n"
                                                    << describe_fd_diff(before_, after));
}

// ---- child processes ----------------------------------------------------------------------------

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
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
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
  std::vector<std::string> env = build_env(opts);
  std::vector<char*> c_env = c_strings(env);
  const bool is_lambda = static_cast<bool>(plan.fn);

  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  REQUIRE_MESSAGE(pid >= 0, errno_text("fork"));
  if (pid == 0) {
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
    // After the uid change: changing credentials clears the parent-death signal.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);
    if (!opts.name.empty()) ::prctl(PR_SET_NAME, opts.name.c_str());
    std::vector<int> keep = {0, 1, 2};
    for (int fd : opts.keep_fds) {
      keep.push_back(fd);
      ::fcntl(fd, F_SETFD, 0);
    }
    if (is_lambda) {
      keep.push_back(events[1]);
      keep.push_back(control[0]);
    }
    close_all_except(keep);
    signal(SIGPIPE, SIG_IGN);
    if (is_lambda) {
      int rc = 99;
      try {
        ChildIo io(events[1], control[0]);
        rc = plan.fn(io);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "harness child: exception: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "harness child: unknown exception\n");
      }
      std::fflush(nullptr);
      ::_exit(rc);
    }
    signal(SIGPIPE, SIG_DFL);
    ::execve(c_argv[0], c_argv.data(), c_env.data());
    child_die(errno_text(("execve " + argv[0]).c_str()));
  }
  ::close(events[1]);
  ::close(control[0]);
  ::close(devnull);
  int pidfd = pidfd_open(pid);
  REQUIRE_MESSAGE(pidfd >= 0, errno_text("pidfd_open"));
  ::fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  Child c;
  c.pid_ = pid;
  c.pidfd_.reset(pidfd);
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
    int st;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
  }
}

std::optional<std::string> Child::read_line(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto nl = line_buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = line_buf_.substr(0, nl);
      line_buf_.erase(0, nl + 1);
      return line;
    }
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
  ExitStatus st;
  if (!wait_fd(pidfd_.get(), POLLIN, Clock::now() + timeout)) {
    ::kill(pid_, SIGKILL);
    st.timed_out = true;
  }
  int raw = 0;
  while (::waitpid(pid_, &raw, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(raw)) {
    st.exited = true;
    st.code = WEXITSTATUS(raw);
  } else if (WIFSIGNALED(raw)) {
    st.signal = WTERMSIG(raw);
  }
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

// ---- the daemon ---------------------------------------------------------------------------------

namespace {

UniqueFd make_notify_socket(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  REQUIRE_MESSAGE(fd.valid(), errno_text("socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, path.data(), path.size());
  ::unlink(path.c_str());
  REQUIRE_MESSAGE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0,
                  errno_text("bind notify socket"));
  // The daemon may run as root while a test drops nothing: 0666 is harmless in a 0755 dir.
  ::chmod(path.c_str(), 0666);
  return fd;
}

enum class ReadyOutcome { kReady, kExited, kTimeout };

// Waits for READY=1 on `notify` or the child's exit, whichever comes first.
ReadyOutcome wait_ready(int notify, const Child& child, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p[2] = {{notify, POLLIN, 0}, {child.pidfd(), POLLIN, 0}};
    int rc = ::poll(p, 2, ms_left(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return ReadyOutcome::kTimeout;
    if (p[0].revents & POLLIN) {
      char buf[4096];
      ssize_t n = ::recv(notify, buf, sizeof(buf), 0);
      if (n > 0) {
        std::string msg(buf, static_cast<size_t>(n));
        std::istringstream lines(msg);
        for (std::string line; std::getline(lines, line);) {
          if (line == "READY=1") return ReadyOutcome::kReady;
        }
      }
      continue;
    }
    if (p[1].revents) return ReadyOutcome::kExited;
  }
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
  std::string notify_path = dir_->file("notify." + std::to_string(serial) + ".sock");
  UniqueFd notify = make_notify_socket(notify_path);
  // Without a config file the daemon applies its embedded default policy; an explicit path
  // keeps it off the host's /etc/portbroker.
  std::string config = dir_->file("portbroker.toml");
  if (!opts.config_text.empty()) std::ofstream(config) << opts.config_text;

  std::vector<std::string> argv = {daemon_path(), "--socket",          socket_path_,
                                   "--state-dir", dir_->file("state"), "--config",
                                   config,        "--log-level",       opts.log_level};
  argv.insert(argv.end(), opts.args.begin(), opts.args.end());
  SpawnOptions so;
  so.env["NOTIFY_SOCKET"] = notify_path;
  so.unset_env = {"PORTBROKER_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"};
  so.output_path = log_path_;
  so.nofile_limit = opts.nofile_limit;
  proc_.emplace(Child::exec(argv, so));
  pid_ = proc_->pid();
  register_for_failure_log();

  std::string cmdline;
  for (const auto& a : argv) cmdline += a + " ";
  ReadyOutcome r = wait_ready(notify.get(), *proc_, std::chrono::seconds(30));
  ::unlink(notify_path.c_str());
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

void Daemon::stop(int sig) {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  proc_->kill(sig);
  ExitStatus st = proc_->wait(std::chrono::seconds(20));
  CHECK_MESSAGE(st.ok(),
                "portbrokerd did not exit cleanly on signal " << sig << ": " << st.describe());
  CHECK_MESSAGE(!path_exists(socket_path_),
                "portbrokerd left its socket file " << socket_path_ << " behind on signal " << sig);
}

void Daemon::wait_stopped() {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  ExitStatus st = proc_->wait(std::chrono::seconds(20));
  CHECK_MESSAGE(st.ok(), "portbrokerd did not exit cleanly: " << st.describe());
  CHECK_MESSAGE(!path_exists(socket_path_), "portbrokerd left its socket file " << socket_path_);
}

void Daemon::kill_hard() {
  if (stopped_ || !proc_) return;
  stopped_ = true;
  probe_.reset();
  proc_->kill(SIGKILL);
  proc_->wait(std::chrono::seconds(20));
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
  ReadyOutcome r = wait_ready(notify.get(), c, std::chrono::seconds(30));
  ::unlink(notify_path.c_str());
  if (r == ReadyOutcome::kReady) {
    out.became_ready = true;
    c.kill(SIGTERM);
  }
  out.result.status = c.wait(std::chrono::seconds(20));
  out.result.out = c.output();
  return out;
}

CommandResult run_cli(const Daemon& d, const std::vector<std::string>& args, SpawnOptions opts) {
  for (const auto& [k, v] : d.client_env()) opts.env.emplace(k, v);
  std::vector<std::string> argv = {cli_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, opts);
}

// ---- lease holders ------------------------------------------------------------------------------

std::string AcquireOutcome::describe() const {
  if (ok) {
    return "granted port " + std::to_string(port) + " (fd bound to " + std::to_string(bound_port) +
           "), lease " + std::to_string(id);
  }
  return std::string("refused with ") + portbroker::error_code_name(code) + ": " + message;
}

namespace {

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// The holder's command loop (runs in the child).
int holder_loop(ChildIo& io, int listen_fd) {
  for (;;) {
    auto cmd = io.read_line();
    if (!cmd || *cmd == "exit") return 0;
    if (cmd->rfind("accept ", 0) == 0) {
      int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) {
        io.send_line("accept failed: " + std::string(std::strerror(errno)));
        return 2;
      }
      auto got = recv_line(conn);
      send_all(conn, cmd->substr(7) + "\n");
      ::close(conn);
      io.send_line(got ? "accepted" : "accepted-no-line");
    } else if (cmd->rfind("serve ", 0) == 0) {
      std::string name = cmd->substr(6);
      for (;;) {
        pollfd p[2] = {{listen_fd, POLLIN, 0}, {io.from_parent_fd(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
          if (errno == EINTR) continue;
          return 3;
        }
        if (p[1].revents) return 0;  // "exit" or EOF: either way we are done
        if (p[0].revents & POLLIN) {
          int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (conn < 0) continue;
          if (recv_line(conn)) send_all(conn, name + "\n");
          ::close(conn);
        }
      }
    } else {
      io.send_line("unknown command: " + *cmd);
    }
  }
}

}  // namespace

Child start_holder(const Daemon& d, const std::string& spec, SpawnOptions opts, bool wait_for_go) {
  if (opts.name.empty()) opts.name = "pbholder";
  std::string path = d.socket_path();
  return Child::run(
      [path, spec, wait_for_go](ChildIo& io) {
        auto c = Client::connect(path);
        if (!c) {
          io.send_line("err " + std::to_string(static_cast<int>(c.error().code)) + " " +
                       one_line(c.error().message));
          return 1;
        }
        if (wait_for_go) {
          io.send_line("connected");
          auto go = io.read_line();
          if (!go || *go != "go") return 0;
        }
        auto lease = c->acquire(spec);
        if (!lease) {
          io.send_line("err " + std::to_string(static_cast<int>(lease.error().code)) + " " +
                       one_line(lease.error().message));
          return 0;
        }
        io.send_line("ok " + std::to_string(lease->port()) + " " +
                     std::to_string(local_port(lease->fd())) + " " + std::to_string(lease->id()));
        return holder_loop(io, lease->fd());
      },
      opts);
}

AcquireOutcome read_outcome(Child& holder) {
  AcquireOutcome o;
  auto line = holder.read_line();
  if (line && *line == "connected") line = holder.read_line();
  if (!line) {
    o.code = portbroker::ErrorCode::kInternal;
    o.message = "the child reported nothing; its output:\n" + holder.output();
    return o;
  }
  std::istringstream in(*line);
  std::string word;
  in >> word;
  if (word == "ok") {
    unsigned port = 0, bound = 0;
    in >> port >> bound >> o.id;
    o.ok = true;
    o.port = static_cast<uint16_t>(port);
    o.bound_port = static_cast<uint16_t>(bound);
  } else {
    int code = 0;
    in >> code;
    o.code = static_cast<portbroker::ErrorCode>(code);
    std::getline(in, o.message);
    if (!o.message.empty() && o.message[0] == ' ') o.message.erase(0, 1);
    if (word != "err") o.message = "unexpected line from the child: " + *line;
  }
  return o;
}

Holder spawn_holder(const Daemon& d, const std::string& spec, SpawnOptions opts) {
  Child c = start_holder(d, spec, std::move(opts));
  AcquireOutcome o = read_outcome(c);
  REQUIRE_MESSAGE(o.ok, "holder of " << spec << ": " << o.describe());
  return Holder{std::move(c), o};
}

AcquireOutcome acquire_in_child(const Daemon& d, const std::string& spec, SpawnOptions opts) {
  if (opts.name.empty()) opts.name = "pbacquirer";
  Child c = start_holder(d, spec, std::move(opts));
  AcquireOutcome o = read_outcome(c);
  c.close_input();
  ExitStatus st = c.wait();
  CHECK_MESSAGE(st.ok(), "acquiring child " << st.describe() << "\n" << c.output());
  return o;
}

// ---- network ------------------------------------------------------------------------------------

namespace {

bool fill_sockaddr(const std::string& addr, uint16_t port, sockaddr_storage& ss, socklen_t& len) {
  std::memset(&ss, 0, sizeof(ss));
  if (addr.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    if (::inet_pton(AF_INET6, addr.c_str(), &a->sin6_addr) != 1) return false;
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    if (::inet_pton(AF_INET, addr.c_str(), &a->sin_addr) != 1) return false;
    len = sizeof(*a);
  }
  return true;
}

void set_timeouts(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000),
             static_cast<suseconds_t>(t.count() % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

}  // namespace

UniqueFd connect_tcp(uint16_t port, const std::string& addr) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!fill_sockaddr(addr, port, ss, len)) return UniqueFd();
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  set_timeouts(fd.get(), kDefaultTimeout);
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return UniqueFd();
  return fd;
}

bool send_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

std::optional<std::string> recv_line(int fd, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::string line;
  for (;;) {
    if (!wait_fd(fd, POLLIN, deadline)) return std::nullopt;
    char c;
    ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return std::nullopt;
    if (c == '\n') return line;
    line.push_back(c);
  }
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

bool is_listening(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v != 0;
}

int socket_type(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == 0 ? v : -1;
}

UniqueFd bind_outside(int type, uint16_t port, const std::string& addr) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!fill_sockaddr(addr, port, ss, len)) return UniqueFd();
  UniqueFd fd(::socket(ss.ss_family, type | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return UniqueFd();
  if (type == SOCK_STREAM && ::listen(fd.get(), 16) != 0) return UniqueFd();
  return fd;
}

int outside_bind_errno(uint16_t port, const std::string& addr, bool reuseaddr, int type) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!fill_sockaddr(addr, port, ss, len)) return EINVAL;
  UniqueFd fd(::socket(ss.ss_family, type | SOCK_CLOEXEC, 0));
  if (!fd) return errno;
  int one = 1;
  if (reuseaddr && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
    return errno;
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return errno;
  if (type == SOCK_STREAM && ::listen(fd.get(), 4) != 0) return errno;
  return 0;
}

bool port_free(uint16_t port, const std::string& addr) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!fill_sockaddr(addr, port, ss, len)) return false;
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return false;
  // As servers do (and the daemon by default): TIME_WAIT leftovers must not count as held.
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0 && ::listen(fd.get(), 1) == 0;
}

// ---- raw protocol -------------------------------------------------------------------------------

RawConn::RawConn(const std::string& path) {
  auto fd = portbroker::ipc::connect_to(path);
  REQUIRE_MESSAGE(fd.ok(), "raw connect: " << fd.error().message);
  fd_ = std::move(fd).value();
}

int RawConn::send_raw(const void* data, size_t len, const std::vector<int>& fds) {
  return portbroker::ipc::send_bytes(fd_.get(), data, len, fds, false);
}

int RawConn::send_message(capnp::MessageBuilder& msg, const std::vector<int>& fds) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  return send_raw(words.begin(), words.size() * sizeof(capnp::word), fds);
}

RawConn::Got RawConn::recv(std::chrono::milliseconds timeout) {
  reader_.reset();
  if (!wait_fd(fd_.get(), POLLIN, Clock::now() + timeout)) return Got::kTimeout;
  auto st = portbroker::ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/true, /*dont_wait=*/true);
  switch (st) {
    case portbroker::ipc::RecvStatus::kRecord:
      break;
    case portbroker::ipc::RecvStatus::kEof:
      return Got::kClosed;
    case portbroker::ipc::RecvStatus::kError:
      return buf_.error == ECONNRESET ? Got::kClosed : Got::kError;
    case portbroker::ipc::RecvStatus::kWouldBlock:
      return Got::kTimeout;
    default:
      return Got::kUnreadable;
  }
  try {
    reader_.emplace(buf_.record(), portbroker::ipc::reader_options());
    (void)reader_->getRoot<portbroker::wire::Reply>().which();
  } catch (const kj::Exception& e) {
    reader_.reset();
    return Got::kUnreadable;
  }
  return Got::kReply;
}

portbroker::wire::Reply::Reader RawConn::reply() const {
  REQUIRE(reader_.has_value());
  return const_cast<capnp::FlatArrayMessageReader&>(*reader_).getRoot<portbroker::wire::Reply>();
}

std::string RawConn::describe_reply() const {
  if (!reader_) return "(no reply)";
  auto r = reply();
  switch (r.which()) {
    case portbroker::wire::Reply::ERROR:
      return "error code " + std::to_string(static_cast<int>(r.getError().getCode())) + ": " +
             std::string(r.getError().getMessage().cStr());
    case portbroker::wire::Reply::ACQUIRED:
      return "acquired " + std::to_string(r.getAcquired().size()) + " socket(s)";
    case portbroker::wire::Reply::RELEASED:
      return "released";
    case portbroker::wire::Reply::LEASES:
      return "leases (" + std::to_string(r.getLeases().size()) + ")";
    case portbroker::wire::Reply::STATUS:
      return "status";
    default:
      break;
  }
  return "reply of unknown kind " + std::to_string(static_cast<int>(r.which()));
}

void build_status(capnp::MallocMessageBuilder& msg, uint32_t version) {
  auto req = msg.initRoot<portbroker::wire::Request>();
  req.setVersion(version);
  req.setStatus();
}

void build_acquire(capnp::MallocMessageBuilder& msg, const std::vector<std::string>& specs) {
  auto req = msg.initRoot<portbroker::wire::Request>();
  req.setVersion(portbroker::wire::PROTOCOL_VERSION);
  auto list = req.initAcquire(static_cast<unsigned>(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i) {
    auto spec = portbroker::parse_socket_spec(specs[i]);
    REQUIRE_MESSAGE(spec.ok(), spec.error().message);
    portbroker::ipc::spec_to_wire(spec.value(), list[static_cast<unsigned>(i)]);
  }
}

}  // namespace pbtest
