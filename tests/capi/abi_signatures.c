/* The C ABI's function types, checked in: each must still convert to exactly the pointer type
 * written here, so a changed parameter or return type fails the build (-Werror) even when the
 * symbol names of client/portbroker.sym stay the same. Add a line for every new function; never
 * change one that was released. */
#include <portbroker/portbroker.h>

unsigned (*const pb_abi_abi_version)(void) = portbroker_abi_version;
const char *(*const pb_abi_version)(void) = portbroker_version;
const char *(*const pb_abi_strerror)(int code) = portbroker_strerror;
int (*const pb_abi_connect)(const char *socket_path, portbroker_client **out) = portbroker_connect;
void (*const pb_abi_close)(portbroker_client *c) = portbroker_close;
const char *(*const pb_abi_last_error)(const portbroker_client *c) = portbroker_last_error;
int (*const pb_abi_session_fd)(const portbroker_client *c, int *fd_out) = portbroker_session_fd;
int (*const pb_abi_detach_session_fd)(portbroker_client *c,
                                      int *fd_out) = portbroker_detach_session_fd;
int (*const pb_abi_acquire)(portbroker_client *c, const char *spec, int *fd_out,
                            uint64_t *lease_id_out, uint16_t *port_out) = portbroker_acquire;
int (*const pb_abi_acquire_all)(portbroker_client *c, const char *const *specs, size_t count,
                                int *fds_out,
                                portbroker_lease_list **leases_out) = portbroker_acquire_all;
int (*const pb_abi_release)(portbroker_client *c, uint64_t lease_id) = portbroker_release;
int (*const pb_abi_list)(portbroker_client *c, portbroker_lease_list **out) = portbroker_list;
size_t (*const pb_abi_lease_list_count)(const portbroker_lease_list *l) =
    portbroker_lease_list_count;
const portbroker_lease *(*const pb_abi_lease_list_get)(const portbroker_lease_list *l,
                                                       size_t i) = portbroker_lease_list_get;
void (*const pb_abi_lease_list_free)(portbroker_lease_list *l) = portbroker_lease_list_free;
uint64_t (*const pb_abi_lease_id)(const portbroker_lease *l) = portbroker_lease_id;
const char *(*const pb_abi_lease_name)(const portbroker_lease *l) = portbroker_lease_name;
int (*const pb_abi_lease_protocol)(const portbroker_lease *l) = portbroker_lease_protocol;
const char *(*const pb_abi_lease_address)(const portbroker_lease *l) = portbroker_lease_address;
uint16_t (*const pb_abi_lease_port)(const portbroker_lease *l) = portbroker_lease_port;
int (*const pb_abi_lease_mode)(const portbroker_lease *l) = portbroker_lease_mode;
int32_t (*const pb_abi_lease_pid)(const portbroker_lease *l) = portbroker_lease_pid;
uint32_t (*const pb_abi_lease_uid)(const portbroker_lease *l) = portbroker_lease_uid;
uint32_t (*const pb_abi_lease_gid)(const portbroker_lease *l) = portbroker_lease_gid;
const char *(*const pb_abi_lease_comm)(const portbroker_lease *l) = portbroker_lease_comm;
const char *(*const pb_abi_lease_cgroup)(const portbroker_lease *l) = portbroker_lease_cgroup;
uint64_t (*const pb_abi_lease_session)(const portbroker_lease *l) = portbroker_lease_session;
int64_t (*const pb_abi_lease_created_at_ms)(const portbroker_lease *l) =
    portbroker_lease_created_at_ms;
const char *(*const pb_abi_lease_state)(const portbroker_lease *l) = portbroker_lease_state;
uint32_t (*const pb_abi_lease_linger_seconds)(const portbroker_lease *l) =
    portbroker_lease_linger_seconds;
int64_t (*const pb_abi_lease_linger_until_ms)(const portbroker_lease *l) =
    portbroker_lease_linger_until_ms;
const char *(*const pb_abi_lease_token)(const portbroker_lease *l) = portbroker_lease_token;
int (*const pb_abi_lease_no_copy)(const portbroker_lease *l) = portbroker_lease_no_copy;
int (*const pb_abi_status)(portbroker_client *c, portbroker_status_info **out) = portbroker_status;
const char *(*const pb_abi_status_version)(const portbroker_status_info *s) =
    portbroker_status_version;
int32_t (*const pb_abi_status_pid)(const portbroker_status_info *s) = portbroker_status_pid;
int64_t (*const pb_abi_status_started_at_ms)(const portbroker_status_info *s) =
    portbroker_status_started_at_ms;
uint32_t (*const pb_abi_status_sessions)(const portbroker_status_info *s) =
    portbroker_status_sessions;
uint32_t (*const pb_abi_status_leases)(const portbroker_status_info *s) = portbroker_status_leases;
uint16_t (*const pb_abi_status_pool_low)(const portbroker_status_info *s) =
    portbroker_status_pool_low;
uint16_t (*const pb_abi_status_pool_high)(const portbroker_status_info *s) =
    portbroker_status_pool_high;
uint32_t (*const pb_abi_status_open_fds)(const portbroker_status_info *s) =
    portbroker_status_open_fds;
const char *(*const pb_abi_status_socket_path)(const portbroker_status_info *s) =
    portbroker_status_socket_path;
void (*const pb_abi_status_info_free)(portbroker_status_info *s) = portbroker_status_info_free;
int (*const pb_abi_who)(portbroker_client *c, int protocol, uint16_t port,
                        portbroker_who_report **out) = portbroker_who;
int (*const pb_abi_who_protocol)(const portbroker_who_report *w) = portbroker_who_protocol;
uint16_t (*const pb_abi_who_port)(const portbroker_who_report *w) = portbroker_who_port;
const portbroker_lease_list *(*const pb_abi_who_leases)(const portbroker_who_report *w) =
    portbroker_who_leases;
size_t (*const pb_abi_who_outside_count)(const portbroker_who_report *w) =
    portbroker_who_outside_count;
const portbroker_outside_holder *(*const pb_abi_who_outside_get)(
    const portbroker_who_report *w, size_t i) = portbroker_who_outside_get;
const portbroker_reservation_list *(*const pb_abi_who_reservations)(
    const portbroker_who_report *w) = portbroker_who_reservations;
size_t (*const pb_abi_who_pool_count)(const portbroker_who_report *w) = portbroker_who_pool_count;
const char *(*const pb_abi_who_pool_get)(const portbroker_who_report *w,
                                         size_t i) = portbroker_who_pool_get;
int (*const pb_abi_who_in_ephemeral_range)(const portbroker_who_report *w) =
    portbroker_who_in_ephemeral_range;
int (*const pb_abi_who_guarded)(const portbroker_who_report *w) = portbroker_who_guarded;
int (*const pb_abi_who_held)(const portbroker_who_report *w) = portbroker_who_held;
void (*const pb_abi_who_report_free)(portbroker_who_report *w) = portbroker_who_report_free;
int (*const pb_abi_outside_protocol)(const portbroker_outside_holder *o) =
    portbroker_outside_protocol;
const char *(*const pb_abi_outside_address)(const portbroker_outside_holder *o) =
    portbroker_outside_address;
uint16_t (*const pb_abi_outside_port)(const portbroker_outside_holder *o) = portbroker_outside_port;
const char *(*const pb_abi_outside_state)(const portbroker_outside_holder *o) =
    portbroker_outside_state;
int32_t (*const pb_abi_outside_pid)(const portbroker_outside_holder *o) = portbroker_outside_pid;
uint32_t (*const pb_abi_outside_uid)(const portbroker_outside_holder *o) = portbroker_outside_uid;
const char *(*const pb_abi_outside_comm)(const portbroker_outside_holder *o) =
    portbroker_outside_comm;
int (*const pb_abi_check)(portbroker_client *c, portbroker_problem_list **out) = portbroker_check;
size_t (*const pb_abi_problem_list_count)(const portbroker_problem_list *p) =
    portbroker_problem_list_count;
const char *(*const pb_abi_problem_kind)(const portbroker_problem_list *p,
                                         size_t i) = portbroker_problem_kind;
const char *(*const pb_abi_problem_message)(const portbroker_problem_list *p,
                                            size_t i) = portbroker_problem_message;
void (*const pb_abi_problem_list_free)(portbroker_problem_list *p) = portbroker_problem_list_free;
int (*const pb_abi_metrics)(portbroker_client *c, char **text_out) = portbroker_metrics;
void (*const pb_abi_string_free)(char *s) = portbroker_string_free;
int (*const pb_abi_events)(portbroker_client *c, const uint64_t *since,
                           portbroker_event_stream **out) = portbroker_events;
int (*const pb_abi_event_stream_next)(portbroker_event_stream *s, int timeout_ms,
                                      portbroker_event **event_out) = portbroker_event_stream_next;
const char *(*const pb_abi_event_stream_last_error)(const portbroker_event_stream *s) =
    portbroker_event_stream_last_error;
int (*const pb_abi_event_stream_fd)(const portbroker_event_stream *s) = portbroker_event_stream_fd;
uint64_t (*const pb_abi_event_stream_subscribed_at)(const portbroker_event_stream *s) =
    portbroker_event_stream_subscribed_at;
uint64_t (*const pb_abi_event_stream_last_seq)(const portbroker_event_stream *s) =
    portbroker_event_stream_last_seq;
void (*const pb_abi_event_stream_close)(portbroker_event_stream *s) = portbroker_event_stream_close;
uint64_t (*const pb_abi_event_seq)(const portbroker_event *e) = portbroker_event_seq;
int64_t (*const pb_abi_event_time_ms)(const portbroker_event *e) = portbroker_event_time_ms;
const char *(*const pb_abi_event_kind)(const portbroker_event *e) = portbroker_event_kind;
uint64_t (*const pb_abi_event_lease)(const portbroker_event *e) = portbroker_event_lease;
const char *(*const pb_abi_event_name)(const portbroker_event *e) = portbroker_event_name;
const char *(*const pb_abi_event_endpoint)(const portbroker_event *e) = portbroker_event_endpoint;
uint16_t (*const pb_abi_event_port)(const portbroker_event *e) = portbroker_event_port;
const char *(*const pb_abi_event_mode)(const portbroker_event *e) = portbroker_event_mode;
int32_t (*const pb_abi_event_pid)(const portbroker_event *e) = portbroker_event_pid;
uint32_t (*const pb_abi_event_uid)(const portbroker_event *e) = portbroker_event_uid;
const char *(*const pb_abi_event_comm)(const portbroker_event *e) = portbroker_event_comm;
int (*const pb_abi_event_code)(const portbroker_event *e) = portbroker_event_code;
const char *(*const pb_abi_event_reason)(const portbroker_event *e) = portbroker_event_reason;
const char *(*const pb_abi_event_conflicts_with)(const portbroker_event *e) =
    portbroker_event_conflicts_with;
uint64_t (*const pb_abi_event_count)(const portbroker_event *e) = portbroker_event_count;
void (*const pb_abi_event_free)(portbroker_event *e) = portbroker_event_free;
int (*const pb_abi_reserve)(portbroker_client *c, const char *name, const char *target,
                            const char *const *users, size_t user_count, const char *const *groups,
                            size_t group_count, int hold) = portbroker_reserve;
int (*const pb_abi_unreserve)(portbroker_client *c, const char *name) = portbroker_unreserve;
int (*const pb_abi_reservations)(portbroker_client *c,
                                 portbroker_reservation_list **out) = portbroker_reservations;
size_t (*const pb_abi_reservation_list_count)(const portbroker_reservation_list *l) =
    portbroker_reservation_list_count;
const portbroker_reservation *(*const pb_abi_reservation_list_get)(
    const portbroker_reservation_list *l, size_t i) = portbroker_reservation_list_get;
void (*const pb_abi_reservation_list_free)(portbroker_reservation_list *l) =
    portbroker_reservation_list_free;
const char *(*const pb_abi_reservation_name)(const portbroker_reservation *r) =
    portbroker_reservation_name;
const char *(*const pb_abi_reservation_target)(const portbroker_reservation *r) =
    portbroker_reservation_target;
int (*const pb_abi_reservation_tcp)(const portbroker_reservation *r) = portbroker_reservation_tcp;
int (*const pb_abi_reservation_udp)(const portbroker_reservation *r) = portbroker_reservation_udp;
const char *(*const pb_abi_reservation_address)(const portbroker_reservation *r) =
    portbroker_reservation_address;
uint16_t (*const pb_abi_reservation_port_first)(const portbroker_reservation *r) =
    portbroker_reservation_port_first;
uint16_t (*const pb_abi_reservation_port_last)(const portbroker_reservation *r) =
    portbroker_reservation_port_last;
int (*const pb_abi_reservation_hold)(const portbroker_reservation *r) = portbroker_reservation_hold;
const char *(*const pb_abi_reservation_origin)(const portbroker_reservation *r) =
    portbroker_reservation_origin;
const char *(*const pb_abi_reservation_principals)(const portbroker_reservation *r) =
    portbroker_reservation_principals;
int (*const pb_abi_reload)(portbroker_client *c,
                           portbroker_reload_report **out) = portbroker_reload;
const char *(*const pb_abi_reload_source)(const portbroker_reload_report *r) =
    portbroker_reload_source;
size_t (*const pb_abi_reload_refused_count)(const portbroker_reload_report *r) =
    portbroker_reload_refused_count;
const char *(*const pb_abi_reload_refused_get)(const portbroker_reload_report *r,
                                               size_t i) = portbroker_reload_refused_get;
void (*const pb_abi_reload_report_free)(portbroker_reload_report *r) =
    portbroker_reload_report_free;
int (*const pb_abi_shutdown)(portbroker_client *c, int revoke_all) = portbroker_shutdown;
int (*const pb_abi_upgrade)(portbroker_client *c) = portbroker_upgrade;
