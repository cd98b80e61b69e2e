/* Exercises every function of the C ABI against a running portbrokerd ($PORTBROKER_SOCKET),
 * failure paths included: a failing call returns a negative code, leaves every output as it
 * was and says why in portbroker_last_error. tests/integration/capi_test.cc runs it in a private
 * network namespace, one mode at a time:
 *
 *   capi_check main                 as root: everything a single process can check
 *   capi_check linger PORT          acquires PORT with linger=60, prints "token HEX", exits
 *   capi_check reclaim PORT [TOKEN] takes a lingering lease back (another uid needs TOKEN)
 *   capi_check nonroot              as a plain user: administration is refused
 *   capi_check upgrade | shutdown   asks the daemon to re-execute itself / to stop
 *
 * It prints one line per failed check and exits 1 if any failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <portbroker/portbroker.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures;
static int checks;

#define CHECK(cond)                                            \
  do {                                                         \
    ++checks;                                                  \
    if (!(cond)) {                                             \
      ++failures;                                              \
      printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                          \
  } while (0)
/* The message of the last failure on a client (NULL: of connect) or an event stream. */
#define LAST_ERROR(x)                                                                          \
  _Generic((x), portbroker_event_stream *                                                      \
           : portbroker_event_stream_last_error((const portbroker_event_stream *)(x)), default \
           : portbroker_last_error((const portbroker_client *)(x)))
/* A call that must succeed; on failure prints the library's message. */
#define CHECK_OK(c, call)                                                        \
  do {                                                                           \
    int rc_ = (call);                                                            \
    ++checks;                                                                    \
    if (rc_ != 0) {                                                              \
      ++failures;                                                                \
      printf("FAILED %s:%d: %s = %d (%s): %s\n", __FILE__, __LINE__, #call, rc_, \
             portbroker_strerror(rc_), LAST_ERROR(c));                           \
    }                                                                            \
  } while (0)
#define CHECK_RC(c, call, code)                                                                    \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    ++checks;                                                                                      \
    if (rc_ != -(code) || LAST_ERROR(c)[0] == '\0') {                                              \
      ++failures;                                                                                  \
      printf("FAILED %s:%d: %s = %d, wanted %d with a message; message: %s\n", __FILE__, __LINE__, \
             #call, rc_, -(code), LAST_ERROR(c));                                                  \
    }                                                                                              \
  } while (0)

#define SENTINEL_FD (-77)
#define SENTINEL_ID 777u
#define SENTINEL_PORT 7u
#define MAX_ROUNDS 2000

static int count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; /* the directory's own fd */
}

static int bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int is_listening(int fd) {
  int on = 0;
  socklen_t len = sizeof(on);
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

/* The lease on `port` in `list`, or NULL. */
static const portbroker_lease *find_port(const portbroker_lease_list *list, int port) {
  size_t i;
  for (i = 0; i < portbroker_lease_list_count(list); ++i) {
    const portbroker_lease *l = portbroker_lease_list_get(list, i);
    if (portbroker_lease_port(l) == port) return l;
  }
  return NULL;
}

/* Waits (in daemon round trips, never in time) until the lease on `port` is in `state`, or,
 * with NULL, gone. */
static int wait_port_state(portbroker_client *c, int port, const char *state) {
  int round;
  for (round = 0; round < MAX_ROUNDS; ++round) {
    portbroker_lease_list *list = NULL;
    const portbroker_lease *l;
    int done;
    if (portbroker_list(c, &list) != 0) return 0;
    l = find_port(list, port);
    done = state == NULL ? l == NULL : l != NULL && strcmp(portbroker_lease_state(l), state) == 0;
    portbroker_lease_list_free(list);
    if (done) return 1;
  }
  return 0;
}

static int listen_outside(int port) {
  struct sockaddr_in sin;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(fd, 8) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

static void check_library(void) {
  portbroker_client *c = (portbroker_client *)&failures; /* a sentinel, never dereferenced */
  CHECK(portbroker_abi_version() == PORTBROKER_ABI_VERSION);
  CHECK(portbroker_version()[0] != '\0');
  CHECK(strcmp(portbroker_strerror(0), "success") == 0);
  CHECK(strcmp(portbroker_strerror(-PORTBROKER_ECONFLICT), "port leased by someone else") == 0);
  CHECK(strcmp(portbroker_strerror(PORTBROKER_ECONFLICT), portbroker_strerror(-5)) == 0);
  CHECK(strcmp(portbroker_strerror(-999), "unknown portbroker error") == 0);

  CHECK_RC(NULL, portbroker_connect("/nonexistent/portbroker.sock", &c),
           PORTBROKER_ECONNECTIONFAILED);
  CHECK(c == (portbroker_client *)&failures);
  CHECK(strstr(portbroker_last_error(NULL), "/nonexistent/portbroker.sock") != NULL);
  CHECK_RC(NULL, portbroker_connect(NULL, NULL), PORTBROKER_EBADREQUEST);
  portbroker_close(NULL);

  /* Without a client there is no message to keep, only the code. */
  CHECK(portbroker_acquire(NULL, "tcp:127.0.0.1:0", NULL, NULL, NULL) == -PORTBROKER_EBADREQUEST);
  CHECK(portbroker_list(NULL, NULL) == -PORTBROKER_EBADREQUEST);
  CHECK(portbroker_release(NULL, 1) == -PORTBROKER_EBADREQUEST);

  /* Accessors given nothing return nothing. */
  CHECK(portbroker_lease_list_count(NULL) == 0);
  CHECK(portbroker_lease_list_get(NULL, 0) == NULL);
  CHECK(portbroker_lease_id(NULL) == 0);
  CHECK(portbroker_lease_no_copy(NULL) == 0);
  CHECK(strcmp(portbroker_lease_name(NULL), "") == 0);
  CHECK(strcmp(portbroker_status_version(NULL), "") == 0);
  CHECK(portbroker_who_leases(NULL) == NULL);
  CHECK(portbroker_problem_kind(NULL, 0) == NULL);
  CHECK(portbroker_reservation_address(NULL) == NULL);
  CHECK(portbroker_reload_refused_get(NULL, 0) == NULL);
  portbroker_lease_list_free(NULL);
  portbroker_status_info_free(NULL);
  portbroker_who_report_free(NULL);
  portbroker_problem_list_free(NULL);
  portbroker_reservation_list_free(NULL);
  portbroker_reload_report_free(NULL);
}

/* acquire and acquire_all, their refusals; returns the id of the lease on 18700 in `a`. */
static uint64_t check_acquire(portbroker_client *a, portbroker_client *b, int fds[3]) {
  int fd = SENTINEL_FD, i;
  uint64_t id = SENTINEL_ID, held;
  uint16_t port = SENTINEL_PORT;
  portbroker_lease_list *leases = NULL;
  const char *specs[] = {"web=tcp:127.0.0.1:0", "udp:127.0.0.1:0", "tcp:127.0.0.1:18701,linger=60"};
  const char *conflicting[] = {"tcp:127.0.0.1:18702", "tcp:127.0.0.1:18700"};
  const char *with_null[] = {"tcp:127.0.0.1:18702", NULL};
  char pid[32];

  CHECK_RC(a, portbroker_acquire(a, "tcp:127.0.0.1:nonsense", &fd, &id, &port),
           PORTBROKER_EBADREQUEST);
  CHECK_RC(a, portbroker_acquire(a, "tcp:127.0.0.1:0", NULL, &id, &port), PORTBROKER_EBADREQUEST);
  CHECK(fd == SENTINEL_FD && id == SENTINEL_ID && port == SENTINEL_PORT);

  CHECK_OK(a, portbroker_acquire(a, "tcp:127.0.0.1:18700", &fd, &id, &port));
  CHECK(strcmp(portbroker_last_error(a), "") == 0);
  CHECK(port == 18700 && id != SENTINEL_ID && fd >= 0);
  CHECK(bound_port(fd) == 18700 && is_listening(fd));
  held = id;
  close(fd);

  /* Someone else's port: refused, naming the holder, outputs untouched. */
  fd = SENTINEL_FD;
  id = SENTINEL_ID;
  port = SENTINEL_PORT;
  CHECK_RC(b, portbroker_acquire(b, "tcp:127.0.0.1:18700", &fd, &id, &port), PORTBROKER_ECONFLICT);
  CHECK(fd == SENTINEL_FD && id == SENTINEL_ID && port == SENTINEL_PORT);
  snprintf(pid, sizeof(pid), "pid %d", (int)getpid());
  CHECK(strstr(portbroker_last_error(b), pid) != NULL);

  /* Several at once. */
  for (i = 0; i < 3; ++i) fds[i] = SENTINEL_FD;
  CHECK_OK(a, portbroker_acquire_all(a, specs, 3, fds, &leases));
  CHECK(portbroker_lease_list_count(leases) == 3);
  CHECK(portbroker_lease_list_get(leases, 3) == NULL);
  for (i = 0; i < 3; ++i) {
    const portbroker_lease *l = portbroker_lease_list_get(leases, (size_t)i);
    CHECK(fds[i] >= 0 && bound_port(fds[i]) == portbroker_lease_port(l));
    CHECK(portbroker_lease_id(l) != 0 && portbroker_lease_port(l) != 0);
    CHECK(strcmp(portbroker_lease_address(l), "127.0.0.1") == 0);
  }
  CHECK(strcmp(portbroker_lease_name(portbroker_lease_list_get(leases, 0)), "web") == 0);
  CHECK(portbroker_lease_protocol(portbroker_lease_list_get(leases, 0)) == PORTBROKER_TCP);
  CHECK(portbroker_lease_protocol(portbroker_lease_list_get(leases, 1)) == PORTBROKER_UDP);
  CHECK(!is_listening(fds[1]));
  CHECK(strcmp(portbroker_lease_token(portbroker_lease_list_get(leases, 0)), "") == 0);
  CHECK(strlen(portbroker_lease_token(portbroker_lease_list_get(leases, 2))) >= 16);
  CHECK(portbroker_lease_linger_seconds(portbroker_lease_list_get(leases, 2)) == 60);
  portbroker_lease_list_free(leases);

  /* All or nothing: one refused spec grants none, and the outputs stay as they were. */
  {
    int two[2] = {SENTINEL_FD, SENTINEL_FD};
    portbroker_lease_list *untouched = (portbroker_lease_list *)&failures;
    CHECK_RC(b, portbroker_acquire_all(b, conflicting, 2, two, &untouched), PORTBROKER_ECONFLICT);
    CHECK(two[0] == SENTINEL_FD && two[1] == SENTINEL_FD);
    CHECK(untouched == (portbroker_lease_list *)&failures);
    CHECK(wait_port_state(b, 18702, NULL));
    CHECK_RC(b, portbroker_acquire_all(b, with_null, 2, two, NULL), PORTBROKER_EBADREQUEST);
    CHECK(strstr(portbroker_last_error(b), "specs[1]") != NULL);
    CHECK_RC(b, portbroker_acquire_all(b, specs, 0, two, NULL), PORTBROKER_EBADREQUEST);
    CHECK_RC(b, portbroker_acquire_all(b, specs, 2, NULL, NULL), PORTBROKER_EBADREQUEST);
    CHECK_RC(b, portbroker_acquire_all(b, NULL, 2, two, NULL), PORTBROKER_EBADREQUEST);
    CHECK(two[0] == SENTINEL_FD && two[1] == SENTINEL_FD);
  }
  return held;
}

static void check_list_and_status(portbroker_client *b, uint64_t held) {
  portbroker_lease_list *list = NULL;
  portbroker_status_info *status = NULL;
  const portbroker_lease *l;
  CHECK_OK(b, portbroker_list(b, &list));
  l = find_port(list, 18700);
  CHECK(l != NULL);
  CHECK(portbroker_lease_id(l) == held);
  CHECK(portbroker_lease_pid(l) == getpid());
  CHECK(portbroker_lease_uid(l) == getuid() && portbroker_lease_gid(l) == getgid());
  CHECK(strcmp(portbroker_lease_comm(l), "capi_check") == 0);
  CHECK(portbroker_lease_cgroup(l)[0] != '\0');
  CHECK(portbroker_lease_mode(l) == PORTBROKER_EXCLUSIVE);
  CHECK(strcmp(portbroker_lease_state(l), "active") == 0);
  CHECK(portbroker_lease_session(l) != 0 && portbroker_lease_created_at_ms(l) > 0);
  CHECK(portbroker_lease_linger_until_ms(l) == 0);
  CHECK(strcmp(portbroker_lease_token(l), "") == 0); /* tokens are never listed */
  CHECK(portbroker_lease_no_copy(l) == 0);
  CHECK(portbroker_lease_list_count(list) == 4);
  portbroker_lease_list_free(list);
  CHECK_RC(b, portbroker_list(b, NULL), PORTBROKER_EBADREQUEST);

  CHECK_OK(b, portbroker_status(b, &status));
  CHECK(strcmp(portbroker_status_version(status), portbroker_version()) == 0);
  CHECK(portbroker_status_pid(status) > 0 && portbroker_status_started_at_ms(status) > 0);
  CHECK(portbroker_status_sessions(status) >= 2 && portbroker_status_leases(status) == 4);
  CHECK(portbroker_status_pool_low(status) == 24000 &&
        portbroker_status_pool_high(status) == 24009);
  CHECK(portbroker_status_open_fds(status) > 0);
  CHECK(strcmp(portbroker_status_socket_path(status), getenv("PORTBROKER_SOCKET")) == 0);
  portbroker_status_info_free(status);
  CHECK_RC(b, portbroker_status(b, NULL), PORTBROKER_EBADREQUEST);
}

static void check_who(portbroker_client *b, uint64_t held) {
  portbroker_who_report *who = NULL, *untouched = (portbroker_who_report *)&failures;
  const portbroker_outside_holder *o;
  int outside = listen_outside(18703);
  CHECK(outside >= 0);

  CHECK_OK(b, portbroker_who(b, PORTBROKER_TCP, 18700, &who));
  CHECK(portbroker_who_protocol(who) == PORTBROKER_TCP && portbroker_who_port(who) == 18700);
  CHECK(portbroker_lease_list_count(portbroker_who_leases(who)) == 1);
  CHECK(portbroker_lease_id(portbroker_lease_list_get(portbroker_who_leases(who), 0)) == held);
  CHECK(portbroker_who_in_ephemeral_range(who) == 0 && portbroker_who_held(who) == 0);
  portbroker_who_report_free(who);

  CHECK_OK(b, portbroker_who(b, PORTBROKER_TCP, 18703, &who));
  CHECK(portbroker_lease_list_count(portbroker_who_leases(who)) == 0);
  CHECK(portbroker_who_outside_count(who) == 1);
  o = portbroker_who_outside_get(who, 0);
  CHECK(portbroker_who_outside_get(who, 1) == NULL);
  CHECK(portbroker_outside_protocol(o) == PORTBROKER_TCP && portbroker_outside_port(o) == 18703);
  CHECK(strcmp(portbroker_outside_address(o), "127.0.0.1") == 0);
  CHECK(strcmp(portbroker_outside_state(o), "LISTEN") == 0);
  CHECK(portbroker_outside_pid(o) == getpid() && portbroker_outside_uid(o) == getuid());
  CHECK(strcmp(portbroker_outside_comm(o), "capi_check") == 0);
  portbroker_who_report_free(who);

  CHECK_OK(b, portbroker_who(b, PORTBROKER_UDP, 24005, &who));
  CHECK(portbroker_who_pool_count(who) == 1);
  CHECK(strcmp(portbroker_who_pool_get(who, 0), "default") == 0);
  CHECK(portbroker_who_pool_get(who, 1) == NULL);
  CHECK(portbroker_who_guarded(who) == 0 || portbroker_who_guarded(who) == 1);
  portbroker_who_report_free(who);

  CHECK_RC(b, portbroker_who(b, 7, 18700, &untouched), PORTBROKER_EBADREQUEST);
  CHECK_RC(b, portbroker_who(b, PORTBROKER_TCP, 18700, NULL), PORTBROKER_EBADREQUEST);
  CHECK(untouched == (portbroker_who_report *)&failures);
  close(outside);
}

/* Reservations, check and reload (root). */
static void check_admin(portbroker_client *b) {
  const char *users[] = {"root", "65534"};
  const char *null_user[] = {NULL};
  portbroker_reservation_list *list = NULL;
  portbroker_problem_list *problems = NULL;
  portbroker_reload_report *reload = NULL;
  portbroker_who_report *who = NULL;
  const portbroker_reservation *r = NULL;
  size_t i;
  int outside = listen_outside(18703), found = 0;

  CHECK_OK(b, portbroker_check(b, &problems));
  CHECK(portbroker_problem_list_count(problems) == 0);
  portbroker_problem_list_free(problems);

  CHECK_OK(b, portbroker_reserve(b, "capi", "tcp:any:18703", users, 2, NULL, 0, 0));
  CHECK_OK(b,
           portbroker_reserve(b, "capi-held", "both:127.0.0.1:18704-18705", NULL, 0, users, 1, 1));
  CHECK_RC(b, portbroker_reserve(b, "capi-bad", "tcp:any:99999", NULL, 0, NULL, 0, 0),
           PORTBROKER_EBADREQUEST);
  CHECK_RC(b, portbroker_reserve(b, "capi-bad", "tcp:any:18706", NULL, 1, NULL, 0, 0),
           PORTBROKER_EBADREQUEST);
  CHECK_RC(b, portbroker_reserve(b, "capi-bad", "tcp:any:18706", null_user, 1, NULL, 0, 0),
           PORTBROKER_EBADREQUEST);
  CHECK_RC(b, portbroker_reserve(b, NULL, "tcp:any:18706", NULL, 0, NULL, 0, 0),
           PORTBROKER_EBADREQUEST);

  CHECK_OK(b, portbroker_reservations(b, &list));
  for (i = 0; i < portbroker_reservation_list_count(list); ++i) {
    r = portbroker_reservation_list_get(list, i);
    if (strcmp(portbroker_reservation_name(r), "capi") == 0) {
      ++found;
      CHECK(strcmp(portbroker_reservation_target(r), "tcp:any:18703") == 0);
      CHECK(portbroker_reservation_tcp(r) == 1 && portbroker_reservation_udp(r) == 0);
      CHECK(portbroker_reservation_address(r) == NULL);
      CHECK(portbroker_reservation_port_first(r) == 18703);
      CHECK(portbroker_reservation_port_last(r) == 18703);
      CHECK(portbroker_reservation_hold(r) == 0);
      CHECK(portbroker_reservation_origin(r)[0] != '\0');
      CHECK(strstr(portbroker_reservation_principals(r), "root") != NULL);
    } else if (strcmp(portbroker_reservation_name(r), "capi-held") == 0) {
      ++found;
      CHECK(portbroker_reservation_tcp(r) == 1 && portbroker_reservation_udp(r) == 1);
      CHECK(strcmp(portbroker_reservation_address(r), "127.0.0.1") == 0);
      CHECK(portbroker_reservation_port_first(r) == 18704);
      CHECK(portbroker_reservation_port_last(r) == 18705);
      CHECK(portbroker_reservation_hold(r) == 1);
    }
  }
  CHECK(found == 2);
  portbroker_reservation_list_free(list);

  CHECK_OK(b, portbroker_who(b, PORTBROKER_TCP, 18704, &who));
  CHECK(portbroker_who_held(who) == 1);
  CHECK(portbroker_reservation_list_count(portbroker_who_reservations(who)) == 1);
  CHECK(strcmp(portbroker_reservation_name(
                   portbroker_reservation_list_get(portbroker_who_reservations(who), 0)),
               "capi-held") == 0);
  portbroker_who_report_free(who);

  /* The reservation on 18703 is held by this process outside the broker: check says so. */
  CHECK_OK(b, portbroker_check(b, &problems));
  CHECK(portbroker_problem_list_count(problems) >= 1);
  found = 0;
  for (i = 0; i < portbroker_problem_list_count(problems); ++i) {
    if (strcmp(portbroker_problem_kind(problems, i), "held-outside") == 0 &&
        strstr(portbroker_problem_message(problems, i), "18703") != NULL)
      found = 1;
  }
  CHECK(found);
  CHECK(portbroker_problem_kind(problems, portbroker_problem_list_count(problems)) == NULL);
  portbroker_problem_list_free(problems);
  CHECK_RC(b, portbroker_check(b, NULL), PORTBROKER_EBADREQUEST);

  CHECK_OK(b, portbroker_unreserve(b, "capi"));
  CHECK_OK(b, portbroker_unreserve(b, "capi-held"));
  CHECK_RC(b, portbroker_unreserve(b, "capi"), PORTBROKER_ENOTFOUND);
  CHECK_RC(b, portbroker_unreserve(b, NULL), PORTBROKER_EBADREQUEST);
  CHECK_RC(b, portbroker_reservations(b, NULL), PORTBROKER_EBADREQUEST);

  CHECK_OK(b, portbroker_reload(b, &reload));
  CHECK(portbroker_reload_source(reload)[0] != '\0');
  CHECK(portbroker_reload_refused_count(reload) == 0);
  CHECK(portbroker_reload_refused_get(reload, 0) == NULL);
  portbroker_reload_report_free(reload);
  CHECK_RC(b, portbroker_reload(b, NULL), PORTBROKER_EBADREQUEST);
  close(outside);
}

/* The session fd: detached, it keeps the session (and its leases) alive without the client. */
static void check_session_fd(portbroker_client *b) {
  portbroker_client *d = NULL;
  int fd = SENTINEL_FD, session = SENTINEL_FD, again = SENTINEL_FD;
  uint64_t id = SENTINEL_ID;
  uint16_t port = SENTINEL_PORT;

  CHECK_OK(NULL, portbroker_connect(NULL, &d));
  CHECK_RC(d, portbroker_session_fd(d, NULL), PORTBROKER_EBADREQUEST);
  CHECK_OK(d, portbroker_session_fd(d, &session));
  CHECK(session >= 0);
  CHECK_OK(d, portbroker_acquire(d, "tcp:127.0.0.1:18706", &fd, &id, &port));
  close(fd);
  CHECK_RC(d, portbroker_detach_session_fd(d, NULL), PORTBROKER_EBADREQUEST);
  CHECK_OK(d, portbroker_detach_session_fd(d, &fd));
  CHECK(fd == session);

  /* The client is spent, the session is not. */
  CHECK_RC(d, portbroker_session_fd(d, &again), PORTBROKER_ECONNECTIONFAILED);
  CHECK_RC(d, portbroker_detach_session_fd(d, &again), PORTBROKER_ECONNECTIONFAILED);
  CHECK_RC(d, portbroker_release(d, id), PORTBROKER_ECONNECTIONFAILED);
  CHECK(again == SENTINEL_FD);
  portbroker_close(d);
  CHECK(wait_port_state(b, 18706, "active"));
  close(fd); /* the last copy: the session ends, and its lease with it */
  CHECK(wait_port_state(b, 18706, NULL));
}

/* The next replayed event (seq up to the subscription's) of `kind` on `port`, skipping others,
 * or NULL when the replay has no more; the caller frees it. */
static portbroker_event *next_event(portbroker_event_stream *s, const char *kind, int port) {
  portbroker_event *e = NULL;
  while (portbroker_event_stream_last_seq(s) < portbroker_event_stream_subscribed_at(s) &&
         portbroker_event_stream_next(s, -1, &e) == 0 && e != NULL) {
    if (strcmp(portbroker_event_kind(e), kind) == 0 && portbroker_event_port(e) == port) return e;
    portbroker_event_free(e);
    e = NULL;
  }
  return NULL;
}

/* Metrics, and events: the ring's replay (since=0) and a live subscription. */
static void check_events(portbroker_client *a, portbroker_client *b, uint64_t held) {
  portbroker_event_stream *replay = NULL, *live = NULL;
  portbroker_event_stream *untouched = (portbroker_event_stream *)&failures;
  portbroker_event *e = (portbroker_event *)&failures;
  uint64_t zero = 0, id = SENTINEL_ID;
  uint16_t port = SENTINEL_PORT;
  char *text = NULL, pid[32];
  int fd = SENTINEL_FD;

  CHECK_OK(b, portbroker_metrics(b, &text));
  CHECK(text != NULL && strstr(text, "portbroker_") != NULL);
  portbroker_string_free(text);
  CHECK_RC(b, portbroker_metrics(b, NULL), PORTBROKER_EBADREQUEST);

  CHECK_RC(b, portbroker_events(b, NULL, NULL), PORTBROKER_EBADREQUEST);
  CHECK(portbroker_events(NULL, NULL, &untouched) == -PORTBROKER_EBADREQUEST);
  CHECK(untouched == (portbroker_event_stream *)&failures);
  CHECK(portbroker_event_stream_next(NULL, 0, &e) == -PORTBROKER_EBADREQUEST);
  CHECK(portbroker_event_stream_fd(NULL) == -1);
  CHECK(portbroker_event_seq(NULL) == 0 && strcmp(portbroker_event_kind(NULL), "") == 0);
  portbroker_event_stream_close(NULL);
  portbroker_event_free(NULL);

  /* What already happened, from the ring: the grant of 18700 and the refusal naming us. */
  CHECK_OK(b, portbroker_events(b, &zero, &replay));
  CHECK_RC(replay, portbroker_event_stream_next(replay, 0, NULL), PORTBROKER_EBADREQUEST);
  CHECK(portbroker_event_stream_fd(replay) >= 0);
  CHECK(portbroker_event_stream_subscribed_at(replay) > 0);
  e = next_event(replay, "acquired", 18700);
  CHECK(e != NULL);
  CHECK(portbroker_event_lease(e) == held && portbroker_event_pid(e) == getpid());
  CHECK(portbroker_event_uid(e) == getuid() && portbroker_event_seq(e) > 0);
  CHECK(portbroker_event_time_ms(e) > 0 && strcmp(portbroker_event_comm(e), "capi_check") == 0);
  CHECK(strcmp(portbroker_event_endpoint(e), "tcp 127.0.0.1:18700") == 0);
  CHECK(strcmp(portbroker_event_mode(e), "exclusive") == 0);
  CHECK(strcmp(portbroker_event_name(e), "") == 0);
  portbroker_event_free(e);
  e = next_event(replay, "refused", 18700);
  CHECK(e != NULL);
  CHECK(portbroker_event_code(e) == PORTBROKER_ECONFLICT);
  snprintf(pid, sizeof(pid), "pid %d", (int)getpid());
  CHECK(strstr(portbroker_event_conflicts_with(e), pid) != NULL);
  CHECK(portbroker_event_reason(e)[0] != '\0');
  CHECK(portbroker_event_count(e) == 0);
  portbroker_event_free(e);
  CHECK(portbroker_event_stream_last_seq(replay) <= portbroker_event_stream_subscribed_at(replay));
  portbroker_event_stream_close(replay);

  /* As it happens. */
  CHECK_OK(b, portbroker_events(b, NULL, &live));
  e = (portbroker_event *)&failures;
  CHECK_OK(live, portbroker_event_stream_next(live, 0, &e));
  CHECK(e == NULL); /* nothing new yet */
  CHECK_OK(a, portbroker_acquire(a, "tcp:127.0.0.1:18707", &fd, &id, &port));
  close(fd);
  CHECK_OK(a, portbroker_release(a, id));
  CHECK_OK(live, portbroker_event_stream_next(live, -1, &e));
  CHECK(e != NULL && strcmp(portbroker_event_kind(e), "acquired") == 0);
  CHECK(portbroker_event_port(e) == 18707 && portbroker_event_lease(e) == id);
  CHECK(portbroker_event_seq(e) == portbroker_event_stream_subscribed_at(live) + 1);
  portbroker_event_free(e);
  CHECK_OK(live, portbroker_event_stream_next(live, -1, &e));
  CHECK(e != NULL && strcmp(portbroker_event_kind(e), "released") == 0);
  CHECK(portbroker_event_lease(e) == id);
  CHECK(portbroker_event_stream_last_seq(live) == portbroker_event_seq(e));
  portbroker_event_free(e);
  portbroker_event_stream_close(live);
}

static int run_main(void) {
  portbroker_client *a = NULL, *b = NULL;
  int fds[3], i, fd = SENTINEL_FD, start_fds = count_fds();
  uint64_t held, id = SENTINEL_ID;
  uint16_t port = SENTINEL_PORT;

  check_library();
  CHECK_OK(NULL, portbroker_connect(NULL, &a));
  CHECK_OK(NULL, portbroker_connect(NULL, &b));
  CHECK(strcmp(portbroker_last_error(NULL), "") == 0);
  held = check_acquire(a, b, fds);
  check_list_and_status(b, held);
  check_who(b, held);
  check_admin(b);
  check_session_fd(b);
  check_events(a, b, held);

  /* Release: the port is free for the other client at once. */
  CHECK_OK(a, portbroker_release(a, held));
  CHECK_RC(a, portbroker_release(a, held), PORTBROKER_ENOTFOUND);
  CHECK_OK(b, portbroker_acquire(b, "tcp:127.0.0.1:18700", &fd, &id, &port));
  close(fd);

  /* Closing a client ends its session: its plain leases end, the linger= one lingers. */
  portbroker_close(a);
  CHECK(wait_port_state(b, 18701, "lingering"));
  CHECK(wait_port_state(b, 18700, "active"));
  for (i = 0; i < 3; ++i) close(fds[i]);
  portbroker_close(b);
  CHECK(count_fds() == start_fds);
  printf("capi_check main: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

static int run_linger(int port) {
  portbroker_client *c = NULL;
  portbroker_lease_list *leases = NULL;
  char spec[64];
  const char *specs[1];
  int fd = SENTINEL_FD;
  snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%d,linger=60", port);
  specs[0] = spec;
  CHECK_OK(NULL, portbroker_connect(NULL, &c));
  CHECK_OK(c, portbroker_acquire_all(c, specs, 1, &fd, &leases));
  if (failures == 0)
    printf("token %s\n", portbroker_lease_token(portbroker_lease_list_get(leases, 0)));
  portbroker_lease_list_free(leases);
  close(fd);
  portbroker_close(c); /* the session ends without a release: the lease lingers */
  return failures == 0 ? 0 : 1;
}

/* Prints "no_copy N" for the lease on `port` as the C ABI lists it. */
static int run_no_copy(int port) {
  portbroker_client *c = NULL;
  portbroker_lease_list *list = NULL;
  const portbroker_lease *l;
  CHECK_OK(NULL, portbroker_connect(NULL, &c));
  CHECK_OK(c, portbroker_list(c, &list));
  l = find_port(list, port);
  CHECK(l != NULL);
  if (l != NULL) printf("no_copy %d\n", portbroker_lease_no_copy(l));
  portbroker_lease_list_free(list);
  portbroker_close(c);
  return failures == 0 ? 0 : 1;
}

static int run_reclaim(int port, const char *token) {
  portbroker_client *c = NULL;
  char spec[160];
  int fd = SENTINEL_FD;
  uint64_t id = SENTINEL_ID;
  uint16_t got = SENTINEL_PORT;
  if (token != NULL)
    snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%d,linger=60,token=%s", port, token);
  else
    snprintf(spec, sizeof(spec), "tcp:127.0.0.1:%d,linger=60", port);
  CHECK_OK(NULL, portbroker_connect(NULL, &c));
  if (portbroker_acquire(c, spec, &fd, &id, &got) != 0) {
    printf("refused: %s\n", portbroker_last_error(c));
    CHECK(fd == SENTINEL_FD && id == SENTINEL_ID && got == SENTINEL_PORT);
    portbroker_close(c);
    return failures == 0 ? 3 : 1;
  }
  CHECK(got == port && bound_port(fd) == port && is_listening(fd));
  CHECK_OK(c, portbroker_release(c, id));
  close(fd);
  portbroker_close(c);
  printf("reclaimed %d\n", port);
  return failures == 0 ? 0 : 1;
}

/* A plain user: every administrative request is refused, saying so, with outputs untouched. */
static int run_nonroot(void) {
  portbroker_client *c = NULL;
  portbroker_reload_report *reload = (portbroker_reload_report *)&failures;
  portbroker_reservation_list *list = NULL;
  CHECK_OK(NULL, portbroker_connect(NULL, &c));
  CHECK_RC(c, portbroker_reserve(c, "mine", "tcp:any:18710", NULL, 0, NULL, 0, 0),
           PORTBROKER_EPERMISSIONDENIED);
  CHECK_RC(c, portbroker_unreserve(c, "mine"), PORTBROKER_EPERMISSIONDENIED);
  CHECK_RC(c, portbroker_reload(c, &reload), PORTBROKER_EPERMISSIONDENIED);
  CHECK(reload == (portbroker_reload_report *)&failures);
  CHECK_RC(c, portbroker_shutdown(c, 1), PORTBROKER_EPERMISSIONDENIED);
  CHECK_RC(c, portbroker_upgrade(c), PORTBROKER_EPERMISSIONDENIED);
  CHECK_OK(c, portbroker_reservations(c, &list));
  portbroker_reservation_list_free(list);

  /* Events: a plain user sees its own uid's lease events only, however many root caused. */
  {
    portbroker_event_stream *s = NULL;
    portbroker_event *e = NULL;
    uint64_t zero = 0, id = SENTINEL_ID;
    uint16_t port = SENTINEL_PORT;
    int fd = SENTINEL_FD, mine = 0, others = 0;
    CHECK_OK(c, portbroker_acquire(c, "tcp:127.0.0.1:18711", &fd, &id, &port));
    close(fd);
    CHECK_OK(c, portbroker_release(c, id));
    CHECK_OK(c, portbroker_events(c, &zero, &s));
    /* A marker of our own after the replay: read until its release. */
    CHECK_OK(c, portbroker_acquire(c, "tcp:127.0.0.1:18712", &fd, &id, &port));
    close(fd);
    CHECK_OK(c, portbroker_release(c, id));
    while (portbroker_event_stream_next(s, -1, &e) == 0 && e != NULL) {
      int marker =
          strcmp(portbroker_event_kind(e), "released") == 0 && portbroker_event_lease(e) == id;
      if (strcmp(portbroker_event_kind(e), "acquired") == 0) {
        if (portbroker_event_uid(e) == getuid())
          ++mine;
        else
          ++others;
      }
      portbroker_event_free(e);
      if (marker) break;
    }
    CHECK(mine == 2 && others == 0);
    portbroker_event_stream_close(s);
  }
  portbroker_close(c);
  printf("capi_check nonroot: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}

/* upgrade or shutdown; afterwards the same client still works (upgrade) or reports the lost
 * daemon (shutdown). */
static int run_lifecycle(int upgrade) {
  portbroker_client *c = NULL;
  portbroker_status_info *status = (portbroker_status_info *)&failures;
  CHECK_OK(NULL, portbroker_connect(NULL, &c));
  if (upgrade) {
    CHECK_OK(c, portbroker_upgrade(c));
    CHECK_OK(c, portbroker_status(c, &status));
    portbroker_status_info_free(status);
  } else {
    int round, rc = 0;
    portbroker_event_stream *s = NULL;
    portbroker_event *e = NULL, *sentinel = (portbroker_event *)&failures;
    CHECK_OK(c, portbroker_events(c, NULL, &s));
    CHECK_OK(c, portbroker_shutdown(c, 0));
    /* The stream ends: an error, not an event, and the output untouched. */
    for (round = 0; round < MAX_ROUNDS && rc == 0; ++round) {
      e = sentinel;
      rc = portbroker_event_stream_next(s, -1, &e);
      if (rc == 0 && e != NULL) portbroker_event_free(e);
    }
    CHECK(rc < 0 && e == sentinel && portbroker_event_stream_last_error(s)[0] != '\0');
    portbroker_event_stream_close(s);
    rc = 0;
    /* Requests already sent may still be answered; once the daemon is gone, they fail. */
    for (round = 0; round < MAX_ROUNDS && rc == 0; ++round) {
      rc = portbroker_status(c, &status);
      if (rc == 0) portbroker_status_info_free(status);
      if (rc == 0) status = (portbroker_status_info *)&failures;
    }
    CHECK(rc == -PORTBROKER_ECONNECTIONFAILED && portbroker_last_error(c)[0] != '\0');
    CHECK(status == (portbroker_status_info *)&failures);
  }
  portbroker_close(c);
  printf("capi_check %s: %d checks, %d failed\n", upgrade ? "upgrade" : "shutdown", checks,
         failures);
  return failures == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 2 && strcmp(argv[1], "main") == 0) return run_main();
  if (argc == 3 && strcmp(argv[1], "linger") == 0) return run_linger(atoi(argv[2]));
  if (argc == 3 && strcmp(argv[1], "no-copy") == 0) return run_no_copy(atoi(argv[2]));
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "reclaim") == 0)
    return run_reclaim(atoi(argv[2]), argc == 4 ? argv[3] : NULL);
  if (argc == 2 && strcmp(argv[1], "nonroot") == 0) return run_nonroot();
  if (argc == 2 && strcmp(argv[1], "upgrade") == 0) return run_lifecycle(1);
  if (argc == 2 && strcmp(argv[1], "shutdown") == 0) return run_lifecycle(0);
  fprintf(stderr,
          "usage: capi_check main|linger PORT|reclaim PORT [TOKEN]|nonroot|upgrade|shutdown\n");
  return 2;
}
