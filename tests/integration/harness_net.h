// Harness, network: plain TCP/UDP sockets made outside the broker, as clients and other
// programs would make them.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "harness_files.h"

namespace pbtest {

// A blocking TCP connection to 127.0.0.1:port (or `addr`), with send/receive deadlines.
UniqueFd connect_tcp(uint16_t port, const std::string& addr = "127.0.0.1");
bool send_all(int fd, const std::string& data);
// Reads up to and including '\n' (returned without it); nullopt on EOF, error or timeout.
std::optional<std::string> recv_line(int fd, std::chrono::milliseconds timeout = kDefaultTimeout);
uint16_t local_port(int fd);  // getsockname
bool is_listening(int fd);    // SO_ACCEPTCONN
int socket_type(int fd);      // SO_TYPE
// Binds (and for TCP listens) a socket outside the broker, as another program would.
UniqueFd bind_outside(int type, uint16_t port, const std::string& addr = "127.0.0.1");
// What a program outside the broker gets from a plain bind() (and listen(), for TCP) of
// addr:port: 0 when it worked (the socket is closed again at once), else the errno.
int outside_bind_errno(uint16_t port, const std::string& addr, bool reuseaddr,
                       int type = SOCK_STREAM);
// Can this process bind `port` right now (nothing holds it)?
bool port_free(uint16_t port, const std::string& addr = "127.0.0.1");

}  // namespace pbtest
