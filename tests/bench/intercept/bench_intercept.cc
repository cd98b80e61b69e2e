// portbroker_bench_intercept: what `exec --intercept` costs a server binding port 80 as a
// non-root user, against authbind --deep (Debian's authbind: LD_PRELOAD plus a setuid helper
// run for each bind) and against an in-process bind (root, no broker: the floor), all in one
// run, in interleaved rounds so that each saw the same background load.
//
//   portbroker_bench_intercept [--rounds N] [--iterations N] [--authbind-iterations N]
//
// Each figure is one bind_loop run: socket, SO_REUSEADDR, bind 0.0.0.0:80, close, timed per
// iteration (the median of each run; the median over rounds is reported). Under the intercept,
// bind is an acquire and close a release: two round trips to portbrokerd. Runs as root inside
// a private network and mount namespace: authbind's configuration (/etc/authbind) is a private
// bind mount, and the host's ports and files are never touched. Prints a table and one JSON
// line; exit 0 when the run completed, whatever the figures.
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_support.h"

namespace pbbench {
namespace {

constexpr uid_t kUser = 65534;
constexpr const char* kAuthbindDir = "/etc/authbind";

struct Options {
  int rounds = 5;
  long iterations = 3000;
  long authbind_iterations = 300;
};

// Runs argv (as `uid` when not root) and returns the p50 from bind_loop's line, in ns.
double run_loop(const std::vector<std::string>& argv, uid_t uid,
                const std::vector<std::string>& env) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) die("pipe: %s", std::strerror(errno));
  pid_t pid = fork_child([&]() -> int {
    ::dup2(out[1], STDOUT_FILENO);
    for (const auto& kv : env) ::putenv(const_cast<char*>(kv.c_str()));
    if (uid != 0 && (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0)) {
      return 126;
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    return 127;
  });
  ::close(out[1]);
  std::string text;
  char buf[256];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;)
    text.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  int code = wait_child(pid);
  auto at = text.find("p50_ns=");
  if (code != 0 || at == std::string::npos) {
    die("%s exited %d: %s", argv[0].c_str(), code, text.c_str());
  }
  return std::atof(text.c_str() + at + 7);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// authbind reads /etc/authbind/byport/80: a private copy granting everyone port 80, mounted
// over the real directory in this process's own mount namespace.
void private_authbind_config(const std::string& scratch) {
  if (::unshare(CLONE_NEWNS) != 0) die("unshare(CLONE_NEWNS): %s", std::strerror(errno));
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    die("making mounts private: %s", std::strerror(errno));
  }
  std::string dir = scratch + "/authbind";
  ::mkdir(dir.c_str(), 0755);
  ::mkdir((dir + "/byport").c_str(), 0755);
  std::string grant = dir + "/byport/80";
  int fd = ::open(grant.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
  if (fd < 0 || ::fchmod(fd, 0755) != 0) die("cannot write %s", grant.c_str());
  ::close(fd);
  ::mkdir(kAuthbindDir, 0755);  // absent when only the package's helper is installed
  if (::mount(dir.c_str(), kAuthbindDir, nullptr, MS_BIND, nullptr) != 0) {
    die("bind-mounting %s: %s", kAuthbindDir, std::strerror(errno));
  }
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> long {
      if (i + 1 >= argc) die("%s needs a value", a.c_str());
      return std::atol(argv[++i]);
    };
    if (a == "--rounds") {
      o.rounds = static_cast<int>(next());
    } else if (a == "--iterations") {
      o.iterations = next();
    } else if (a == "--authbind-iterations") {
      o.authbind_iterations = next();
    } else {
      std::fprintf(stderr,
                   "usage: portbroker_bench_intercept [--rounds N] [--iterations N] "
                   "[--authbind-iterations N]\n");
      std::exit(a == "--help" ? 0 : 2);
    }
  }
  if (o.rounds < 1 || o.iterations < 1 || o.authbind_iterations < 1) die("counts must be >= 1");
  return o;
}

}  // namespace

int run(int argc, char** argv) {
  Options o = parse(argc, argv);
  if (::geteuid() != 0) die("run as root: non-root runs need a real uid switch and authbind");
  if (::access(PB_AUTHBIND, X_OK) != 0) die("%s missing (apt install authbind)", PB_AUTHBIND);
  enter_private_netns();
  TempDir scratch;
  ::chmod(scratch.path().c_str(), 0755);
  private_authbind_config(scratch.path());
  std::string policy = scratch.path() + "/portbroker.toml";
  std::ofstream(policy) << "[[rule]]\nname = \"web\"\nusers = [" << kUser
                        << "]\nports = 80\nprotocol = \"tcp\"\n";
  DaemonProcess daemon(PB_DAEMON_PATH, scratch.path(), {"--config", policy, "--log-level", "warn"});
  const std::string sock = "PORTBROKER_SOCKET=" + daemon.socket_path();
  const std::string loop = PB_BIND_LOOP;
  const std::string iters = std::to_string(o.iterations);

  const std::string load_before = loadavg();
  std::vector<double> floor, intercept, authbind;
  for (int r = 0; r < o.rounds; ++r) {
    floor.push_back(run_loop({loop, "80", iters}, 0, {}));
    intercept.push_back(
        run_loop({PB_CLI_PATH, "exec", "--intercept", "--", loop, "80", iters}, kUser, {sock}));
    authbind.push_back(run_loop(
        {PB_AUTHBIND, "--deep", loop, "80", std::to_string(o.authbind_iterations)}, kUser, {}));
  }
  const double f = median(floor), i = median(intercept), a = median(authbind);
  char machine[300];
  std::snprintf(machine, sizeof(machine), "%s, %d CPUs, loadavg %s -> %s",
                cpu_description().c_str(), cpu_count(), load_before.c_str(), loadavg().c_str());
  std::printf("bind+close of 0.0.0.0:80, median over %d interleaved rounds (p50 of each run)\n",
              o.rounds);
  std::printf("  %s\n", machine);
  std::printf("  %-42s %10.1f us\n", "in-process bind as root (floor F)", f / 1000);
  std::printf("  %-42s %10.1f us   %6.1f x F\n", "exec --intercept as uid 65534 (I)", i / 1000,
              i / f);
  std::printf("  %-42s %10.1f us   %6.1f x F\n", "authbind --deep as uid 65534 (A)", a / 1000,
              a / f);
  std::printf("  %-42s %10.1f      target >= 10: %s\n", "A / I (intercept's speed-up)", a / i,
              a / i >= 10 ? "PASS" : "MISS");
  std::printf(
      "{\"machine\":\"%s\",\"floor_us\":%.2f,\"intercept_us\":%.2f,\"authbind_us\":%.2f,"
      "\"intercept_over_floor\":%.2f,\"authbind_over_intercept\":%.2f}\n",
      machine, f / 1000, i / 1000, a / 1000, i / f, a / i);
  if (daemon.stop() != 0) die("portbrokerd did not stop cleanly");
  return 0;
}

}  // namespace pbbench

int main(int argc, char** argv) { return pbbench::run(argc, argv); }
