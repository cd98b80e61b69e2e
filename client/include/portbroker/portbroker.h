/* portbroker C API: ask portbrokerd for ready, bound, listening sockets.
 *
 *   portbroker_client *c;
 *   int fd, rc;
 *   uint64_t lease;
 *   uint16_t port;
 *   if ((rc = portbroker_connect(NULL, &c)) < 0) {
 *     fprintf(stderr, "%s\n", portbroker_last_error(NULL));
 *     return 1;
 *   }
 *   if ((rc = portbroker_acquire(c, "http=tcp:0.0.0.0:8080", &fd, &lease, &port)) < 0)
 *     fprintf(stderr, "%s\n", portbroker_last_error(c));  (names the holder on a conflict)
 *
 * Conventions, for every function below:
 * - It returns 0 or a negative PORTBROKER_E* code, and leaves its outputs untouched on failure;
 *   portbroker_last_error(c) then holds the message (the daemon's own, e.g. naming a
 *   conflict's holder).
 * - Results (lists, reports) are opaque objects the caller owns and frees with the matching
 *   *_free function (NULL is ignored). Everything read from a result through an accessor
 *   (strings, entries, nested lists) is borrowed: valid until that result is freed. Results
 *   are immutable, so any thread may read them.
 * - Accessors never fail: given NULL or an index past the end, those returning an entry or an
 *   indexed string return NULL, the others 0 or "".
 * - Fds handed to the caller have close-on-exec set and are the caller's to close.
 *
 * ABI: every type is opaque and every field is read through an accessor, so later versions add
 * functions, never change these. The exported symbols carry the version node PORTBROKER_1;
 * portbroker_abi_version() tells a program loading the library at run time what it has.
 *
 * A lease lasts until it is released or its session ends: the session is the client's
 * connection, which ends when the client is closed and its fd closed in every process (or the
 * process exits). A client is not thread-safe: use one per thread or guard it. */
#ifndef PORTBROKER_PORTBROKER_H_
#define PORTBROKER_PORTBROKER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI level this header describes; portbroker_abi_version() returns the library's. A
 * library serves every header of its level or lower. */
#define PORTBROKER_ABI_VERSION 1

/* Mirrors portbroker::ErrorCode; functions return these negated. */
#define PORTBROKER_EBADREQUEST 1
#define PORTBROKER_EUNSUPPORTEDVERSION 2
#define PORTBROKER_EUNKNOWNREQUEST 3
#define PORTBROKER_EPERMISSIONDENIED 4
#define PORTBROKER_ECONFLICT 5
#define PORTBROKER_EINUSEOUTSIDE 6
#define PORTBROKER_ENOTFOUND 7
#define PORTBROKER_ELIMITEXCEEDED 8
#define PORTBROKER_ERESOURCEEXHAUSTED 9
#define PORTBROKER_ENOFREEPORT 10
#define PORTBROKER_EADDRESSUNAVAILABLE 11
#define PORTBROKER_EINVALIDOPTION 12
#define PORTBROKER_ECONNECTIONFAILED 13
#define PORTBROKER_EPROTOCOLERROR 14
#define PORTBROKER_EINTERNAL 15

/* Protocols and lease modes, as accessors return them and portbroker_who takes them. */
#define PORTBROKER_TCP 0
#define PORTBROKER_UDP 1
#define PORTBROKER_EXCLUSIVE 0
#define PORTBROKER_SHARED 1
#define PORTBROKER_REUSEPORT 2

typedef struct portbroker_client portbroker_client;
typedef struct portbroker_lease portbroker_lease;
typedef struct portbroker_lease_list portbroker_lease_list;
typedef struct portbroker_status_info portbroker_status_info;
typedef struct portbroker_reservation portbroker_reservation;
typedef struct portbroker_reservation_list portbroker_reservation_list;
typedef struct portbroker_outside_holder portbroker_outside_holder;
typedef struct portbroker_who_report portbroker_who_report;
typedef struct portbroker_problem_list portbroker_problem_list;
typedef struct portbroker_reload_report portbroker_reload_report;
typedef struct portbroker_event_stream portbroker_event_stream;
typedef struct portbroker_event portbroker_event;

/* ---- the library ---------------------------------------------------------------------- */

/* PORTBROKER_ABI_VERSION of the library actually loaded. */
unsigned portbroker_abi_version(void);
/* The library's release, e.g. "0.1.0". */
const char *portbroker_version(void);
/* A static description of a code (negative or positive). */
const char *portbroker_strerror(int code);

/* ---- the session ---------------------------------------------------------------------- */

/* Connects to `socket_path`, or (NULL) $PORTBROKER_SOCKET, or the default path. On failure
 * portbroker_last_error(NULL) describes why (per thread). */
int portbroker_connect(const char *socket_path, portbroker_client **out);

/* Closes the connection, which ends the session (and every lease it still holds) unless its
 * fd was detached or is open in another process. NULL is ignored. */
void portbroker_close(portbroker_client *c);

/* The message of the client's last failure, "" after a success. With NULL: the last
 * portbroker_connect failure in this thread. Valid until the next call on the same client. */
const char *portbroker_last_error(const portbroker_client *c);

/* The connection's fd (still the client's): the session lives while it is open anywhere, so a
 * process that forks and execs may keep it open (without close-on-exec) in the child. */
int portbroker_session_fd(const portbroker_client *c, int *fd_out);

/* Hands the connection's fd to the caller, as `portbroker exec` does before it execs: the
 * session and its leases then last as long as that fd is open. The client can make no more
 * requests (they fail with PORTBROKER_ECONNECTIONFAILED) but must still be closed. */
int portbroker_detach_session_fd(portbroker_client *c, int *fd_out);

/* ---- leases --------------------------------------------------------------------------- */

/* Acquires one socket; `spec` is `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`. `*port_out` is the
 * bound port, useful when 0 was asked. The lease belongs to the session. */
int portbroker_acquire(portbroker_client *c, const char *spec, int *fd_out, uint64_t *lease_id_out,
                       uint16_t *port_out);

/* Acquires `count` sockets, all or nothing: fds_out[i] is the socket for specs[i], and
 * `*leases_out` (unless NULL is passed) lists the leases in the same order, with their tokens
 * for those asked with linger=. */
int portbroker_acquire_all(portbroker_client *c, const char *const *specs, size_t count,
                           int *fds_out, portbroker_lease_list **leases_out);

/* Releases a lease (the caller should close its fd too). As root: any lease (a revoke). */
int portbroker_release(portbroker_client *c, uint64_t lease_id);

/* Every lease the daemon holds. */
int portbroker_list(portbroker_client *c, portbroker_lease_list **out);

size_t portbroker_lease_list_count(const portbroker_lease_list *l);
const portbroker_lease *portbroker_lease_list_get(const portbroker_lease_list *l, size_t i);
void portbroker_lease_list_free(portbroker_lease_list *l);

uint64_t portbroker_lease_id(const portbroker_lease *l);
const char *portbroker_lease_name(const portbroker_lease *l);    /* "" when unnamed */
int portbroker_lease_protocol(const portbroker_lease *l);        /* PORTBROKER_TCP or _UDP */
const char *portbroker_lease_address(const portbroker_lease *l); /* "0.0.0.0", "::1" */
uint16_t portbroker_lease_port(const portbroker_lease *l);
int portbroker_lease_mode(const portbroker_lease *l); /* PORTBROKER_EXCLUSIVE, ... */
int32_t portbroker_lease_pid(const portbroker_lease *l);
uint32_t portbroker_lease_uid(const portbroker_lease *l);
uint32_t portbroker_lease_gid(const portbroker_lease *l);
const char *portbroker_lease_comm(const portbroker_lease *l);
const char *portbroker_lease_cgroup(const portbroker_lease *l);
uint64_t portbroker_lease_session(const portbroker_lease *l);
int64_t portbroker_lease_created_at_ms(const portbroker_lease *l); /* unix time */
const char *portbroker_lease_state(const portbroker_lease *l);     /* "active", "lingering" */
uint32_t portbroker_lease_linger_seconds(const portbroker_lease *l);
int64_t portbroker_lease_linger_until_ms(const portbroker_lease *l); /* while lingering */
/* Only on a lease this client acquired with linger=: lets another uid take it back
 * (`token=HEX` in its spec). "" otherwise. */
const char *portbroker_lease_token(const portbroker_lease *l);
/* 1 when the lease came back after a daemon crash without the broker's copy of its socket (the
 * copy could not be taken back from the holder): it cannot linger or take new shared members
 * until it ends. `portbroker list` says "active (no broker copy)". 0 otherwise. */
int portbroker_lease_no_copy(const portbroker_lease *l);

/* ---- the daemon ----------------------------------------------------------------------- */

int portbroker_status(portbroker_client *c, portbroker_status_info **out);

const char *portbroker_status_version(const portbroker_status_info *s);
int32_t portbroker_status_pid(const portbroker_status_info *s);
int64_t portbroker_status_started_at_ms(const portbroker_status_info *s);
uint32_t portbroker_status_sessions(const portbroker_status_info *s);
uint32_t portbroker_status_leases(const portbroker_status_info *s);
uint16_t portbroker_status_pool_low(const portbroker_status_info *s);
uint16_t portbroker_status_pool_high(const portbroker_status_info *s);
uint32_t portbroker_status_open_fds(const portbroker_status_info *s);
const char *portbroker_status_socket_path(const portbroker_status_info *s);
void portbroker_status_info_free(portbroker_status_info *s);

/* ---- who holds a port, and what is wrong ---------------------------------------------- */

/* Everything the daemon knows about `port` (`protocol` PORTBROKER_TCP or _UDP). */
int portbroker_who(portbroker_client *c, int protocol, uint16_t port, portbroker_who_report **out);

int portbroker_who_protocol(const portbroker_who_report *w);
uint16_t portbroker_who_port(const portbroker_who_report *w);
const portbroker_lease_list *portbroker_who_leases(const portbroker_who_report *w);
size_t portbroker_who_outside_count(const portbroker_who_report *w);
const portbroker_outside_holder *portbroker_who_outside_get(const portbroker_who_report *w,
                                                            size_t i);
const portbroker_reservation_list *portbroker_who_reservations(const portbroker_who_report *w);
size_t portbroker_who_pool_count(const portbroker_who_report *w);
const char *portbroker_who_pool_get(const portbroker_who_report *w, size_t i);
int portbroker_who_in_ephemeral_range(const portbroker_who_report *w); /* 1 or 0 */
int portbroker_who_guarded(const portbroker_who_report *w); /* in ip_local_reserved_ports */
int portbroker_who_held(const portbroker_who_report *w);    /* held for a reservation */
void portbroker_who_report_free(portbroker_who_report *w);

/* A socket on the port that a process outside the broker holds. */
int portbroker_outside_protocol(const portbroker_outside_holder *o);
const char *portbroker_outside_address(const portbroker_outside_holder *o);
uint16_t portbroker_outside_port(const portbroker_outside_holder *o);
const char *portbroker_outside_state(
    const portbroker_outside_holder *o); /* as ss names it: "LISTEN", "UNCONN", ... */
int32_t portbroker_outside_pid(const portbroker_outside_holder *o); /* 0: no process found */
uint32_t portbroker_outside_uid(const portbroker_outside_holder *o);
const char *portbroker_outside_comm(const portbroker_outside_holder *o);

/* What an admin should know before a restart; an empty list when all is well. */
int portbroker_check(portbroker_client *c, portbroker_problem_list **out);

size_t portbroker_problem_list_count(const portbroker_problem_list *p);
const char *portbroker_problem_kind(const portbroker_problem_list *p, size_t i);
const char *portbroker_problem_message(const portbroker_problem_list *p, size_t i);
void portbroker_problem_list_free(portbroker_problem_list *p);

/* ---- metrics and events --------------------------------------------------------------- */

/* The daemon's metrics in the Prometheus text format; free `*text_out` with
 * portbroker_string_free. */
int portbroker_metrics(portbroker_client *c, char **text_out);
void portbroker_string_free(char *s);

/* Subscribes to the daemon's events on a connection of its own (`c` stays usable, and the
 * stream outlives it). With `since` non-NULL, first the events after *since that the daemon's
 * ring still holds (a "lost" event first when it no longer holds them all). Returns once the
 * daemon has taken the subscription: every event after portbroker_event_stream_subscribed_at()
 * will arrive. A non-root subscriber sees only its own uid's lease events unless the policy's
 * [events] names it. */
int portbroker_events(portbroker_client *c, const uint64_t *since, portbroker_event_stream **out);

/* The next event, waiting up to `timeout_ms` (negative: for ever): 0 with `*event_out` set to
 * an event the caller frees with portbroker_event_free, or to NULL when the time ran out first.
 * A failure (the daemon closed the stream or stopped) ends the stream; the message is in
 * portbroker_event_stream_last_error. */
int portbroker_event_stream_next(portbroker_event_stream *s, int timeout_ms,
                                 portbroker_event **event_out);
const char *portbroker_event_stream_last_error(const portbroker_event_stream *s);
/* The stream's fd, to poll(2) for readability alongside other work; -1 once it ended. */
int portbroker_event_stream_fd(const portbroker_event_stream *s);
/* The newest event's seq when the subscription took effect. */
uint64_t portbroker_event_stream_subscribed_at(const portbroker_event_stream *s);
/* The seq of the last event returned (0 before any): `since` for a reconnect. */
uint64_t portbroker_event_stream_last_seq(const portbroker_event_stream *s);
/* Ends the subscription. NULL is ignored. */
void portbroker_event_stream_close(portbroker_event_stream *s);

uint64_t portbroker_event_seq(const portbroker_event *e);
int64_t portbroker_event_time_ms(const portbroker_event *e); /* unix time */
/* acquired, reclaimed, released, revoked, holder-exited, lingering, expired, refused,
 * reservation-added, reservation-removed, reservation-held, hold-failed, policy-reloaded,
 * daemon-started; and lost (this subscriber missed portbroker_event_count events). */
const char *portbroker_event_kind(const portbroker_event *e);
uint64_t portbroker_event_lease(const portbroker_event *e);
const char *portbroker_event_name(const portbroker_event *e);     /* lease or reservation */
const char *portbroker_event_endpoint(const portbroker_event *e); /* "tcp 127.0.0.1:8080" */
uint16_t portbroker_event_port(const portbroker_event *e);
const char *portbroker_event_mode(const portbroker_event *e);
int32_t portbroker_event_pid(const portbroker_event *e);
uint32_t portbroker_event_uid(const portbroker_event *e);
const char *portbroker_event_comm(const portbroker_event *e);
int portbroker_event_code(const portbroker_event *e); /* refused, hold-failed: a PORTBROKER_E* */
const char *portbroker_event_reason(const portbroker_event *e);
const char *portbroker_event_conflicts_with(const portbroker_event *e); /* refused: the holder */
uint64_t portbroker_event_count(const portbroker_event *e);             /* daemon-started, lost */
void portbroker_event_free(portbroker_event *e);

/* ---- administration (root only, except portbroker_reservations) ----------------------- */

/* Reserves `target` (`PROTO:ADDR:PORT[-PORT]`) as `name` for the given users and groups (names
 * or numeric ids; either array may be NULL when its count is 0); `hold` non-zero makes the
 * daemon bind and keep the port(s). */
int portbroker_reserve(portbroker_client *c, const char *name, const char *target,
                       const char *const *users, size_t user_count, const char *const *groups,
                       size_t group_count, int hold);
int portbroker_unreserve(portbroker_client *c, const char *name);
int portbroker_reservations(portbroker_client *c, portbroker_reservation_list **out);

size_t portbroker_reservation_list_count(const portbroker_reservation_list *l);
const portbroker_reservation *portbroker_reservation_list_get(const portbroker_reservation_list *l,
                                                              size_t i);
void portbroker_reservation_list_free(portbroker_reservation_list *l);

const char *portbroker_reservation_name(const portbroker_reservation *r);
const char *portbroker_reservation_target(const portbroker_reservation *r);
int portbroker_reservation_tcp(const portbroker_reservation *r); /* 1 or 0 */
int portbroker_reservation_udp(const portbroker_reservation *r);
const char *portbroker_reservation_address(const portbroker_reservation *r); /* NULL: any */
uint16_t portbroker_reservation_port_first(const portbroker_reservation *r);
uint16_t portbroker_reservation_port_last(const portbroker_reservation *r);
int portbroker_reservation_hold(const portbroker_reservation *r);
const char *portbroker_reservation_origin(const portbroker_reservation *r);
const char *portbroker_reservation_principals(const portbroker_reservation *r);

/* Reloads the policy. Leases the new policy would refuse are kept and listed in the report. */
int portbroker_reload(portbroker_client *c, portbroker_reload_report **out);

const char *portbroker_reload_source(const portbroker_reload_report *r);
size_t portbroker_reload_refused_count(const portbroker_reload_report *r);
const char *portbroker_reload_refused_get(const portbroker_reload_report *r, size_t i);
void portbroker_reload_report_free(portbroker_reload_report *r);

/* Stops the daemon. Without `revoke_all` every holder keeps its socket; with it (non-zero)
 * every lease is revoked first. */
int portbroker_shutdown(portbroker_client *c, int revoke_all);
/* Re-executes the daemon in place: leases, sessions and listeners carry on. */
int portbroker_upgrade(portbroker_client *c);

#ifdef __cplusplus
}
#endif

#endif /* PORTBROKER_PORTBROKER_H_ */
