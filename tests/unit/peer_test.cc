#include "broker/os/peer.h"

#include <doctest/doctest.h>

using portbroker::broker::cgroup_from_proc;

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
