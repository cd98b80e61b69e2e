#include "bench/bench_restart.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "bench/bench_support.h"
#include "common/process.h"

namespace pbbench {

namespace {
constexpr size_t kMaxFdsPerMessage = 253;  // SCM_MAX_FD
}  // namespace

FdStoreManager::FdStoreManager(const std::string& path) : path_(path) {
  auto bound = pbtest::bind_notify_socket(path);
  if (!bound) die("%s", bound.error().message.c_str());
  sock_ = std::move(bound).value();
  stop_ = portbroker::UniqueFd(::eventfd(0, EFD_CLOEXEC));
  ready_ = portbroker::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_ || !ready_) die("eventfd: %s", std::strerror(errno));
  thread_ = std::thread([this] { run(); });
}

FdStoreManager::~FdStoreManager() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
  thread_.join();
  ::unlink(path_.c_str());
}

void FdStoreManager::run() {
  std::vector<char> buf(8192);
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage));
  for (;;) {
    pollfd p[2] = {{sock_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents != 0) return;
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n = ::recvmsg(sock_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) continue;
    std::vector<portbroker::UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const auto* data = reinterpret_cast<const int*>(CMSG_DATA(c));
      for (size_t i = 0; i < count; ++i) fds.emplace_back(data[i]);
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      std::fprintf(stderr, "portbroker_bench: fd store: fds of a notification were cut off\n");
    }
    handle(std::string(buf.data(), static_cast<size_t>(n)), std::move(fds));
  }
}

void FdStoreManager::handle(const std::string& text, std::vector<portbroker::UniqueFd> fds) {
  bool store = false, remove = false, ready = false;
  std::string name = "stored";  // systemd's default FDNAME
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line == "FDSTORE=1") store = true;
    if (line == "FDSTOREREMOVE=1") remove = true;
    if (line == "READY=1") ready = true;
    if (line.rfind("FDNAME=", 0) == 0) name = line.substr(7);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (remove) {
      std::erase_if(kept_, [&](const Kept& k) { return k.name == name; });
    }
    if (store) {
      for (auto& fd : fds) {
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0) continue;
        const uint64_t dev = st.st_dev, ino = st.st_ino;
        bool known = std::any_of(kept_.begin(), kept_.end(), [&](const Kept& k) {
          return k.name == name && k.dev == dev && k.ino == ino;
        });
        if (!known) kept_.push_back(Kept{name, std::move(fd), dev, ino});
      }
    }
  }
  if (store) grew_.notify_all();
  if (ready) {
    uint64_t one = 1;
    (void)!::write(ready_.get(), &one, sizeof(one));
  }
}

std::vector<std::pair<int, std::string>> FdStoreManager::fds() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int, std::string>> out;
  out.reserve(kept_.size());
  for (const Kept& k : kept_) out.emplace_back(k.fd.get(), k.name);
  return out;
}

size_t FdStoreManager::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_.size();
}

bool FdStoreManager::wait_ready(int pidfd) {
  auto deadline = pbtest::Clock::now() + std::chrono::seconds(15);
  for (;;) {
    pollfd p[2] = {{ready_.get(), POLLIN, 0}, {pidfd, POLLIN, 0}};
    int rc = ::poll(p, 2, pbtest::ms_left(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return false;
    if (p[0].revents & POLLIN) {
      uint64_t count = 0;
      if (::read(ready_.get(), &count, sizeof(count)) == sizeof(count)) return true;
      continue;
    }
    return false;
  }
}

bool FdStoreManager::wait_size(size_t n, int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return grew_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                        [&] { return kept_.size() >= n; });
}

double time_bare_getfd(const std::vector<pid_t>& pids, size_t& count) {
  struct Target {
    portbroker::UniqueFd pidfd;
    std::vector<int> fds;
  };
  std::vector<Target> targets;
  for (pid_t pid : pids) {
    Target t;
    auto pidfd = pbtest::open_pidfd(pid);
    if (!pidfd) die("%s", pidfd.error().message.c_str());
    t.pidfd = std::move(pidfd).value();
    std::error_code ec;
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
      std::error_code lec;
      auto target = std::filesystem::read_symlink(e.path(), lec);
      if (lec || target.native().rfind("socket:", 0) != 0) continue;
      t.fds.push_back(std::atoi(e.path().filename().c_str()));
    }
    targets.push_back(std::move(t));
  }
  std::vector<int> copies;
  for (const Target& t : targets) copies.reserve(copies.size() + t.fds.size());
  const uint64_t t0 = now_ns();
  for (const Target& t : targets) {
    for (int fd : t.fds) {
      int copy = static_cast<int>(::syscall(SYS_pidfd_getfd, t.pidfd.get(), fd, 0));
      if (copy < 0) die("pidfd_getfd: %s", std::strerror(errno));
      copies.push_back(copy);
    }
  }
  const double seconds = static_cast<double>(now_ns() - t0) / 1e9;
  for (int c : copies) ::close(c);
  count = copies.size();
  return seconds;
}

}  // namespace pbbench
