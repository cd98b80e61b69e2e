// The C ABI: a thin shell over portbroker::Client. Nothing may throw across it.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "c_api_results.h"
#include "portbroker/client.hpp"
#include "portbroker/portbroker.h"

using portbroker::ErrorCode;

#define PB_SAME_CODE(macro, code) \
  static_assert((macro) == static_cast<int>(ErrorCode::code), #macro " must mirror " #code)
PB_SAME_CODE(PORTBROKER_EBADREQUEST, kBadRequest);
PB_SAME_CODE(PORTBROKER_EUNSUPPORTEDVERSION, kUnsupportedVersion);
PB_SAME_CODE(PORTBROKER_EUNKNOWNREQUEST, kUnknownRequest);
PB_SAME_CODE(PORTBROKER_EPERMISSIONDENIED, kPermissionDenied);
PB_SAME_CODE(PORTBROKER_ECONFLICT, kConflict);
PB_SAME_CODE(PORTBROKER_EINUSEOUTSIDE, kInUseOutside);
PB_SAME_CODE(PORTBROKER_ENOTFOUND, kNotFound);
PB_SAME_CODE(PORTBROKER_ELIMITEXCEEDED, kLimitExceeded);
PB_SAME_CODE(PORTBROKER_ERESOURCEEXHAUSTED, kResourceExhausted);
PB_SAME_CODE(PORTBROKER_ENOFREEPORT, kNoFreePort);
PB_SAME_CODE(PORTBROKER_EADDRESSUNAVAILABLE, kAddressUnavailable);
PB_SAME_CODE(PORTBROKER_EINVALIDOPTION, kInvalidOption);
PB_SAME_CODE(PORTBROKER_ECONNECTIONFAILED, kConnectionFailed);
PB_SAME_CODE(PORTBROKER_EPROTOCOLERROR, kProtocolError);
PB_SAME_CODE(PORTBROKER_EINTERNAL, kInternal);
#undef PB_SAME_CODE

struct portbroker_client {
  explicit portbroker_client(portbroker::Client c) : client(std::move(c)) {}
  portbroker::Client client;
  std::string last_error;
};

namespace {

// portbroker_connect has no client to hold its error, so it is kept per thread.
thread_local std::string connect_error;

int fail(std::string* where, const portbroker::Error& e) noexcept {
  try {
    *where = e.message;
  } catch (...) {
    where->clear();  // out of memory: the code alone must do
  }
  int code = static_cast<int>(e.code);
  return code == 0 ? -PORTBROKER_EINTERNAL : -code;
}

int fail(std::string* where, ErrorCode code, const char* message) noexcept {
  try {
    *where = message;
  } catch (...) {
    where->clear();
  }
  return -static_cast<int>(code);
}

portbroker::Error bad_request(std::string message) {
  return portbroker::make_error(ErrorCode::kBadRequest, std::move(message));
}

// Runs one request on `c`: `fn` returns Result<void> and writes the caller's outputs only once
// nothing can fail any more, so a failure leaves them untouched. Nothing thrown gets out.
template <typename Fn>
int run(portbroker_client* c, Fn&& fn) noexcept {
  if (c == nullptr) return -PORTBROKER_EBADREQUEST;
  try {
    portbroker::Result<void> done = fn();
    if (!done) return fail(&c->last_error, done.error());
    c->last_error.clear();
    return 0;
  } catch (...) {
    return fail(&c->last_error, ErrorCode::kResourceExhausted, "out of memory");
  }
}

// A request whose reply becomes a result object: `get` returns Result<X>, and `*out` a new
// Obj made from the X.
template <typename Obj, typename Get>
int fetch(portbroker_client* c, Obj** out, Get&& get) noexcept {
  return run(c, [&]() -> portbroker::Result<void> {
    if (out == nullptr) return bad_request("out is NULL");
    auto got = get();
    if (!got) return got.error();
    *out = new Obj{std::move(got).value()};
    return {};
  });
}

// `count` C strings as a vector; NULL is allowed only for an empty array.
portbroker::Result<std::vector<std::string>> strings(const char* what, const char* const* array,
                                                     size_t count) {
  if (array == nullptr && count != 0) return bad_request(std::string(what) + " is NULL");
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) {
    if (array[i] == nullptr) {
      return bad_request(std::string(what) + "[" + std::to_string(i) + "] is NULL");
    }
    out.emplace_back(array[i]);
  }
  return out;
}

portbroker::Result<std::vector<portbroker::SocketSpec>> parse_specs(const char* const* texts,
                                                                    size_t count) {
  auto raw = strings("specs", texts, count);
  if (!raw) return raw.error();
  std::vector<portbroker::SocketSpec> specs;
  for (const auto& text : *raw) {
    auto spec = portbroker::parse_socket_spec(text);
    if (!spec) return spec.error();
    specs.push_back(std::move(spec).value());
  }
  return specs;
}

}  // namespace

extern "C" {

unsigned portbroker_abi_version(void) { return PORTBROKER_ABI_VERSION; }

const char* portbroker_version(void) { return PORTBROKER_VERSION; }

int portbroker_connect(const char* socket_path, portbroker_client** out) {
  if (out == nullptr) return fail(&connect_error, ErrorCode::kBadRequest, "out is NULL");
  try {
    auto client = portbroker::Client::connect(socket_path != nullptr ? socket_path : "");
    if (!client) return fail(&connect_error, client.error());
    auto* c = new (std::nothrow) portbroker_client(std::move(client).value());
    if (c == nullptr) return fail(&connect_error, ErrorCode::kResourceExhausted, "out of memory");
    connect_error.clear();
    *out = c;
    return 0;
  } catch (...) {
    return fail(&connect_error, ErrorCode::kResourceExhausted, "out of memory");
  }
}

const char* portbroker_last_error(const portbroker_client* c) {
  return c != nullptr ? c->last_error.c_str() : connect_error.c_str();
}

int portbroker_session_fd(const portbroker_client* c, int* fd_out) {
  return run(const_cast<portbroker_client*>(c), [&]() -> portbroker::Result<void> {
    if (fd_out == nullptr) return bad_request("fd_out is NULL");
    int fd = c->client.session_fd();
    if (fd < 0) {
      return portbroker::make_error(ErrorCode::kConnectionFailed,
                                    "the client has no connection (detached or lost)");
    }
    *fd_out = fd;
    return {};
  });
}

int portbroker_detach_session_fd(portbroker_client* c, int* fd_out) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (fd_out == nullptr) return bad_request("fd_out is NULL");
    if (c->client.session_fd() < 0) {
      return portbroker::make_error(ErrorCode::kConnectionFailed,
                                    "the client has no connection (detached or lost)");
    }
    *fd_out = c->client.detach_session_fd();
    return {};
  });
}

int portbroker_acquire(portbroker_client* c, const char* spec, int* fd_out, uint64_t* lease_id_out,
                       uint16_t* port_out) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (spec == nullptr || fd_out == nullptr || lease_id_out == nullptr || port_out == nullptr) {
      return bad_request("spec and every output must be non-NULL");
    }
    auto lease = c->client.acquire(std::string_view(spec));
    if (!lease) return lease.error();
    *lease_id_out = lease->id();
    *port_out = lease->port();
    *fd_out = lease->release_fd();
    return {};
  });
}

int portbroker_acquire_all(portbroker_client* c, const char* const* specs, size_t count,
                           int* fds_out, portbroker_lease_list** leases_out) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (fds_out == nullptr) return bad_request("fds_out is NULL");
    auto parsed = parse_specs(specs, count);
    if (!parsed) return parsed.error();
    auto leases = c->client.acquire_all(*parsed);
    if (!leases) return leases.error();
    // Everything that may throw comes first: until the fds are handed out, the Lease objects
    // release what was granted.
    std::unique_ptr<portbroker_lease_list> list;
    if (leases_out != nullptr) {
      std::vector<portbroker::LeaseInfo> infos;
      for (const auto& l : *leases) infos.push_back(l.info());
      list = std::make_unique<portbroker_lease_list>(std::move(infos));
    }
    for (size_t i = 0; i < leases->size(); ++i) fds_out[i] = (*leases)[i].release_fd();
    if (leases_out != nullptr) *leases_out = list.release();
    return {};
  });
}

int portbroker_release(portbroker_client* c, uint64_t lease_id) {
  return run(c, [&] { return c->client.release(lease_id); });
}

int portbroker_list(portbroker_client* c, portbroker_lease_list** out) {
  return fetch(c, out, [&] { return c->client.list(); });
}

int portbroker_status(portbroker_client* c, portbroker_status_info** out) {
  return fetch(c, out, [&] { return c->client.status(); });
}

int portbroker_who(portbroker_client* c, int protocol, uint16_t port, portbroker_who_report** out) {
  return fetch(c, out, [&]() -> portbroker::Result<portbroker::WhoReport> {
    if (protocol != PORTBROKER_TCP && protocol != PORTBROKER_UDP) {
      return bad_request("protocol must be PORTBROKER_TCP or PORTBROKER_UDP, not " +
                         std::to_string(protocol));
    }
    return c->client.who(static_cast<portbroker::Protocol>(protocol), port);
  });
}

int portbroker_check(portbroker_client* c, portbroker_problem_list** out) {
  return fetch(c, out, [&] { return c->client.check(); });
}

int portbroker_metrics(portbroker_client* c, char** text_out) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (text_out == nullptr) return bad_request("text_out is NULL");
    auto text = c->client.metrics();
    if (!text) return text.error();
    char* copy = ::strdup(text->c_str());
    if (copy == nullptr) throw std::bad_alloc();
    *text_out = copy;
    return {};
  });
}

void portbroker_string_free(char* s) { ::free(s); }

int portbroker_events(portbroker_client* c, const uint64_t* since, portbroker_event_stream** out) {
  return fetch(c, out, [&] {
    return c->client.events(since != nullptr ? std::optional<uint64_t>(*since) : std::nullopt);
  });
}

int portbroker_event_stream_next(portbroker_event_stream* s, int timeout_ms,
                                 portbroker_event** event_out) {
  if (s == nullptr) return -PORTBROKER_EBADREQUEST;
  if (event_out == nullptr)
    return fail(&s->last_error, ErrorCode::kBadRequest, "event_out is NULL");
  try {
    auto next = s->stream.next(timeout_ms);
    if (!next) return fail(&s->last_error, next.error());
    auto event = next->has_value()
                     ? std::make_unique<portbroker_event>(portbroker_event{std::move(**next)})
                     : nullptr;
    s->last_error.clear();
    *event_out = event.release();
    return 0;
  } catch (...) {
    return fail(&s->last_error, ErrorCode::kResourceExhausted, "out of memory");
  }
}

int portbroker_reserve(portbroker_client* c, const char* name, const char* target,
                       const char* const* users, size_t user_count, const char* const* groups,
                       size_t group_count, int hold) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (name == nullptr || target == nullptr)
      return bad_request("name and target must be non-NULL");
    auto user_names = strings("users", users, user_count);
    if (!user_names) return user_names.error();
    auto group_names = strings("groups", groups, group_count);
    if (!group_names) return group_names.error();
    return c->client.reserve(name, target, *user_names, *group_names, hold != 0);
  });
}

int portbroker_unreserve(portbroker_client* c, const char* name) {
  return run(c, [&]() -> portbroker::Result<void> {
    if (name == nullptr) return bad_request("name is NULL");
    return c->client.unreserve(name);
  });
}

int portbroker_reservations(portbroker_client* c, portbroker_reservation_list** out) {
  return fetch(c, out, [&] { return c->client.reservations(); });
}

int portbroker_reload(portbroker_client* c, portbroker_reload_report** out) {
  return fetch(c, out, [&] { return c->client.reload(); });
}

int portbroker_shutdown(portbroker_client* c, int revoke_all) {
  return run(c, [&] { return c->client.shutdown(revoke_all != 0); });
}

int portbroker_upgrade(portbroker_client* c) {
  return run(c, [&] { return c->client.upgrade(); });
}

const char* portbroker_strerror(int code) {
  if (code < 0) code = -code;
  if (code == 0) return "success";
  if (code > static_cast<int>(ErrorCode::kInternal)) return "unknown portbroker error";
  switch (static_cast<ErrorCode>(code)) {
    case ErrorCode::kOk:
      return "success";
    case ErrorCode::kBadRequest:
      return "malformed or inconsistent request";
    case ErrorCode::kUnsupportedVersion:
      return "protocol version not supported by the daemon";
    case ErrorCode::kUnknownRequest:
      return "request kind not known to the daemon";
    case ErrorCode::kPermissionDenied:
      return "refused by policy";
    case ErrorCode::kConflict:
      return "port leased by someone else";
    case ErrorCode::kInUseOutside:
      return "port in use by a process outside the broker";
    case ErrorCode::kNotFound:
      return "no such lease";
    case ErrorCode::kLimitExceeded:
      return "per-client limit exceeded";
    case ErrorCode::kResourceExhausted:
      return "out of resources";
    case ErrorCode::kNoFreePort:
      return "no free port in the dynamic pool";
    case ErrorCode::kAddressUnavailable:
      return "address not available";
    case ErrorCode::kInvalidOption:
      return "invalid socket option";
    case ErrorCode::kConnectionFailed:
      return "cannot reach portbrokerd";
    case ErrorCode::kProtocolError:
      return "unreadable reply from portbrokerd";
    case ErrorCode::kInternal:
      return "internal error";
  }
  return "unknown portbroker error";
}

void portbroker_close(portbroker_client* c) { delete c; }

}  // extern "C"
