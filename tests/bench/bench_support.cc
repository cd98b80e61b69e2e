#include "bench/bench_support.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "common/netns.h"
#include "common/process.h"

namespace pbbench {

namespace {
const pid_t g_main_pid = ::getpid();
std::string g_temp_dir;  // removed by die() too
}  // namespace

void die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fputs("portbroker_bench: ", stderr);
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fputc('\n', stderr);
  if (::getpid() != g_main_pid) ::_exit(1);
  if (!g_temp_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(g_temp_dir, ec);
  }
  // Every child was started with PR_SET_PDEATHSIG: none outlives this process.
  std::exit(1);
}

void enter_private_netns() {
  std::string why;
  if (!pbtest::enter_private_netns(why)) die("%s", why.c_str());
}

uint64_t raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit: %s", std::strerror(errno));
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) die("setrlimit: %s", std::strerror(errno));
  return rl.rlim_cur;
}

namespace {

pbtest::common::TempDir make_temp_dir() {
  auto dir = pbtest::common::TempDir::create("pb-bench-");
  if (!dir) die("%s", dir.error().message.c_str());
  return std::move(dir).value();
}

}  // namespace

TempDir::TempDir() : pbtest::common::TempDir(make_temp_dir()) { g_temp_dir = path(); }

TempDir::~TempDir() { g_temp_dir.clear(); }

namespace {

// In the child, before exec: `fds` moved to 3, 4, ... in order (inheritable), every other fd
// from 3 on closed. The numbers may overlap the targets in any way; an fd that sits on another
// one's target is moved above the range first. Returns false (errno set) on failure.
bool place_listen_fds(std::vector<int> fds) {
  const int base = 3;
  const int n = static_cast<int>(fds.size());
  std::vector<int> occupant(fds.size(), -1);  // target slot -> index of the fd now on it
  for (int i = 0; i < n; ++i) {
    if (fds[i] >= base && fds[i] < base + n) occupant[fds[i] - base] = i;
  }
  for (int i = 0; i < n; ++i) {
    const int target = base + i;
    if (fds[i] == target) continue;
    if (int j = occupant[i]; j >= 0) {
      int moved = ::fcntl(target, F_DUPFD, base + n);
      if (moved < 0) return false;
      fds[j] = moved;
    }
    if (::dup2(fds[i], target) < 0) return false;
    if (fds[i] >= base && fds[i] < base + n) occupant[fds[i] - base] = -1;
    ::close(fds[i]);
    fds[i] = target;
    occupant[i] = i;
  }
  for (int i = 0; i < n; ++i) ::fcntl(base + i, F_SETFD, 0);  // those already in place, too
  ::close_range(static_cast<unsigned>(base + n), ~0U, 0);
  return true;
}

}  // namespace

DaemonProcess::DaemonProcess(const std::string& binary, const std::string& dir,
                             std::vector<std::string> args, const DaemonLaunch& launch) {
  socket_path_ = dir + "/portbroker.sock";
  const bool own_notify = launch.notify_path.empty();
  std::string notify_path = own_notify ? dir + "/notify.sock" : launch.notify_path;
  portbroker::UniqueFd notify;
  if (own_notify) {
    auto bound = pbtest::bind_notify_socket(notify_path);
    if (!bound) die("%s", bound.error().message.c_str());
    notify = std::move(bound).value();
  }

  std::vector<std::string> argv_s{binary, "--socket", socket_path_};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<int> listen;
  std::string names;
  for (const auto& [fd, name] : launch.listen_fds) {
    listen.push_back(fd);
    names += (names.empty() ? "" : ":") + name;
  }
  const uint64_t t0 = now_ns();
  auto forked = pbtest::fork_child([&]() -> int {
    // SIGTERM, not SIGKILL: the daemon then removes its socket file on its way out.
    if (!pbtest::die_with_parent(g_main_pid, SIGTERM)) return 1;
    ::setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
      if (devnull != 0) ::close(devnull);
    }
    if (!listen.empty()) {
      if (!place_listen_fds(listen)) {
        std::fprintf(stderr, "portbroker_bench: passing %zu fds: %s\n", listen.size(),
                     std::strerror(errno));
        return 127;
      }
      ::setenv("LISTEN_FDS", std::to_string(listen.size()).c_str(), 1);
      ::setenv("LISTEN_FDNAMES", names.c_str(), 1);
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    }
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(binary.c_str(), argv.data());
    std::fprintf(stderr, "portbroker_bench: exec %s: %s\n", binary.c_str(), std::strerror(errno));
    return 127;
  });
  if (!forked) die("%s", forked.error().message.c_str());
  pid_ = forked.value();
  auto pidfd = pbtest::open_pidfd(pid_);
  if (!pidfd) die("%s", pidfd.error().message.c_str());
  pidfd_ = std::move(pidfd).value();

  pbtest::ReadyOutcome ready;
  if (own_notify) {
    ready = pbtest::wait_ready(notify.get(), pidfd_.get(), std::chrono::seconds(15));
    ::unlink(notify_path.c_str());
  } else {
    ready = launch.wait_ready(pidfd_.get()) ? pbtest::ReadyOutcome::kReady
            : pbtest::wait_fd(pidfd_.get(), POLLIN, pbtest::Clock::now())
                ? pbtest::ReadyOutcome::kExited
                : pbtest::ReadyOutcome::kTimeout;
  }
  start_seconds_ = static_cast<double>(now_ns() - t0) / 1e9;
  if (ready == pbtest::ReadyOutcome::kTimeout)
    die("portbrokerd did not report READY=1 within 15 s");
  if (ready == pbtest::ReadyOutcome::kExited) {
    pbtest::ExitStatus st = pbtest::reap(pid_);
    pid_ = -1;
    die("portbrokerd %s before it was ready", st.describe().c_str());
  }
}

int DaemonProcess::open_fds() const {
  auto fds = pbtest::list_fds(pid_);
  return fds.empty() ? -1 : static_cast<int>(fds.size());
}

int DaemonProcess::stop() {
  if (pid_ < 0) return 0;
  ::kill(pid_, SIGTERM);
  if (!pbtest::wait_fd(pidfd_.get(), POLLIN, pbtest::Clock::now() + std::chrono::seconds(5))) {
    std::fprintf(stderr, "portbroker_bench: portbrokerd ignored SIGTERM for 5 s; killing\n");
    ::kill(pid_, SIGKILL);
  }
  pbtest::ExitStatus st = pbtest::reap(std::exchange(pid_, -1));
  pidfd_.reset();
  return st.shell_code();
}

void DaemonProcess::crash() {
  if (pid_ < 0) return;
  ::kill(pid_, SIGKILL);
  pbtest::reap(std::exchange(pid_, -1));
  pidfd_.reset();
}

DaemonProcess::~DaemonProcess() { stop(); }

Summary summarize(std::vector<uint64_t> samples, double wall_seconds) {
  Summary s;
  s.count = samples.size();
  s.seconds = wall_seconds;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  auto pct = [&](double q) {
    // Nearest rank.
    size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    rank = std::clamp<size_t>(rank, 1, samples.size());
    return static_cast<double>(samples[rank - 1]) / 1000.0;
  };
  s.p50_us = pct(0.50);
  s.p90_us = pct(0.90);
  s.p99_us = pct(0.99);
  s.p999_us = pct(0.999);
  s.max_us = static_cast<double>(samples.back()) / 1000.0;
  s.mean_us = static_cast<double>(std::accumulate(samples.begin(), samples.end(), uint64_t{0})) /
              static_cast<double>(samples.size()) / 1000.0;
  s.ops_per_sec = wall_seconds > 0 ? static_cast<double>(samples.size()) / wall_seconds : 0;
  return s;
}

TimedRun time_loop(size_t warmup, size_t iterations, const std::function<bool(std::string&)>& op) {
  std::string err;
  for (size_t i = 0; i < warmup; ++i) {
    if (!op(err)) die("warm-up failed: %s", err.c_str());
  }
  TimedRun run;
  run.samples_ns.resize(iterations);
  uint64_t start = now_ns();
  uint64_t prev = start;
  for (size_t i = 0; i < iterations; ++i) {
    if (!op(err)) die("iteration %zu failed: %s", i, err.c_str());
    uint64_t t = now_ns();
    run.samples_ns[i] = t - prev;
    prev = t;
  }
  run.wall_seconds = static_cast<double>(prev - start) / 1e9;
  return run;
}

pid_t fork_child(const std::function<int()>& body) {
  const pid_t parent = ::getpid();
  auto pid = pbtest::fork_child([&]() -> int {
    if (!pbtest::die_with_parent(parent, SIGKILL)) return 1;  // never outlive the benchmark
    return body();
  });
  if (!pid) die("%s", pid.error().message.c_str());
  return pid.value();
}

int wait_child(pid_t pid) { return pbtest::reap(pid).shell_code(); }

namespace {

constexpr size_t kMaxSamplesPerWorker = size_t{1} << 18;

struct WorkerSlot {
  uint64_t ops;
  uint64_t end_ns;
  uint64_t samples;
  char error[256];
};

struct SharedHeader {
  uint64_t start_ns;
  uint64_t deadline_ns;
};

}  // namespace

ConcurrentRun run_concurrent(int workers, double seconds, size_t warmup_per_worker,
                             const WorkerSetup& setup) {
  size_t header = sizeof(SharedHeader) + sizeof(WorkerSlot) * static_cast<size_t>(workers);
  header = (header + 63) & ~size_t{63};
  size_t bytes = header + sizeof(uint32_t) * kMaxSamplesPerWorker * static_cast<size_t>(workers);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap: %s", std::strerror(errno));
  auto* hdr = static_cast<SharedHeader*>(mem);
  auto* slots = reinterpret_cast<WorkerSlot*>(static_cast<char*>(mem) + sizeof(SharedHeader));
  auto* samples = reinterpret_cast<uint32_t*>(static_cast<char*>(mem) + header);

  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(go, O_CLOEXEC) != 0) {
    die("pipe: %s", std::strerror(errno));
  }
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    pids.push_back(fork_child([&, w]() -> int {
      ::close(ready[0]);
      ::close(go[1]);
      WorkerSlot& slot = slots[w];
      uint32_t* mine = samples + static_cast<size_t>(w) * kMaxSamplesPerWorker;
      std::string err;
      auto fail = [&](const std::string& what) {
        std::snprintf(slot.error, sizeof(slot.error), "worker %d: %s", w, what.c_str());
        char c = 'x';
        (void)!::write(ready[1], &c, 1);
        return 1;
      };
      WorkerOp op = setup(err);
      if (!op) return fail("setup: " + err);
      for (size_t i = 0; i < warmup_per_worker; ++i) {
        if (!op(err)) return fail("warm-up: " + err);
      }
      char c = 'r';
      if (::write(ready[1], &c, 1) != 1) return 1;
      while (::read(go[0], &c, 1) > 0) {
      }
      uint64_t deadline = __atomic_load_n(&hdr->deadline_ns, __ATOMIC_ACQUIRE);
      uint64_t prev = now_ns();
      uint64_t ops = 0;
      while (prev < deadline) {
        if (!op(err)) {
          std::snprintf(slot.error, sizeof(slot.error), "worker %d op %llu: %s", w,
                        static_cast<unsigned long long>(ops), err.c_str());
          break;
        }
        uint64_t t = now_ns();
        if (ops < kMaxSamplesPerWorker) {
          mine[ops] = static_cast<uint32_t>(std::min<uint64_t>(t - prev, UINT32_MAX));
        }
        ++ops;
        prev = t;
      }
      slot.ops = ops;
      slot.samples = std::min<uint64_t>(ops, kMaxSamplesPerWorker);
      __atomic_store_n(&slot.end_ns, prev, __ATOMIC_RELEASE);
      return 0;
    }));
  }
  ::close(ready[1]);
  ::close(go[0]);

  ConcurrentRun run;
  for (int got = 0; got < workers;) {
    pollfd p{ready[0], POLLIN, 0};
    if (::poll(&p, 1, 60'000) <= 0) die("workers did not get ready within 60 s");
    char buf[64];
    ssize_t n = ::read(ready[0], buf, sizeof(buf));
    if (n <= 0) die("a worker died before it was ready");
    got += static_cast<int>(n);
  }
  uint64_t start = now_ns();
  hdr->start_ns = start;
  __atomic_store_n(&hdr->deadline_ns, start + static_cast<uint64_t>(seconds * 1e9),
                   __ATOMIC_RELEASE);
  ::close(go[1]);
  uint64_t end = start;
  for (int w = 0; w < workers; ++w) {
    int rc = wait_child(pids[static_cast<size_t>(w)]);
    WorkerSlot& slot = slots[w];
    if (slot.error[0] != '\0' && run.error.empty()) run.error = slot.error;
    if (rc != 0 && run.error.empty())
      run.error = "worker " + std::to_string(w) + " exit " + std::to_string(rc);
    run.ops += slot.ops;
    run.min_worker_ops = w == 0 ? slot.ops : std::min(run.min_worker_ops, slot.ops);
    run.max_worker_ops = std::max(run.max_worker_ops, slot.ops);
    end = std::max(end, __atomic_load_n(&slot.end_ns, __ATOMIC_ACQUIRE));
    const uint32_t* theirs = samples + static_cast<size_t>(w) * kMaxSamplesPerWorker;
    run.samples_ns.insert(run.samples_ns.end(), theirs, theirs + slot.samples);
  }
  ::close(ready[0]);
  run.wall_seconds = static_cast<double>(end - start) / 1e9;
  ::munmap(mem, bytes);
  return run;
}

void pin(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    CPU_SET(cpu, &set);
  } else {
    for (int c = 0; c < cpu_count(); ++c) CPU_SET(c, &set);
  }
  if (::sched_setaffinity(pid, sizeof(set), &set) != 0) {
    die("sched_setaffinity(%d, cpu %d): %s", static_cast<int>(pid), cpu, std::strerror(errno));
  }
}

CpuTime cpu_time(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(f, line);
  // Fields after the command (which may hold spaces) start past the last ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  std::ifstream sched("/proc/" + std::to_string(pid) + "/schedstat");
  unsigned long long on_cpu_ns = 0;
  sched >> on_cpu_ns;
  return {static_cast<double>(on_cpu_ns) / 1e9, static_cast<double>(utime) / tick,
          static_cast<double>(stime) / tick};
}

int cpu_count() { return static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)); }

std::string cpu_description() {
  std::string model = "unknown CPU";
  bool pcid = false;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.empty()) break;  // the first CPU says it for all
    const auto colon = line.find(':');
    if (colon == std::string::npos || colon + 2 > line.size()) continue;
    if (line.rfind("model name", 0) == 0) model = line.substr(colon + 2);
    if (line.rfind("flags", 0) == 0)
      pcid = (" " + line.substr(colon + 1) + " ").find(" pcid ") != std::string::npos;
  }
  std::string meltdown;
  std::getline(std::ifstream("/sys/devices/system/cpu/vulnerabilities/meltdown"), meltdown);
  if (meltdown.find("PTI") == std::string::npos) return model + ", no PTI";
  return model + (pcid ? ", PTI with PCID" : ", PTI without PCID");
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

}  // namespace pbbench
