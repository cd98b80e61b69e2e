// Private network namespaces for tests and benchmarks: every port they use is their own, and
// the host's ports and sysctls are never touched.
#pragma once

#include <string>

namespace pbtest {

// unshare(CLONE_NEWNET) (plus CLONE_NEWUSER, mapping our own ids to root, when that is not
// allowed) and bring `lo` up. On failure returns false with the reason in `why`.
// `*can_switch_uid` says whether children may change uid (real root inside the namespace).
bool enter_private_netns(std::string& why, bool* can_switch_uid = nullptr);

// Sets IFF_UP on `lo` of the current network namespace.
bool bring_loopback_up(std::string& why);

}  // namespace pbtest
