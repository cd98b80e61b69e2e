// main() of every integration-test binary: enters a private network namespace (so the tests own
// every port of their own loopback) before doctest runs a single test, and prints the daemon's
// log whenever an assertion fails. The same binary doubles as a LISTEN_FDS probe for the exec
// tests (`<test> --pb-listen-fds-probe`).
#define DOCTEST_CONFIG_IMPLEMENT
#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/netns.h"
#include "harness.h"

namespace pbtest {

namespace {

bool g_can_switch_uid = false;

// Helper mode for the exec tests: reports what `portbroker exec` handed over, in one line of
// key=value tokens, then serves one echo on the first socket.
int listen_fds_probe() {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  int n = std::atoi(env("LISTEN_FDS").c_str());
  std::string line = "LISTEN_FDS=" + env("LISTEN_FDS") + " LISTEN_PID=" + env("LISTEN_PID") +
                     " PID=" + std::to_string(::getpid()) +
                     " LISTEN_FDNAMES=" + env("LISTEN_FDNAMES");
  for (int fd = 3; fd < 3 + n; ++fd) {
    std::string k = " fd" + std::to_string(fd) + ".";
    int flags = ::fcntl(fd, F_GETFD);
    line += k + "open=" + (flags >= 0 ? "1" : "0");
    if (flags < 0) continue;
    int type = socket_type(fd);
    line += k + "type=" +
            (type == SOCK_STREAM  ? "stream"
             : type == SOCK_DGRAM ? "dgram"
                                  : std::to_string(type));
    line += k + "listening=" + (is_listening(fd) ? "1" : "0");
    line += k + "port=" + std::to_string(local_port(fd));
    line += k + "cloexec=" + ((flags & FD_CLOEXEC) ? "1" : "0");
  }
  // Every fd above stdio this process inherited, in order: "fds=3,4".
  std::string inherited;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    std::vector<int> open_fds;
    while (const dirent* e = ::readdir(dir)) {
      int fd = std::atoi(e->d_name);
      if (e->d_name[0] != '.' && fd > 2 && fd != ::dirfd(dir)) open_fds.push_back(fd);
    }
    ::closedir(dir);
    std::sort(open_fds.begin(), open_fds.end());
    for (int fd : open_fds) inherited += (inherited.empty() ? "" : ",") + std::to_string(fd);
  }
  line += " fds=" + inherited;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (n >= 1 && socket_type(3) == SOCK_STREAM && is_listening(3)) {
    int conn = ::accept4(3, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) return 3;
    auto got = recv_line(conn);
    if (!got || !send_all(conn, *got + "\n")) return 4;
    ::close(conn);
  }
  return 0;
}

void ensure_stdio_open() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0) {
      int n = ::open("/dev/null", O_RDWR);
      if (n >= 0 && n != fd) {
        ::dup2(n, fd);
        ::close(n);
      }
    }
  }
}

// Prints the log of every live daemon when an assertion fails (once per daemon per test case).
struct DaemonLogListener : doctest::IReporter {
  explicit DaemonLogListener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override { Daemon::new_test_case(); }
  void test_case_reenter(const doctest::TestCaseData&) override { Daemon::new_test_case(); }
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {
    Daemon::print_live_logs_once();
  }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& ad) override {
    if (ad.m_failed) Daemon::print_live_logs_once();
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

REGISTER_LISTENER("portbrokerd-log", 1, DaemonLogListener);

bool can_switch_uid() { return g_can_switch_uid; }
std::string daemon_path() { return PB_DAEMON_PATH; }
std::string cli_path() { return PB_CLI_PATH; }
std::string example_path(const std::string& name) {
  return std::string(PB_EXAMPLES_DIR) + "/" + name;
}
std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

}  // namespace pbtest

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--pb-listen-fds-probe") == 0) {
    return pbtest::listen_fds_probe();
  }
  pbtest::ensure_stdio_open();
  std::string why;
  if (!pbtest::enter_private_netns(why, &pbtest::g_can_switch_uid)) {
    std::fprintf(stderr,
                 "cannot enter a private network namespace (%s); the integration tests never "
                 "run on the host's ports\n",
                 why.c_str());
    return 1;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
