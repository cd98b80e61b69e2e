/* The echo server again, through the C API.
 *
 *   echo_server_c [SPEC] [--count N]     SPEC defaults to tcp:127.0.0.1:0 (any free port) */
#define _GNU_SOURCE
#include <errno.h>
#include <portbroker/portbroker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void echo(int conn) {
  char buf[4096];
  ssize_t n;
  while ((n = read(conn, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    ssize_t off = 0;
    while (off < n) {
      ssize_t w = send(conn, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) return;
      off += w;
    }
  }
}

int main(int argc, char **argv) {
  const char *spec = "tcp:127.0.0.1:0";
  long count = -1; /* serve forever */
  portbroker_client *client;
  int fd, rc, i, status = 0;
  long served;
  uint64_t lease;
  uint16_t port;

  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--count") == 0 && i + 1 < argc)
      count = strtol(argv[++i], NULL, 10);
    else
      spec = argv[i];
  }

  rc = portbroker_connect(NULL, &client);
  if (rc < 0) {
    fprintf(stderr, "echo_server_c: %s\n", portbroker_last_error(NULL));
    return 1;
  }
  rc = portbroker_acquire(client, spec, &fd, &lease, &port);
  if (rc < 0) {
    fprintf(stderr, "echo_server_c: %s (%s)\n", portbroker_last_error(client),
            portbroker_strerror(rc));
    portbroker_close(client);
    return 1;
  }
  printf("listening on %u\n", (unsigned)port);
  fflush(stdout);

  for (served = 0; count < 0 || served < count;) {
    int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EINVAL) /* the lease was revoked: the daemon shut the socket down */
        fprintf(stderr, "echo_server_c: lease revoked\n");
      else
        perror("echo_server_c: accept");
      status = 1;
      break;
    }
    echo(conn);
    close(conn);
    ++served;
  }
  close(fd);
  portbroker_release(client, lease); /* closing the client would release it too */
  portbroker_close(client);
  return status;
}
