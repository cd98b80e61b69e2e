#include "broker/os/peer.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "portbroker/fd.hpp"

using portbroker::UniqueFd;
using portbroker::broker::cgroup_from_proc;
using portbroker::broker::count_open_fds;

TEST_CASE("cgroup_from_proc: the unified path, or name=systemd's on a hybrid host") {
  struct Row {
    const char* what;
    const char* proc;
    const char* cgroup;
  };
  const Row rows[] = {
      {"pure cgroup v2", "0::/system.slice/nginx.service\n", "/system.slice/nginx.service"},
      {"hybrid, systemd unit in both",
       "1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n",
       "/system.slice/a.service"},
      {"hybrid, unified unused: podman's cgroupfs manager",
       "9:name=systemd:/libpod_parent/libpod-18ac69e9\n4:memory:/libpod_parent/libpod-18ac69e9\n"
       "1:cpu:/libpod_parent/libpod-18ac69e9\n0::/\n",
       "/libpod_parent/libpod-18ac69e9"},
      {"hybrid, nothing more in name=systemd", "9:name=systemd:/\n4:memory:/process_api/x\n0::/\n",
       "/"},
      {"v1 only: systemd's hierarchy", "4:memory:/m\n1:name=systemd:/user.slice\n", "/user.slice"},
      {"v1 only, no systemd: the first line", "4:memory:/m\n1:cpu:/c\n", "/m"},
      {"unreadable", "", ""},
  };
  for (const Row& r : rows) {
    CAPTURE(r.what);
    CHECK(cgroup_from_proc(r.proc) == std::string(r.cgroup));
  }
}

namespace {

// What /proc/self/fd lists, less the listing's own fd.
int listed_fds() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n - 1;
}

}  // namespace

TEST_CASE("count_open_fds: what /proc/self/fd lists, gaps and the highest fd allowed included") {
  CHECK(count_open_fds() == listed_fds());
  const int before = count_open_fds();
  std::vector<UniqueFd> extra;
  for (int i = 0; i < 300; ++i) extra.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  CHECK(count_open_fds() == before + 300);
  for (size_t i = 0; i < extra.size(); i += 2) extra[i].reset();
  CHECK(count_open_fds() == before + 150);
  CHECK(count_open_fds() == listed_fds());
  // The last number RLIMIT_NOFILE allows (poll takes no more entries than that).
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  const int top = static_cast<int>(std::min<rlim_t>(rl.rlim_cur, 1 << 20)) - 1;
  REQUIRE(::dup3(extra[1].get(), top, O_CLOEXEC) == top);
  UniqueFd high(top);
  CHECK(count_open_fds() == before + 151);
  CHECK(count_open_fds() == listed_fds());
}
