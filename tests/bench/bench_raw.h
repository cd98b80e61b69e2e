// The raw floor: the same kernel work as an acquire+release, with nothing of portbroker in it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "bench/bench_support.h"

namespace pbbench {

// Ports the floors bind; outside the daemon's pool and the held-lease range.
inline constexpr uint16_t kRawPortLow = 45000;
inline constexpr uint16_t kRawPortCount = 15000;

// Size of every raw request and reply: about what one Cap'n Proto acquire request is.
inline constexpr size_t kRawRecordBytes = 104;

// Floor A: socket + SO_REUSEADDR + bind(127.0.0.1:port) + listen + close in this process.
// `rotate_ports` binds fixed ports in turn (what the daemon does for its pool); otherwise port 0.
// With `contract`, also the two calls a lease adds to that kernel work: getsockopt(SO_COOKIE)
// (the journal's check of a socket taken back after a crash) and shutdown(SHUT_RDWR) before
// the close (a copy left in a child of the holder must not keep the port).
TimedRun floor_bind(size_t warmup, size_t iterations, bool rotate_ports, bool contract = false);

// Floor B: one SOCK_SEQPACKET record to another process and one back; with `pass_fd` the reply
// carries one fd (SCM_RIGHTS) that this side closes. The echoing process runs on `peer_cpu`
// (< 0: wherever this one may run).
TimedRun floor_round_trip(size_t warmup, size_t iterations, bool pass_fd, int peer_cpu);

// A minimal single-threaded epoll broker in a child process: "A" creates, binds and listens a
// TCP socket, keeps a duplicate and passes it back; "R" closes the duplicate. It is the same
// syscalls as portbrokerd's acquire+release with no policy, registry, serialization or logging:
// the floor for throughput under concurrency.
class RawBroker {
 public:
  explicit RawBroker(const std::string& dir);
  ~RawBroker();
  RawBroker(const RawBroker&) = delete;
  RawBroker& operator=(const RawBroker&) = delete;
  const std::string& path() const { return path_; }
  pid_t pid() const { return pid_; }

 private:
  std::string path_;
  pid_t pid_ = -1;
};

class RawBrokerClient {
 public:
  // Connects; on failure, valid() is false and `err` says why.
  RawBrokerClient(const std::string& path, std::string& err);
  ~RawBrokerClient();
  RawBrokerClient(const RawBrokerClient&) = delete;
  RawBrokerClient& operator=(const RawBrokerClient&) = delete;
  bool valid() const { return fd_ >= 0; }
  bool acquire_release(std::string& err);

 private:
  int fd_ = -1;
};

}  // namespace pbbench
