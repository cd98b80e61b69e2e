#include "harness_fdstore.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

namespace pbtest {

namespace {

// The kernel's limit of fds in one SCM_RIGHTS message.
constexpr size_t kMaxFdsPerMessage = 253;

bool same_file(int a, int b) {
  struct stat sa {
  }, sb{};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

}  // namespace

ServiceManager::ServiceManager(const TempDir& dir) : path_(dir.file("manager.notify.sock")) {
  auto fd = bind_notify_socket(path_);
  REQUIRE_MESSAGE(fd.ok(), fd.error().message);
  sock_ = std::move(fd).value();
  ready_.reset(::eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE | EFD_NONBLOCK));
  stop_.reset(::eventfd(0, EFD_CLOEXEC));
  REQUIRE((ready_.valid() && stop_.valid()));
  reader_ = std::thread([this] { run(); });
}

ServiceManager::~ServiceManager() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
  reader_.join();
  ::unlink(path_.c_str());
}

void ServiceManager::run() {
  for (;;) {
    pollfd p[2] = {{sock_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents) return;
    std::lock_guard<std::mutex> lock(mu_);
    while (receive_one()) {
    }
  }
}

bool ServiceManager::receive_one() {
  char data[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  iovec iov{data, sizeof(data)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(sock_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EINTR;
  std::vector<UniqueFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) problems_.push_back("a truncated notification");
  bool store = false, remove = false;
  std::string name;
  std::istringstream lines(std::string(data, static_cast<size_t>(n)));
  for (std::string line; std::getline(lines, line);) {
    if (line == "READY=1") {
      uint64_t one = 1;
      (void)!::write(ready_.get(), &one, sizeof(one));
    }
    if (line == "FDSTORE=1") store = true;
    if (line == "FDSTOREREMOVE=1") remove = true;
    if (line.rfind("FDNAME=", 0) == 0) name = line.substr(7);
  }
  if (remove) {
    store_.erase(std::remove_if(store_.begin(), store_.end(),
                                [&](const auto& e) { return e.first == name; }),
                 store_.end());
  }
  if (store) {
    for (UniqueFd& fd : fds) {
      // As systemd: a file already in the store is not stored twice.
      bool dup = std::any_of(store_.begin(), store_.end(),
                             [&](const auto& e) { return same_file(e.second.get(), fd.get()); });
      if (!dup) store_.emplace_back(name.empty() ? "stored" : name, std::move(fd));
    }
  } else if (!fds.empty()) {
    problems_.push_back("fds sent without FDSTORE=1: " + std::string(data, static_cast<size_t>(n)));
  }
  return true;
}

void ServiceManager::drain() {
  std::lock_guard<std::mutex> lock(mu_);
  while (receive_one()) {
  }
}

ReadyOutcome ServiceManager::wait_ready(int pidfd, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p[2] = {{ready_.get(), POLLIN, 0}, {pidfd, POLLIN, 0}};
    int rc = ::poll(p, 2, ms_left(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return ReadyOutcome::kTimeout;
    uint64_t one = 0;
    if ((p[0].revents & POLLIN) && ::read(ready_.get(), &one, sizeof(one)) == sizeof(one)) {
      return ReadyOutcome::kReady;
    }
    if (p[1].revents) return ReadyOutcome::kExited;
  }
}

std::vector<std::string> ServiceManager::problems() const {
  std::lock_guard<std::mutex> lock(mu_);
  return problems_;
}

std::vector<std::pair<int, std::string>> ServiceManager::listen_fds() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int, std::string>> out;
  for (const auto& [name, fd] : store_) out.emplace_back(fd.get(), name);
  return out;
}

std::vector<std::string> ServiceManager::names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, fd] : store_) out.push_back(name);
  return out;
}

size_t ServiceManager::count_prefix(const std::string& prefix) const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<size_t>(std::count_if(
      store_.begin(), store_.end(), [&](const auto& e) { return e.first.rfind(prefix, 0) == 0; }));
}

}  // namespace pbtest
