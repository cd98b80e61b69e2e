#include <cstdio>
#include <portbroker/client.hpp>

int main(int argc, char** argv) {
  auto spec = portbroker::parse_socket_spec("web=tcp:[::1]:8080,reuseport");
  if (!spec || spec->port != 8080) return 1;
  auto client = portbroker::Client::connect(argc > 1 ? argv[1] : "");
  std::printf("%s\n", client ? "connected" : client.error().message.c_str());
  return 0;
}
