// The daemon's least privilege, tried in forked children (capabilities, no_new_privs and seccomp
// filters are for the life of a process and cannot be undone in the test process itself).
#include "broker/daemon/privileges.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "common/process.h"

using namespace portbroker::broker;

namespace {

bool has(const std::vector<NeededCapability>& caps, int cap) {
  return std::any_of(caps.begin(), caps.end(), [cap](const auto& c) { return c.cap == cap; });
}

// One line of /proc/self/status, e.g. "NoNewPrivs:\t1" for key "NoNewPrivs".
std::string status_field(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      auto value = line.substr(key.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      return value;
    }
  }
  return "(none)";
}

// Runs `body` in a child whose stderr goes to a pipe; returns its exit code and what it wrote.
struct ChildRun {
  pbtest::ExitStatus status;
  std::string err;
};
ChildRun run_in_child(const std::function<int()>& body) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  auto pid = pbtest::fork_child([&] {
    ::dup2(p[1], STDERR_FILENO);
    return body();
  });
  ::close(p[1]);
  REQUIRE(pid.ok());
  ChildRun out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) out.err.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  out.status = pbtest::reap(*pid);
  return out;
}

}  // namespace

TEST_CASE("capabilities follow the features") {
  auto plain = needed_capabilities({.root = false, .guard = false});
  REQUIRE(!plain.empty());
  CHECK(plain.front().cap == CAP_NET_BIND_SERVICE);
  CHECK(!has(plain, CAP_SETUID));
  CHECK(!has(plain, CAP_NET_ADMIN));
  CHECK(!has(plain, CAP_SYS_ADMIN));

  auto root = needed_capabilities({.root = true, .guard = true});
  CHECK(has(root, CAP_SETUID));
  CHECK(has(root, CAP_SETGID));
  CHECK(has(root, CAP_SYS_PTRACE));
  CHECK(!has(root, CAP_NET_ADMIN));  // root writes the sysctl as its owner
  CHECK(!has(root, CAP_SYS_ADMIN));
  CHECK(!has(root, CAP_DAC_OVERRIDE));

  auto guard = needed_capabilities({.root = false, .guard = true});
  CHECK(has(guard, CAP_NET_ADMIN));
  for (const auto& c : guard) CHECK_MESSAGE(!c.why.empty(), c.cap);
}

TEST_CASE("the allow-list has no call that would undo the drop") {
  const auto& list = allowed_syscalls();
  for (const char* banned : {"capset", "setuid", "setresuid", "setgid", "mount", "ptrace",
                             "init_module", "bpf", "unshare", "setns", "seccomp"}) {
#if !defined(__SANITIZE_ADDRESS__)
    CHECK_MESSAGE(
        std::find_if(list.begin(), list.end(),
                     [&](const char* n) { return std::string(n) == banned; }) == list.end(),
        banned);
#else
    if (std::string(banned) != "ptrace") {
      CHECK_MESSAGE(
          std::find_if(list.begin(), list.end(),
                       [&](const char* n) { return std::string(n) == banned; }) == list.end(),
          banned);
    }
#endif
  }
}

TEST_CASE("a call outside the allow-list fails with ENOSYS, is logged, and the process lives") {
  ChildRun run = run_in_child([] {
    auto caps = drop_privileges(needed_capabilities({.root = ::geteuid() == 0}));
    if (!caps) return 10;
    auto filter = install_syscall_filter();
    if (!filter || filter->inherited) return 11;
    // getsid is not on the list: without the filter it would return this process's session.
    errno = 0;
    long rc = ::syscall(SYS_getsid, 0);
    if (rc != -1 || errno != ENOSYS) return 12;
    if (syscall_violations() != 1) return 13;
    // An allowed call still works after the handler ran.
    if (::getpid() <= 0) return 14;
    if (status_field("NoNewPrivs") != "1") return 15;
    if (status_field("Seccomp") != "2") return 16;
    // Nothing beyond the kept set is effective: no CAP_SYS_ADMIN (bit 21), no CAP_SETPCAP.
    unsigned long long eff = std::stoull(status_field("CapEff"), nullptr, 16);
    unsigned long long bnd = std::stoull(status_field("CapBnd"), nullptr, 16);
    if ((eff & (1ULL << CAP_SYS_ADMIN)) != 0 || (eff & (1ULL << CAP_SETPCAP)) != 0) return 17;
    if (::geteuid() == 0 && (bnd & (1ULL << CAP_SYS_ADMIN)) != 0) return 18;
    return 0;
  });
  CHECK_MESSAGE(run.status.ok(), run.status.describe() << "\n" << run.err);
  CHECK_MESSAGE(run.err.find("system call getsid (") != std::string::npos, run.err);
  CHECK_MESSAGE(run.err.find("fails with ENOSYS") != std::string::npos, run.err);
}

TEST_CASE("a process that inherits the filter through exec installs no second one") {
  ChildRun run = run_in_child([] {
    if (!drop_privileges({})) return 10;
    auto first = install_syscall_filter();
    if (!first || first->inherited) return 11;
    // As after the upgrade's execve: the filter and its marker are in place already.
    auto second = install_syscall_filter();
    if (!second || !second->inherited) return 12;
    if (status_field("Seccomp_filters") != "1") return 13;
    return 0;
  });
  CHECK_MESSAGE(run.status.ok(), run.status.describe() << "\n" << run.err);
}
