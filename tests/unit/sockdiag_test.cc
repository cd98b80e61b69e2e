#include "broker/os/sockdiag.h"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/netns.h"
#include "portbroker/fd.hpp"

using namespace portbroker;
using namespace portbroker::broker;

namespace {

sockaddr_storage endpoint(const char* address, uint16_t port, socklen_t& len) {
  sockaddr_storage ss{};
  if (std::strchr(address, ':')) {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    ::inet_pton(AF_INET6, address, &a6->sin6_addr);
    len = sizeof(*a6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    ::inet_pton(AF_INET, address, &a4->sin_addr);
    len = sizeof(*a4);
  }
  return ss;
}

UniqueFd bound_socket(int type, const char* address, uint16_t port) {
  socklen_t len = 0;
  sockaddr_storage ss = endpoint(address, port, len);
  UniqueFd fd(::socket(ss.ss_family, type | SOCK_CLOEXEC, 0));
  REQUIRE(fd.valid());
  if (ss.ss_family == AF_INET6) {
    // Keeps "::" from also claiming the IPv4 port, so tests can bind both.
    int one = 1;
    REQUIRE(::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == 0);
  }
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  std::string where = std::string(address) + " port " + std::to_string(port);
  std::string err = rc == 0 ? "" : std::strerror(errno);
  REQUIRE_MESSAGE(rc == 0, "bind " << where << ": " << err);
  return fd;
}

uint64_t inode_of(const UniqueFd& fd) {
  struct stat st {};
  REQUIRE(::fstat(fd.get(), &st) == 0);
  return st.st_ino;
}

uint16_t local_port(const UniqueFd& fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

std::string own_comm() {
  std::ifstream in("/proc/self/comm");
  std::string comm;
  std::getline(in, comm);
  return comm;
}

size_t open_fd_count() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

bool held_by(const PortHolder& h, pid_t pid) {
  for (const auto& p : h.processes)
    if (p.pid == pid) return true;
  return false;
}

constexpr uint16_t kPort = 4711;

}  // namespace

TEST_CASE("sockdiag: finds this process's sockets, tcp and udp, v4 and v6") {
  pbtest::ScopedNetns netns;
  if (!netns.ok()) {
    MESSAGE("skipping: no private network namespace (" << netns.why() << ")");
    return;
  }
  const pid_t self = ::getpid();
  const std::string comm = own_comm();

  auto none = find_port_holders(Protocol::kTcp, kPort);
  REQUIRE_MESSAGE(none.ok(), (none.ok() ? "" : none.error().message));
  CHECK(none->empty());

  UniqueFd listener = bound_socket(SOCK_STREAM, "127.0.0.1", kPort);
  REQUIRE(::listen(listener.get(), 8) == 0);
  UniqueFd udp6 = bound_socket(SOCK_DGRAM, "::", kPort);
  UniqueFd udp4 = bound_socket(SOCK_DGRAM, "127.0.0.2", kPort);
  UniqueFd other = bound_socket(SOCK_STREAM, "127.0.0.1", kPort + 1);
  REQUIRE(::listen(other.get(), 8) == 0);

  auto tcp = find_port_holders(Protocol::kTcp, kPort);
  REQUIRE_MESSAGE(tcp.ok(), (tcp.ok() ? "" : tcp.error().message));
  REQUIRE(tcp->size() == 1);
  const PortHolder& l = tcp->front();
  CHECK(l.protocol == Protocol::kTcp);
  CHECK(l.state == "LISTEN");
  CHECK(l.address.to_string() == "127.0.0.1");
  CHECK(l.port == kPort);
  CHECK(l.peer.family == 0);
  CHECK(l.uid == ::geteuid());
  CHECK(l.inode == inode_of(listener));
  REQUIRE(l.processes.size() == 1);
  CHECK(l.processes[0].pid == self);
  CHECK(l.processes[0].comm == comm);
  CHECK(l.processes[0].uid == ::geteuid());

  const size_t fds_before = open_fd_count();
  auto udp = find_port_holders(Protocol::kUdp, kPort);
  CHECK(open_fd_count() == fds_before);  // the netlink socket and /proc dirs are closed
  REQUIRE_MESSAGE(udp.ok(), (udp.ok() ? "" : udp.error().message));
  REQUIRE(udp->size() == 2);
  const PortHolder& u4 = (*udp)[0];  // IPv4 sorts first
  const PortHolder& u6 = (*udp)[1];
  CHECK(u4.state == "UNCONN");
  CHECK(u4.address.to_string() == "127.0.0.2");
  CHECK(u4.inode == inode_of(udp4));
  CHECK(u6.state == "UNCONN");
  CHECK(u6.address.to_string() == "::");
  CHECK(u6.inode == inode_of(udp6));
  for (const auto& h : *udp) {
    REQUIRE(h.processes.size() == 1);
    CHECK(h.processes[0].pid == self);
    CHECK(h.processes[0].comm == comm);
  }
}

TEST_CASE("sockdiag: connections, scopes, and sockets shared between processes") {
  pbtest::ScopedNetns netns;
  if (!netns.ok()) {
    MESSAGE("skipping: no private network namespace (" << netns.why() << ")");
    return;
  }
  const pid_t self = ::getpid();

  UniqueFd listener = bound_socket(SOCK_STREAM, "::1", kPort);
  REQUIRE(::listen(listener.get(), 8) == 0);
  UniqueFd client(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  socklen_t len = 0;
  sockaddr_storage server = endpoint("::1", kPort, len);
  REQUIRE(::connect(client.get(), reinterpret_cast<sockaddr*>(&server), len) == 0);
  UniqueFd accepted(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(accepted.valid());
  const uint16_t client_port = local_port(client);

  SUBCASE("kAll includes the accepted connection, listener first") {
    auto all = find_port_holders(Protocol::kTcp, kPort, HolderScope::kAll);
    REQUIRE(all.ok());
    REQUIRE(all->size() == 2);
    CHECK((*all)[0].state == "LISTEN");
    CHECK((*all)[0].inode == inode_of(listener));
    CHECK((*all)[1].state == "ESTAB");
    CHECK((*all)[1].inode == inode_of(accepted));
    CHECK((*all)[1].peer.to_string() == "::1");
    CHECK((*all)[1].peer_port == client_port);
    CHECK(held_by((*all)[1], self));
  }

  SUBCASE("kBound leaves connections out") {
    auto bound = find_port_holders(Protocol::kTcp, kPort, HolderScope::kBound);
    REQUIRE(bound.ok());
    REQUIRE(bound->size() == 1);
    CHECK(bound->front().state == "LISTEN");
  }

  SUBCASE("an ephemeral source port is found as held") {
    auto src = find_port_holders(Protocol::kTcp, client_port);
    REQUIRE(src.ok());
    REQUIRE(src->size() == 1);
    CHECK(src->front().state == "ESTAB");
    CHECK(src->front().peer_port == kPort);
    CHECK(src->front().inode == inode_of(client));
    CHECK(held_by(src->front(), self));
  }

  SUBCASE("a bound-only TCP socket (Linux 6.8+ reports it)") {
    UniqueFd idle = bound_socket(SOCK_STREAM, "127.0.0.1", kPort + 2);
    auto r = find_port_holders(Protocol::kTcp, kPort + 2, HolderScope::kBound);
    REQUIRE(r.ok());
    if (r->empty()) {
      MESSAGE("this kernel does not dump bound-only TCP sockets");
    } else {
      CHECK(r->front().state == "UNCONN");
      CHECK(r->front().inode == inode_of(idle));
      CHECK(held_by(r->front(), self));
    }
  }

  SUBCASE("a socket shared with a child process names both") {
    int ready[2], release[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(release, O_CLOEXEC) == 0);
    UniqueFd ready_r(ready[0]), ready_w(ready[1]), release_r(release[0]), release_w(release[1]);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // Holds the inherited listener until the parent has looked. No doctest here.
      ready_w.reset();
      release_w.reset();
      char c = 0;
      (void)!::read(release_r.get(), &c, 1);
      ::_exit(0);
    }
    release_r.reset();
    ready_w.reset();
    // The child closes its copy of ready's write end first thing: EOF means it is running.
    char c = 0;
    (void)!::read(ready_r.get(), &c, 1);
    auto r = find_port_holders(Protocol::kTcp, kPort, HolderScope::kBound);
    release_w.reset();
    int status = 0;
    ::waitpid(child, &status, 0);
    REQUIRE(r.ok());
    REQUIRE(r->size() == 1);
    CHECK(r->front().processes.size() == 2);
    CHECK(held_by(r->front(), self));
    CHECK(held_by(r->front(), child));
  }
}
