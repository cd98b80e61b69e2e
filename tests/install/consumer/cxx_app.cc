#include <cstdio>
#include <portbroker/client.hpp>

// Connects to the daemon at argv[1]; when it answers, acquires a port from its pool.
int main(int argc, char** argv) {
  auto spec = portbroker::parse_socket_spec("web=tcp:[::1]:8080,reuseport");
  if (!spec || spec->port != 8080) return 1;
  auto client = portbroker::Client::connect(argc > 1 ? argv[1] : "");
  if (!client) {
    std::printf("%s\n", client.error().message.c_str());
    return 0;
  }
  auto lease = client->acquire("tcp:127.0.0.1:0");
  if (!lease) {
    std::printf("%s\n", lease.error().message.c_str());
    return 1;
  }
  std::printf("acquired port %u\n", static_cast<unsigned>(lease->port()));
  return 0;
}
