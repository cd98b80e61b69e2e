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
 * Every function returns 0 or a negative PORTBROKER_E* code, and leaves its outputs untouched
 * on failure. A lease lasts until it is released or the client is closed (or the process
 * exits): the daemon ties leases to the connection. A client is not thread-safe. */
#ifndef PORTBROKER_PORTBROKER_H_
#define PORTBROKER_PORTBROKER_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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

typedef struct portbroker_client portbroker_client;

/* Connects to `socket_path`, or (NULL) $PORTBROKER_SOCKET, or the default path. On failure
 * portbroker_last_error(NULL) describes why (per thread). */
int portbroker_connect(const char *socket_path, portbroker_client **out);

/* Acquires one socket; `spec` is `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`. The caller owns
 * `*fd_out` (close-on-exec is set); `*port_out` is the bound port, useful when 0 was asked. */
int portbroker_acquire(portbroker_client *c, const char *spec, int *fd_out, uint64_t *lease_id_out,
                       uint16_t *port_out);

/* Releases a lease; the caller should close its fd too. */
int portbroker_release(portbroker_client *c, uint64_t lease_id);

/* The message of the client's last failure (the daemon's, e.g. naming a conflict's holder),
 * "" if none. With NULL: the last portbroker_connect failure in this thread. Valid until the
 * next call on the same client. */
const char *portbroker_last_error(const portbroker_client *c);

/* A static description of a code (negative or positive). */
const char *portbroker_strerror(int code);

/* Closes the connection, which ends every lease it still holds. NULL is ignored. */
void portbroker_close(portbroker_client *c);

#ifdef __cplusplus
}
#endif

#endif /* PORTBROKER_PORTBROKER_H_ */
