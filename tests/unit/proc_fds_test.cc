#include "broker/os/proc_fds.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>

#include "portbroker/fd.hpp"

using namespace portbroker;
using namespace portbroker::broker;

namespace {

uint64_t inode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

std::map<int, uint64_t> sockets_of(int pid_dir, bool fdinfo_only) {
  std::map<int, uint64_t> out;
  auto visit = [&out](int fd, uint64_t inode) {
    out[fd] = inode;
    return true;
  };
  bool ok = fdinfo_only ? for_each_socket_fd_by_fdinfo(pid_dir, visit)
                        : for_each_socket_fd(pid_dir, visit);
  REQUIRE_MESSAGE(ok, "cannot read the fds: " << std::strerror(errno));
  return out;
}

}  // namespace

TEST_CASE("proc fds: the links and fdinfo name the same sockets, and only sockets") {
  UniqueFd a(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd b(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd file(::open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(file);
  UniqueFd self(::open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(self);
  auto by_link = sockets_of(self.get(), false);
  auto by_fdinfo = sockets_of(self.get(), true);
  CHECK(by_link.at(a.get()) == inode_of(a.get()));
  CHECK(by_link.at(b.get()) == inode_of(b.get()));
  CHECK(by_link.count(file.get()) == 0);
  CHECK(by_fdinfo == by_link);
}

TEST_CASE("proc fds: stopping early visits no more fds") {
  UniqueFd a(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd b(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd self(::open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  int visits = 0;
  CHECK(for_each_socket_fd_by_fdinfo(self.get(), [&](int, uint64_t) { return ++visits < 1; }));
  CHECK(visits == 1);
}

TEST_CASE("proc fds: without CAP_DAC_READ_SEARCH another user's sockets are found by fdinfo") {
  if (::geteuid() != 0) {
    MESSAGE("skipping: needs root to run a process as another user");
    return;
  }
  int ready[2], done[2];
  REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(done, O_CLOEXEC) == 0);
  pid_t holder = ::fork();
  REQUIRE(holder >= 0);
  if (holder == 0) {
    ::close(done[1]);  // else its read below never sees the end
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    // As after an exec as that user: dumpable, so its /proc/PID/fd belongs to it, not root.
    ::prctl(PR_SET_DUMPABLE, 1);
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    uint64_t ino = s >= 0 ? inode_of(s) : 0;
    if (::write(ready[1], &ino, sizeof(ino)) != sizeof(ino)) ::_exit(3);
    char c;
    (void)::read(done[0], &c, 1);
    ::_exit(0);
  }
  ::close(ready[1]);
  ::close(done[0]);
  uint64_t want = 0;
  REQUIRE(::read(ready[0], &want, sizeof(want)) == sizeof(want));
  ::close(ready[0]);
  REQUIRE(want != 0);

  // A scanner with root's uid but neither DAC capability: /proc/PID/fd is closed to it.
  pid_t scanner = ::fork();
  REQUIRE(scanner >= 0);
  if (scanner == 0) {
    cap_t caps = cap_get_proc();
    cap_value_t drop[] = {CAP_DAC_READ_SEARCH, CAP_DAC_OVERRIDE};
    if (caps == nullptr || cap_set_flag(caps, CAP_EFFECTIVE, 2, drop, CAP_CLEAR) != 0 ||
        cap_set_proc(caps) != 0) {
      ::_exit(10);
    }
    cap_free(caps);
    std::string dir = "/proc/" + std::to_string(holder);
    UniqueFd pid_dir(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!pid_dir) ::_exit(11);
    UniqueFd fds(::openat(pid_dir.get(), "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fds) ::_exit(12);  // the capability drop did not take: the test would prove nothing
    bool found = false;
    bool ok = for_each_socket_fd(pid_dir.get(), [&](int, uint64_t inode) {
      found = found || inode == want;
      return !found;
    });
    ::_exit(!ok ? 13 : found ? 0 : 14);
  }
  int status = 0;
  REQUIRE(::waitpid(scanner, &status, 0) == scanner);
  ::close(done[1]);
  int hstatus = 0;
  ::waitpid(holder, &hstatus, 0);
  REQUIRE(WIFEXITED(status));
  CHECK_MESSAGE(WEXITSTATUS(status) == 0,
                "scanner exit " << WEXITSTATUS(status)
                                << " (10 capset, 11 open /proc/PID, 12 fd dir still open, 13 no "
                                   "fdinfo, 14 socket not found)");
}
