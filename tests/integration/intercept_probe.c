/* A server that binds by itself, for the `exec --intercept` tests. Built twice: dynamically
 * (its bind goes through libc, where the preload library sits) and statically with
 * PB_RAW_BIND (the raw syscall: nothing to hook, only the seccomp filter sees it).
 *
 *   intercept_probe tcp|udp ADDRESS PORT [nonblock] [cloexec] [reuseport] [rcvbuf=N]
 *
 * Prints one line: "bound port=P nonblock=0|1 cloexec=0|1 listening=0|1 reuseport=0|1
 * rcvbuf=N pid=PID", or "failed errno=NAME". Then reads commands from stdin, one a line:
 * "echo" (TCP: accept one connection and echo one line back), "close" (close the socket;
 * prints "closed"), "exit". EOF exits. Copies of the socket, each printing "copy fd=N
 * cloexec=0|1" (or "failed errno=NAME"): "dup", "dup2 N", "dup3 N" (O_CLOEXEC), "dupfd N"
 * (fcntl F_DUPFD_CLOEXEC, lowest N). "listen PORT" binds and listens on a second TCP socket at
 * 127.0.0.1:PORT ("listening fd=N"), "closefd N" closes fd N ("closed"), and "sync" makes one
 * round trip to the broker on this process's session (binds a UDP socket to 127.0.0.1:0 and
 * closes it; "synced"), so every release sent before it has been handled. "cancelbind PORT"
 * binds a second TCP socket at 127.0.0.1:PORT in a thread with a cancellation pending and
 * dup2s another fd over it, then prints "cancelbind bound=0|1 released=0|1 cancelled=0|1".
 * "forkbind PORT" forks a child that binds a TCP socket at 127.0.0.1:PORT, prints "forkbound
 * pid=CHILD" (or "failed errno=NAME") and lives until "reap" ("reaped"). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int do_bind(int fd, const struct sockaddr *addr, socklen_t len) {
#ifdef PB_RAW_BIND
  return (int)syscall(SYS_bind, fd, addr, len);
#else
  return bind(fd, addr, len);
#endif
}

static const char *errno_name(int e) {
  switch (e) {
    case EADDRINUSE:
      return "EADDRINUSE";
    case EACCES:
      return "EACCES";
    case EADDRNOTAVAIL:
      return "EADDRNOTAVAIL";
    case EINVAL:
      return "EINVAL";
    case ENOSYS:
      return "ENOSYS";
    default:
      return strerror(e);
  }
}

static int int_opt(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof(v);
  return getsockopt(fd, level, name, &v, &len) == 0 ? v : -1;
}

static void report_copy(int copy) {
  if (copy < 0)
    printf("failed errno=%s\n", errno_name(errno));
  else
    printf("copy fd=%d cloexec=%d\n", copy, (fcntl(copy, F_GETFD) & FD_CLOEXEC) != 0);
}

static int loopback_socket(int type, int port) {
  struct sockaddr_in a;
  int s = socket(AF_INET, type, 0);
  if (s < 0) return -1;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (do_bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      (type == SOCK_STREAM && listen(s, 16) != 0)) {
    int e = errno;
    close(s);
    errno = e;
    return -1;
  }
  return s;
}

struct cancel_bind {
  int port;
  int other; /* an fd to dup2 over the socket */
  int fd;
  int bound;
  int released;
};

/* With a cancellation pending on the thread: the bind (a round trip to the broker) and a dup2
 * over the socket's only copy (its release) both complete, as neither is a cancellation point;
 * the thread ends at testcancel. */
static void *cancel_bind_thread(void *arg) {
  struct cancel_bind *cb = arg;
  pthread_cancel(pthread_self());
  cb->fd = loopback_socket(SOCK_STREAM, cb->port);
  cb->bound = cb->fd >= 0;
  if (cb->fd >= 0) cb->released = dup2(cb->other, cb->fd) == cb->fd;
  pthread_testcancel();
  return NULL;
}

static void cancel_bind(int port) {
  struct cancel_bind cb = {port, -1, -1, 0, 0};
  pthread_t t;
  void *result = NULL;
  cb.other = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (cb.other < 0 || pthread_create(&t, NULL, cancel_bind_thread, &cb) != 0) {
    printf("failed errno=%s\n", errno_name(errno));
    return;
  }
  pthread_join(t, &result);
  if (cb.fd >= 0) close(cb.fd);
  close(cb.other);
  printf("cancelbind bound=%d released=%d cancelled=%d\n", cb.bound, cb.released,
         result == PTHREAD_CANCELED);
}

static pid_t forked = -1;
static int to_forked = -1;

/* A child that binds (on its own session, as the holder) and waits for its parent. */
static void fork_bind(int port) {
  int p[2];
  char c;
  if (forked > 0 || pipe2(p, O_CLOEXEC) != 0) {
    printf("failed errno=%s\n", errno_name(forked > 0 ? EBUSY : errno));
    return;
  }
  fflush(stdout);
  forked = fork();
  if (forked == 0) {
    int s = loopback_socket(SOCK_STREAM, port);
    close(p[1]);
    if (s < 0)
      printf("failed errno=%s\n", errno_name(errno));
    else
      printf("forkbound pid=%d\n", (int)getpid());
    fflush(stdout);
    while (read(p[0], &c, 1) > 0) {
    }
    _exit(0);
  }
  close(p[0]);
  if (forked < 0) {
    printf("failed errno=%s\n", errno_name(errno));
    close(p[1]);
    return;
  }
  to_forked = p[1];
}

static void reap(void) {
  if (forked > 0) {
    close(to_forked);
    waitpid(forked, NULL, 0);
    forked = -1;
  }
  printf("reaped\n");
}

/* The commands that copy, open and close fds: 1 when `line` was one of them. */
static int fd_command(int fd, const char *line) {
  int other;
  if (strncmp(line, "dup2 ", 5) == 0) {
    report_copy(dup2(fd, atoi(line + 5)));
  } else if (strncmp(line, "dup3 ", 5) == 0) {
    report_copy(dup3(fd, atoi(line + 5), O_CLOEXEC));
  } else if (strncmp(line, "dupfd ", 6) == 0) {
    report_copy(fcntl(fd, F_DUPFD_CLOEXEC, atoi(line + 6)));
  } else if (strncmp(line, "dup", 3) == 0) {
    report_copy(dup(fd));
  } else if (strncmp(line, "closefd ", 8) == 0) {
    close(atoi(line + 8));
    printf("closed\n");
  } else if (strncmp(line, "listen ", 7) == 0) {
    other = loopback_socket(SOCK_STREAM, atoi(line + 7));
    if (other < 0)
      printf("failed errno=%s\n", errno_name(errno));
    else
      printf("listening fd=%d\n", other);
  } else if (strncmp(line, "forkbind ", 9) == 0) {
    fork_bind(atoi(line + 9));
  } else if (strncmp(line, "reap", 4) == 0) {
    reap();
  } else if (strncmp(line, "cancelbind ", 11) == 0) {
    cancel_bind(atoi(line + 11));
  } else if (strncmp(line, "sync", 4) == 0) {
    other = loopback_socket(SOCK_DGRAM, 0);
    if (other < 0) {
      printf("failed errno=%s\n", errno_name(errno));
    } else {
      close(other);
      printf("synced\n");
    }
  } else {
    return 0;
  }
  return 1;
}

static void echo_one(int fd) {
  int conn = accept(fd, NULL, NULL);
  char buf[256];
  ssize_t n;
  if (conn < 0) return;
  n = read(conn, buf, sizeof(buf));
  if (n > 0 && write(conn, buf, (size_t)n) != n) perror("write");
  close(conn);
}

int main(int argc, char **argv) {
  int udp, fd, type, i, flags, fdflags;
  struct sockaddr_storage ss;
  socklen_t len;
  char line[64];
  if (argc < 4) {
    fprintf(stderr, "usage: intercept_probe tcp|udp ADDRESS PORT [options]\n");
    return 2;
  }
  udp = strcmp(argv[1], "udp") == 0;
  memset(&ss, 0, sizeof(ss));
  if (strchr(argv[2], ':') != NULL) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET6, argv[2], &a->sin6_addr) != 1) return 2;
    len = sizeof(*a);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &a->sin_addr) != 1) return 2;
    len = sizeof(*a);
  }
  type = udp ? SOCK_DGRAM : SOCK_STREAM;
  for (i = 4; i < argc; ++i) {
    if (strcmp(argv[i], "nonblock") == 0) type |= SOCK_NONBLOCK;
    if (strcmp(argv[i], "cloexec") == 0) type |= SOCK_CLOEXEC;
  }
  fd = socket(ss.ss_family, type, 0);
  if (fd < 0) return 3;
  for (i = 4; i < argc; ++i) {
    int one = 1;
    if (strcmp(argv[i], "reuseport") == 0)
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (strncmp(argv[i], "rcvbuf=", 7) == 0) {
      int v = atoi(argv[i] + 7);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    }
  }
  if (do_bind(fd, (struct sockaddr *)&ss, len) != 0) {
    printf("failed errno=%s\n", errno_name(errno));
    fflush(stdout);
    return 1;
  }
  if (!udp && listen(fd, 128) != 0) return 4;
  len = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &len);
  flags = fcntl(fd, F_GETFL);
  fdflags = fcntl(fd, F_GETFD);
  printf("bound port=%d nonblock=%d cloexec=%d listening=%d reuseport=%d rcvbuf=%d pid=%d\n",
         ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                       : ((struct sockaddr_in6 *)&ss)->sin6_port),
         (flags & O_NONBLOCK) != 0, (fdflags & FD_CLOEXEC) != 0,
         int_opt(fd, SOL_SOCKET, SO_ACCEPTCONN), int_opt(fd, SOL_SOCKET, SO_REUSEPORT),
         int_opt(fd, SOL_SOCKET, SO_RCVBUF), (int)getpid());
  fflush(stdout);
  while (fgets(line, sizeof(line), stdin) != NULL) {
    if (fd_command(fd, line)) {
      /* done */
    } else if (strncmp(line, "echo", 4) == 0) {
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      echo_one(fd);
      printf("echoed\n");
    } else if (strncmp(line, "close", 5) == 0) {
      close(fd);
      printf("closed\n");
    } else if (strncmp(line, "exit", 4) == 0) {
      break;
    }
    fflush(stdout);
  }
  return 0;
}
