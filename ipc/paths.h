// Where the daemon listens and keeps its files, per DESIGN.md's command-line contract.
#pragma once

#include <string>

namespace portbroker::ipc {

// Root: /run/portbroker; others: $XDG_RUNTIME_DIR/portbroker, else /tmp/portbroker-$UID.
std::string default_runtime_dir();
std::string default_socket_path();  // <runtime dir>/portbroker.sock
std::string
default_config_path();  // /etc/portbroker/portbroker.toml (root); <runtime dir>/portbroker.toml
std::string default_state_dir();  // /var/lib/portbroker (root); <runtime dir>/state
// $PORTBROKER_SOCKET if set and non-empty, else default_socket_path().
std::string client_socket_path();

}  // namespace portbroker::ipc
