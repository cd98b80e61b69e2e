#include <portbroker/portbroker.h>
#include <stdio.h>
#include <unistd.h>

/* Connects to the daemon at argv[1]; when it answers, acquires a port from its pool. */
int main(int argc, char **argv) {
  portbroker_client *c = NULL;
  int fd = -1;
  uint64_t id = 0;
  uint16_t port = 0;
  int rc = portbroker_connect(argc > 1 ? argv[1] : NULL, &c);
  if (rc < 0) {
    printf("%d %s\n", rc, portbroker_last_error(NULL));
    return 0;
  }
  rc = portbroker_acquire(c, "tcp:127.0.0.1:0", &fd, &id, &port);
  if (rc < 0) {
    printf("%d %s\n", rc, portbroker_last_error(c));
    portbroker_close(c);
    return 1;
  }
  printf("acquired port %u\n", (unsigned)port);
  close(fd);
  portbroker_close(c);
  return 0;
}
