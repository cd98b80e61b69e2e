/* The loop the intercept benchmark times under each way of getting port PORT as non-root:
 * ITERATIONS x (socket, SO_REUSEADDR, bind 0.0.0.0:PORT, close), after a tenth as many
 * untimed. Prints "p50_ns=N mean_ns=N" on success; exits 1 naming the failing call. */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
  return x < y ? -1 : x > y;
}

static int once(unsigned short port) {
  struct sockaddr_in a;
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    perror("bind_loop: bind");
    close(fd);
    return -1;
  }
  return close(fd);
}

int main(int argc, char **argv) {
  unsigned short port;
  long n, i;
  unsigned long long *samples, total = 0;
  if (argc != 3) {
    fprintf(stderr, "usage: bind_loop PORT ITERATIONS\n");
    return 2;
  }
  port = (unsigned short)atoi(argv[1]);
  n = atol(argv[2]);
  if (n <= 0 || (samples = calloc((size_t)n, sizeof(*samples))) == NULL) return 2;
  for (i = 0; i < n / 10 + 1; ++i) {
    if (once(port) != 0) return 1;
  }
  for (i = 0; i < n; ++i) {
    unsigned long long t0 = now_ns();
    if (once(port) != 0) return 1;
    samples[i] = now_ns() - t0;
    total += samples[i];
  }
  qsort(samples, (size_t)n, sizeof(*samples), cmp);
  printf("p50_ns=%llu mean_ns=%llu\n", samples[n / 2], total / (unsigned long long)n);
  free(samples);
  return 0;
}
