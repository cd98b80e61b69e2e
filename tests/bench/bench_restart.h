// What the restart figures need besides the daemon itself: the service manager's side of the fd
// store (sd_notify's FDSTORE=1 / FDSTOREREMOVE=1, as systemd keeps fds for a service), and the
// kernel floor of taking sockets back from live holders (bare pidfd_getfd calls).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "portbroker/fd.hpp"

namespace pbbench {

// A datagram NOTIFY_SOCKET read by a thread of its own (the daemon's sendmsg blocks once a few
// datagrams are queued, so the store must be drained while the daemon works): fds arriving
// with FDSTORE=1 are kept under their FDNAME (the same socket twice under one name is kept
// once, as systemd does), FDSTOREREMOVE=1 drops every fd of that name, READY=1 is counted.
class FdStoreManager {
 public:
  explicit FdStoreManager(const std::string& path);
  ~FdStoreManager();
  FdStoreManager(const FdStoreManager&) = delete;
  FdStoreManager& operator=(const FdStoreManager&) = delete;

  const std::string& path() const { return path_; }
  // The kept fds (owned by the store) with their names, in the order they came.
  std::vector<std::pair<int, std::string>> fds() const;
  size_t size() const;
  // Waits for the next READY=1 after the last call (or since creation), or until the process
  // behind `pidfd` exits; false on exit or after 15 s.
  bool wait_ready(int pidfd);
  // Waits until the store holds at least `n` fds (the daemon stores each as it grants it).
  bool wait_size(size_t n, int timeout_ms);

 private:
  void run();
  void handle(const std::string& text, std::vector<portbroker::UniqueFd> fds);

  std::string path_;
  portbroker::UniqueFd sock_, stop_, ready_;  // ready_: an eventfd counting READY=1
  mutable std::mutex mu_;
  std::condition_variable grew_;
  struct Kept {
    std::string name;
    portbroker::UniqueFd fd;
    uint64_t dev = 0, ino = 0;
  };
  std::vector<Kept> kept_;
  std::thread thread_;
};

// Seconds for `pidfd_getfd` of every socket fd of these processes (listed from /proc before the
// clock starts); the copies are closed after the clock stops. `count` says how many.
double time_bare_getfd(const std::vector<pid_t>& pids, size_t& count);

}  // namespace pbbench
