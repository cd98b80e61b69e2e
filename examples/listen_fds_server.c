/* A server written for systemd socket activation, which portbroker exec also speaks:
 *
 *   portbroker exec --listen echo=tcp:127.0.0.1:7000 -- listen_fds_server [--count N]
 *
 * It uses no portbroker code at all. Per sd_listen_fds(3) the passed fds start at 3 and are
 * ours only if LISTEN_PID is our pid (else they were meant for a parent that leaked the
 * variables). Prints "got N fds: NAME...", then echoes on the first socket. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FDS_START 3

/* How many fds were passed to this process; 0 if none (or they are not ours). */
static int listen_fds(void) {
  const char *pid_text = getenv("LISTEN_PID"), *fds_text = getenv("LISTEN_FDS");
  char *end;
  unsigned long pid;
  long n, fd;

  if (pid_text == NULL || fds_text == NULL) return 0;
  errno = 0;
  pid = strtoul(pid_text, &end, 10);
  if (errno != 0 || *end != '\0' || pid != (unsigned long)getpid()) return 0;
  n = strtol(fds_text, &end, 10);
  if (errno != 0 || *end != '\0' || n <= 0 || n > INT_MAX - LISTEN_FDS_START) return 0;
  /* Like sd_listen_fds: our children should not inherit the sockets by accident. */
  for (fd = LISTEN_FDS_START; fd < LISTEN_FDS_START + n; ++fd) fcntl((int)fd, F_SETFD, FD_CLOEXEC);
  return (int)n;
}

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
  long count = -1, served; /* -1: serve forever */
  int n, i;
  const char *names = getenv("LISTEN_FDNAMES");

  for (i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) count = strtol(argv[++i], NULL, 10);
  }
  n = listen_fds();
  if (n == 0) {
    fprintf(stderr, "listen_fds_server: no sockets passed (run me under portbroker exec)\n");
    return 1;
  }
  printf("got %d fds:", n);
  for (i = 0; i < n; ++i) { /* names are colon-separated; systemd says "unknown" if absent */
    size_t len = names != NULL ? strcspn(names, ":") : 0;
    if (len > 0)
      printf(" %.*s", (int)len, names);
    else
      printf(" unknown");
    if (names != NULL) names = names[len] == ':' ? names + len + 1 : NULL;
  }
  printf("\n");
  fflush(stdout);
  /* Children must not take the variables as meant for them (sd_listen_fds(1) does this). */
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");

  for (served = 0; count < 0 || served < count;) {
    int conn = accept4(LISTEN_FDS_START, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      perror("listen_fds_server: accept");
      return 1;
    }
    echo(conn);
    close(conn);
    ++served;
  }
  return 0;
}
