#include "bench/bench_raw.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace pbbench {

namespace {

// Creates a listening TCP socket on 127.0.0.1:port as a server (and portbrokerd) would.
int make_listener(uint16_t port, int* saved_errno) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *saved_errno = errno;
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, SOMAXCONN) != 0) {
    *saved_errno = errno;
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_record(int sock, const char* data, size_t len, int fd_to_pass) {
  iovec iov{const_cast<char*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd_to_pass >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &fd_to_pass, sizeof(int));
  }
  return ::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(len);
}

// Receives one record; returns its length (0 on EOF, -1 on error) and any passed fd in *fd.
ssize_t recv_record(int sock, char* buf, size_t cap, int* fd, int flags = 0) {
  iovec iov{buf, cap};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
  *fd = -1;
  if (n < 0) return -1;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      std::memcpy(fd, CMSG_DATA(cm), sizeof(int));
    }
  }
  return n;
}

}  // namespace

TimedRun floor_bind(size_t warmup, size_t iterations, bool rotate_ports, bool contract) {
  size_t next = 0;
  return time_loop(warmup, iterations, [&](std::string& err) {
    uint16_t port = rotate_ports ? static_cast<uint16_t>(kRawPortLow + next++ % kRawPortCount) : 0;
    int e = 0;
    int fd = make_listener(port, &e);
    if (fd < 0) {
      err = "bind 127.0.0.1:" + std::to_string(port) + ": " + std::strerror(e);
      return false;
    }
    if (contract) {
      uint64_t cookie = 0;
      socklen_t len = sizeof(cookie);
      if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0 ||
          ::shutdown(fd, SHUT_RDWR) != 0) {
        err = std::string("SO_COOKIE or shutdown: ") + std::strerror(errno);
        ::close(fd);
        return false;
      }
    }
    ::close(fd);
    return true;
  });
}

TimedRun floor_round_trip(size_t warmup, size_t iterations, bool pass_fd, int peer_cpu) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    die("socketpair: %s", std::strerror(errno));
  }
  pid_t echo = fork_child([&]() -> int {
    ::close(sv[0]);
    if (peer_cpu >= 0) pin(0, peer_cpu);
    int e = 0;
    int passed = pass_fd ? make_listener(0, &e) : -1;
    char buf[kRawRecordBytes * 2];
    for (;;) {
      int got_fd;
      ssize_t n = recv_record(sv[1], buf, sizeof(buf), &got_fd);
      if (n <= 0) return 0;
      if (!send_record(sv[1], buf, static_cast<size_t>(n), passed)) return 1;
    }
  });
  ::close(sv[1]);
  char out[kRawRecordBytes];
  std::memset(out, 'p', sizeof(out));
  char in[kRawRecordBytes * 2];
  TimedRun run = time_loop(warmup, iterations, [&](std::string& err) {
    if (!send_record(sv[0], out, sizeof(out), -1)) {
      err = std::string("send: ") + std::strerror(errno);
      return false;
    }
    int fd;
    ssize_t n = recv_record(sv[0], in, sizeof(in), &fd);
    if (n != static_cast<ssize_t>(sizeof(out))) {
      err = "short echo";
      return false;
    }
    if (fd >= 0) ::close(fd);
    if (pass_fd && fd < 0) {
      err = "no fd in the reply";
      return false;
    }
    return true;
  });
  ::close(sv[0]);
  wait_child(echo);
  return run;
}

RawBroker::RawBroker(const std::string& dir) {
  path_ = dir + "/raw.sock";
  int lfd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (lfd < 0) die("socket: %s", std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(lfd, SOMAXCONN) != 0) {
    die("raw broker listen %s: %s", path_.c_str(), std::strerror(errno));
  }
  pid_ = fork_child([lfd]() -> int {
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    std::unordered_map<int, int> held;  // connection -> its leased listener
    size_t next_port = 0;
    char buf[kRawRecordBytes * 2];
    char reply[kRawRecordBytes];
    std::memset(reply, 'r', sizeof(reply));
    epoll_event events[64];
    for (;;) {
      int n = ::epoll_wait(ep, events, 64, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return 1;
      for (int i = 0; i < n; ++i) {
        int fd = events[i].data.fd;
        if (fd == lfd) {
          int c;
          while ((c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
            epoll_event cev{};
            cev.events = EPOLLIN;
            cev.data.fd = c;
            ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
          }
          continue;
        }
        int ignored;
        ssize_t got = recv_record(fd, buf, sizeof(buf), &ignored, MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        auto it = held.find(fd);
        if (got <= 0) {
          if (it != held.end()) {
            ::close(it->second);
            held.erase(it);
          }
          ::close(fd);
          continue;
        }
        if (buf[0] == 'A') {
          int s = -1, e = 0;
          for (size_t tries = 0; tries < kRawPortCount && s < 0; ++tries) {
            s = make_listener(static_cast<uint16_t>(kRawPortLow + next_port++ % kRawPortCount), &e);
          }
          if (s < 0) return 1;
          if (it != held.end()) ::close(it->second);
          held[fd] = s;
          send_record(fd, reply, sizeof(reply), s);
        } else {
          if (it != held.end()) {
            ::close(it->second);
            held.erase(it);
          }
          send_record(fd, reply, sizeof(reply), -1);
        }
      }
    }
  });
  ::close(lfd);
}

RawBroker::~RawBroker() {
  ::kill(pid_, SIGKILL);
  wait_child(pid_);
  ::unlink(path_.c_str());
}

RawBrokerClient::RawBrokerClient(const std::string& path, std::string& err) {
  fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    err = "connect " + path + ": " + std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
}

RawBrokerClient::~RawBrokerClient() {
  if (fd_ >= 0) ::close(fd_);
}

bool RawBrokerClient::acquire_release(std::string& err) {
  char out[kRawRecordBytes];
  char in[kRawRecordBytes * 2];
  std::memset(out, 'A', sizeof(out));
  int fd;
  if (!send_record(fd_, out, sizeof(out), -1) || recv_record(fd_, in, sizeof(in), &fd) <= 0 ||
      fd < 0) {
    err = std::string("raw acquire: ") + std::strerror(errno);
    return false;
  }
  ::close(fd);
  out[0] = 'R';
  if (!send_record(fd_, out, sizeof(out), -1) || recv_record(fd_, in, sizeof(in), &fd) <= 0) {
    err = std::string("raw release: ") + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace pbbench
