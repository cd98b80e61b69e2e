// An echo server that gets its listening socket from portbrokerd.
//
//   echo_server [SPEC] [--count N]     SPEC defaults to tcp:127.0.0.1:0 (any free port)
//
// Prints "listening on PORT", then echoes what each client sends until it hangs up; with
// --count N it exits after N connections.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <portbroker/client.hpp>
#include <string>

namespace {

void echo(int conn) {
  char buf[4096];
  ssize_t n;
  while ((n = ::read(conn, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::send(conn, buf + off, n - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return;
      off += w;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string spec = "tcp:127.0.0.1:0";
  long count = -1;  // serve forever
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
      count = std::strtol(argv[++i], nullptr, 10);
    } else {
      spec = argv[i];
    }
  }

  auto client = portbroker::Client::connect();
  if (!client) {
    std::fprintf(stderr, "echo_server: %s\n", client.error().message.c_str());
    return 1;
  }
  auto lease = client->acquire(spec);
  if (!lease) {
    std::fprintf(stderr, "echo_server: %s\n", lease.error().message.c_str());
    return 1;
  }
  std::printf("listening on %u\n", static_cast<unsigned>(lease->port()));
  std::fflush(stdout);

  for (long served = 0; count < 0 || served < count;) {
    int conn = ::accept4(lease->fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // EINVAL: an admin revoked the lease (`portbroker release`), which shuts the socket down.
      if (errno == EINVAL)
        std::fprintf(stderr, "echo_server: lease revoked\n");
      else
        std::perror("echo_server: accept");
      return 1;
    }
    echo(conn);
    ::close(conn);
    ++served;
  }
  return 0;  // the Lease and Client destructors release the port
}
