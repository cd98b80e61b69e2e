// Private network namespaces for tests and benchmarks: every port they use is their own, and
// the host's ports and sysctls are never touched.
#pragma once

#include <string>

#include "portbroker/fd.hpp"

namespace pbtest {

// unshare(CLONE_NEWNET) (plus CLONE_NEWUSER, mapping our own ids to root, when that is not
// allowed) and bring `lo` up. On failure returns false with the reason in `why`.
// `*can_switch_uid` says whether children may change uid (real root inside the namespace).
bool enter_private_netns(std::string& why, bool* can_switch_uid = nullptr);

// Sets IFF_UP on `lo` of the current network namespace.
bool bring_loopback_up(std::string& why);

// Moves this process into a fresh network namespace with lo up for the object's lifetime, and
// back on destruction, so that one test in a shared test binary may bind fixed ports (and
// write per-namespace sysctls) without touching the host's or another test's. Needs
// CAP_SYS_ADMIN (the unit tests run as root). Single-threaded callers only: setns applies to
// the calling thread.
class ScopedNetns {
 public:
  ScopedNetns();
  ~ScopedNetns();
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;

  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }

 private:
  portbroker::UniqueFd original_;
  bool entered_ = false;
  bool ok_ = false;
  std::string why_;
};

}  // namespace pbtest
