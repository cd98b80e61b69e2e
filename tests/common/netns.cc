#include "common/netns.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace pbtest {

namespace {

bool write_proc(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  return static_cast<bool>(f);
}

}  // namespace

bool bring_loopback_up(std::string& why) {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    why = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  bool ok = ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0;
  if (ok) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    ok = ::ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
  }
  if (!ok) why = std::string("bringing lo up: ") + std::strerror(errno);
  ::close(s);
  return ok;
}

bool enter_private_netns(std::string& why, bool* can_switch_uid) {
  uid_t uid = ::geteuid();
  gid_t gid = ::getegid();
  if (::unshare(CLONE_NEWNET) == 0) {
    if (can_switch_uid) *can_switch_uid = uid == 0;
  } else {
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWUSER|CLONE_NEWNET): ") + std::strerror(errno);
      return false;
    }
    // Only our own ids are mapped (to root inside): children cannot switch uid.
    if (!write_proc("/proc/self/setgroups", "deny") ||
        !write_proc("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1\n") ||
        !write_proc("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1\n")) {
      why = "cannot write the user namespace's id maps";
      return false;
    }
    if (can_switch_uid) *can_switch_uid = false;
  }
  return bring_loopback_up(why);
}

ScopedNetns::ScopedNetns() {
  original_ = portbroker::UniqueFd(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!original_) {
    why_ = std::string("cannot open /proc/self/ns/net: ") + std::strerror(errno);
    return;
  }
  if (::unshare(CLONE_NEWNET) != 0) {
    why_ = std::string("unshare(CLONE_NEWNET) failed: ") + std::strerror(errno);
    return;
  }
  entered_ = true;
  ok_ = bring_loopback_up(why_);
}

ScopedNetns::~ScopedNetns() {
  // Later tests would run in a namespace nobody expects them in: stop rather than carry on.
  if (entered_ && ::setns(original_.get(), CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "cannot return to the original network namespace: %s\n",
                 std::strerror(errno));
    std::abort();
  }
}

}  // namespace pbtest
