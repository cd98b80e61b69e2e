/* dup, dup2, dup3, fcntl and fcntl64 on fds the broker has nothing to do with, one line per
 * call: what it returned, errno after it (set to 77 before each call, so a success that
 * touched errno shows), and what a pointer argument came back with. The intercept test runs
 * it with and without libportbroker-intercept.so preloaded: the two outputs must be equal.
 * It prints no pid or address, so two runs print the same. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static void report(const char *what, int ret) {
  printf("%s ret=%d errno=%d\n", what, ret, errno);
  errno = 77;
}

typedef int (*fcntl_fn)(int, int, ...);

/* One lock command on [start, start + len): its result and what the struct came back with. */
static void lock_call(const char *what, fcntl_fn fn, int fd, int cmd, short type, off_t start,
                      off_t len) {
  struct flock fl;
  int ret;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  ret = fn(fd, cmd, &fl);
  printf("%s ret=%d errno=%d type=%d whence=%d start=%ld len=%ld pid=%d\n", what, ret, errno,
         fl.l_type, fl.l_whence, (long)fl.l_start, (long)fl.l_len, fl.l_pid);
  errno = 77;
}

static void copies(int f) {
  report("dup", dup(f));
  report("dup of -1", dup(-1));
  report("dup of a closed fd", dup(900));
  report("dup2 onto itself", dup2(f, f));
  report("dup2 of a closed fd onto itself", dup2(900, 900));
  report("dup2 to 40", dup2(f, 40));
  report("dup2 onto 40 again (closes the copy)", dup2(f, 40));
  report("dup2 to -1", dup2(f, -1));
  report("dup3 onto itself", dup3(f, f, 0));
  report("dup3 with bad flags", dup3(f, 41, 12345));
  report("dup3 to 42, O_CLOEXEC", dup3(f, 42, O_CLOEXEC));
  report("  its F_GETFD", fcntl(42, F_GETFD));
  report("F_DUPFD 50", fcntl(f, F_DUPFD, 50));
  report("F_DUPFD_CLOEXEC 60", fcntl(f, F_DUPFD_CLOEXEC, 60));
  report("  its F_GETFD", fcntl(60, F_GETFD));
  report("F_DUPFD -1", fcntl(f, F_DUPFD, -1));
  report("F_DUPFD 1<<30", fcntl(f, F_DUPFD, 1 << 30));
  report("fcntl64 F_DUPFD_CLOEXEC 70", fcntl64(f, F_DUPFD_CLOEXEC, 70));
  report("close 40", close(40));
  report("close 40 again", close(40));
  report("close 42", close(42));
  report("close 50", close(50));
  report("close 60", close(60));
  report("close 70", close(70));
}

static void flags(int f, int p) {
  report("F_GETFD", fcntl(f, F_GETFD));
  report("F_SETFD FD_CLOEXEC", fcntl(f, F_SETFD, FD_CLOEXEC));
  report("F_GETFD", fcntl(f, F_GETFD));
  report("F_GETFL", fcntl(p, F_GETFL));
  report("F_SETFL O_NONBLOCK", fcntl(p, F_SETFL, O_NONBLOCK));
  report("F_GETFL", fcntl(p, F_GETFL));
  report("fcntl64 F_GETFL", fcntl64(p, F_GETFL));
  report("F_SETPIPE_SZ 131072", fcntl(p, F_SETPIPE_SZ, 131072));
  report("F_GETPIPE_SZ", fcntl(p, F_GETPIPE_SZ));
  report("F_SETSIG SIGUSR1", fcntl(p, F_SETSIG, SIGUSR1));
  report("F_GETSIG", fcntl(p, F_GETSIG));
  report("F_GETLEASE", fcntl(f, F_GETLEASE));
  report("F_SETLEASE on a pipe", fcntl(p, F_SETLEASE, F_RDLCK));
  report("F_GETFD of a closed fd", fcntl(900, F_GETFD));
  report("an unknown command", fcntl(f, 9999, 1));
  report("fcntl64, an unknown command", fcntl64(f, 9999, 1));
}

/* Pointer arguments, both ways: an open-file-description lock taken through one open of the
 * file and seen (F_OFD_GETLK fills the struct) through another. */
static void locks(int f, int other) {
  struct flock with_pid;
  lock_call("F_OFD_SETLK", fcntl, f, F_OFD_SETLK, F_WRLCK, 0, 10);
  lock_call("F_OFD_GETLK from another open", fcntl, other, F_OFD_GETLK, F_WRLCK, 5, 1);
  lock_call("fcntl64 F_OFD_GETLK", fcntl64, other, F_OFD_GETLK, F_WRLCK, 5, 1);
  lock_call("F_OFD_SETLK conflicting", fcntl, other, F_OFD_SETLK, F_RDLCK, 0, 1);
  lock_call("F_SETLK", fcntl, f, F_SETLK, F_WRLCK, 20, 5);
  lock_call("F_GETLK of its own lock", fcntl, f, F_GETLK, F_WRLCK, 20, 5);
  lock_call("F_SETLKW unlock", fcntl, f, F_SETLKW, F_UNLCK, 20, 5);
  memset(&with_pid, 0, sizeof(with_pid));
  with_pid.l_type = F_WRLCK;
  with_pid.l_len = 1;
  with_pid.l_pid = 1; /* must be 0 for an OFD lock */
  report("F_OFD_SETLK with l_pid set", fcntl(f, F_OFD_SETLK, &with_pid));
  report("F_GETLK with a bad pointer", fcntl(f, F_GETLK, (struct flock *)8));
}

static void owners(int s) {
  struct f_owner_ex set = {F_OWNER_PGRP, 0}, got;
  set.pid = getpgrp();
  report("F_SETOWN_EX", fcntl(s, F_SETOWN_EX, &set));
  memset(&got, 0, sizeof(got));
  report("F_GETOWN_EX", fcntl(s, F_GETOWN_EX, &got));
  printf("  type=%d same group=%d\n", got.type, got.pid == getpgrp());
  report("F_GETOWN is minus the group", fcntl(s, F_GETOWN) == -getpgrp());
}

static void seals(int m) {
  report("F_ADD_SEALS", fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
  report("F_GET_SEALS", fcntl(m, F_GET_SEALS));
}

/* With LD_PRELOAD set, the calls must reach the library's wrappers (else exit 3). */
static int wrapped_as_asked(void) {
  const char *preload = getenv("LD_PRELOAD");
  Dl_info info;
  if (preload == NULL || *preload == '\0') return 1;
  return dladdr((void *)fcntl, &info) != 0 && info.dli_fname != NULL &&
         strstr(info.dli_fname, "portbroker-intercept") != NULL;
}

int main(void) {
  char path[] = "/tmp/pb-fdcalls-XXXXXX";
  char proc[64];
  int f, p[2], other, s, m;
  if (!wrapped_as_asked()) return 3;
  f = mkstemp(path);
  if (f < 0 || pipe(p) != 0) return 2;
  snprintf(proc, sizeof(proc), "/proc/self/fd/%d", f);
  other = open(proc, O_RDWR | O_CLOEXEC);
  unlink(path);
  s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  m = memfd_create("pb-fdcalls", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (other < 0 || s < 0 || m < 0) return 2;
  errno = 77;
  copies(f);
  flags(f, p[0]);
  locks(f, other);
  owners(s);
  seals(m);
  report("close -1", close(-1));
  report("close", close(m));
  return 0;
}
