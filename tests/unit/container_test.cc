#include "portbroker/container.hpp"

#include <doctest/doctest.h>

using portbroker::container_of_cgroup;

TEST_CASE("container_of_cgroup: the runtimes' own cgroup names") {
  struct Row {
    const char* cgroup;
    const char* container;  // nullptr: none
  };
  const Row rows[] = {
      {"/machine.slice/"
       "libpod-3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081.scope",
       "podman 3f2a1b4c5d6e"},
      {"/machine.slice/libpod-3f2a1b4c5d6e7f80.scope/container", "podman 3f2a1b4c5d6e"},
      {"/libpod_parent/libpod-18ac69e9205513b7003750675b7957bf", "podman 18ac69e92055"},
      {"/machine.slice/libpod-conmon-3f2a1b4c5d6e7f80.scope", nullptr},
      {"/system.slice/docker-0123456789abcdef0123.scope", "docker 0123456789ab"},
      {"/docker/0123456789abcdef0123", "docker 0123456789ab"},
      {"/kubepods.slice/kubepods-besteffort.slice/crio-abcdefabcdef1234.scope",
       "cri-o abcdefabcdef"},
      {"/system.slice/cri-containerd-abcdefabcdef12.scope", "containerd abcdefabcdef"},
      {"/machine.slice/machine-web\\x2dfront.scope", "machine web-front"},
      {"/machine.slice/machine-db.scope/payload/libpod-aaaaaaaaaaaaaaaa.scope",
       "podman aaaaaaaaaaaa"},
      {"/lxc.payload.c1", "lxc c1"},
      {"/system.slice/nginx.service", nullptr},
      {"/system.slice/docker.service", nullptr},
      {"/machine.slice/libpod-nothex.scope", nullptr},
      {"/user.slice/user-1000.slice/session-2.scope", nullptr},
      {"/", nullptr},
      {"", nullptr},
  };
  for (const Row& r : rows) {
    CAPTURE(r.cgroup);
    auto c = container_of_cgroup(r.cgroup);
    if (r.container == nullptr) {
      CHECK_FALSE(c.has_value());
    } else {
      REQUIRE(c.has_value());
      CHECK(c->to_string() == r.container);
    }
  }
}
