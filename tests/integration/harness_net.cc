#include "harness_net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace pbtest {

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

// What a plain program does: socket(), SO_REUSEADDR if asked, bind() and, for TCP, listen().
// Returns 0 with the socket in `out`, else the errno of the step that failed.
int bind_plain(int type, uint16_t port, const std::string& addr, bool reuseaddr, int backlog,
               UniqueFd& out) {
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
  if (type == SOCK_STREAM && ::listen(fd.get(), backlog) != 0) return errno;
  out = std::move(fd);
  return 0;
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
  UniqueFd fd;
  bind_plain(type, port, addr, /*reuseaddr=*/false, /*backlog=*/16, fd);
  return fd;
}

int outside_bind_errno(uint16_t port, const std::string& addr, bool reuseaddr, int type) {
  UniqueFd fd;
  return bind_plain(type, port, addr, reuseaddr, /*backlog=*/4, fd);
}

bool port_free(uint16_t port, const std::string& addr) {
  // As servers do (and the daemon by default): TIME_WAIT leftovers must not count as held.
  UniqueFd fd;
  return bind_plain(SOCK_STREAM, port, addr, /*reuseaddr=*/true, /*backlog=*/1, fd) == 0;
}

}  // namespace pbtest
