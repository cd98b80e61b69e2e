// Harness, the service manager's side of the sd_notify protocol: a NOTIFY_SOCKET that keeps the
// fds a daemon stores (FDSTORE=1, FDNAME=), drops them on FDSTOREREMOVE=1, and hands them to the
// next daemon as LISTEN_FDS, as systemd's fd store does.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/process.h"
#include "harness_files.h"

namespace pbtest {

class ServiceManager {
 public:
  // Binds <dir>/manager.notify.sock and reads it on a thread of its own, as promptly as systemd
  // does (a sender blocks once the socket's small datagram queue is full).
  explicit ServiceManager(const TempDir& dir);
  ~ServiceManager();
  ServiceManager(const ServiceManager&) = delete;
  ServiceManager& operator=(const ServiceManager&) = delete;

  const std::string& notify_path() const { return path_; }
  // Handles every datagram already queued, without waiting. A daemon sends its FDSTORE=1
  // before the reply that depends on it, so after a round trip the store is up to date.
  void drain();
  // Handles datagrams until one says READY=1, the process behind `pidfd` exits, or `timeout`.
  ReadyOutcome wait_ready(int pidfd, std::chrono::milliseconds timeout);

  // What a restarted service gets: every stored fd, in the order stored, with its name.
  // The fds stay the manager's (valid while it lives and stores them).
  std::vector<std::pair<int, std::string>> listen_fds() const;
  std::vector<std::string> names() const;
  size_t count_prefix(const std::string& prefix) const;
  // Messages the manager could not take whole (MSG_CTRUNC, fds without FDSTORE=1).
  std::vector<std::string> problems() const;

 private:
  // One queued datagram (never waits); false when none is queued. Caller holds mu_.
  bool receive_one();
  void run();

  UniqueFd sock_;
  UniqueFd ready_;  // eventfd (semaphore): one count per READY=1
  UniqueFd stop_;   // eventfd: ends the reading thread
  std::string path_;
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, UniqueFd>> store_;
  std::vector<std::string> problems_;
  std::thread reader_;
};

}  // namespace pbtest
