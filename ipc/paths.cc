#include "ipc/paths.h"

#include <unistd.h>

#include <cstdlib>

namespace portbroker::ipc {

std::string default_runtime_dir() {
  if (::geteuid() == 0) return "/run/portbroker";
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/portbroker";
  return "/tmp/portbroker-" + std::to_string(::geteuid());
}

std::string default_socket_path() { return default_runtime_dir() + "/portbroker.sock"; }

std::string default_config_path() {
  if (::geteuid() == 0) return "/etc/portbroker/portbroker.toml";
  return default_runtime_dir() + "/portbroker.toml";
}

std::string default_state_dir() {
  if (::geteuid() == 0) return "/var/lib/portbroker";
  return default_runtime_dir() + "/state";
}

std::string client_socket_path() {
  const char* env = std::getenv("PORTBROKER_SOCKET");
  if (env != nullptr && env[0] != '\0') return env;
  return default_socket_path();
}

}  // namespace portbroker::ipc
