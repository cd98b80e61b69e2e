// Which container a process runs in, as far as its cgroup path names it: container runtimes
// put each container in a cgroup of their own naming (podman "libpod-ID.scope", docker
// "docker-ID.scope" or "/docker/ID", systemd-nspawn and libvirt "machine-NAME.scope", ...).
// Nothing else is asked: a process the daemon cannot see inside a container has its cgroup.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace portbroker {

struct ContainerRef {
  std::string runtime;  // "podman", "docker", "cri-o", "containerd", "machine", "lxc"
  std::string name;     // the container's id (first 12 hex digits) or its machine name

  std::string to_string() const { return runtime + " " + name; }
};

// The container the deepest naming component of `cgroup` (a cgroup v2 path such as
// "/machine.slice/libpod-3f2a....scope") names; nullopt when none does.
std::optional<ContainerRef> container_of_cgroup(std::string_view cgroup);

}  // namespace portbroker
