// The C ABI: a thin shell over portbroker::Client. Nothing may throw across it.
#include <new>
#include <string>
#include <string_view>
#include <utility>

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

}  // namespace

extern "C" {

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

int portbroker_acquire(portbroker_client* c, const char* spec, int* fd_out, uint64_t* lease_id_out,
                       uint16_t* port_out) {
  if (c == nullptr) return -PORTBROKER_EBADREQUEST;
  if (spec == nullptr || fd_out == nullptr || lease_id_out == nullptr || port_out == nullptr) {
    return fail(&c->last_error, ErrorCode::kBadRequest, "spec and every output must be non-NULL");
  }
  try {
    auto lease = c->client.acquire(std::string_view(spec));
    if (!lease) return fail(&c->last_error, lease.error());
    *lease_id_out = lease->id();
    *port_out = lease->port();
    *fd_out = lease->release_fd();
    c->last_error.clear();
    return 0;
  } catch (...) {
    return fail(&c->last_error, ErrorCode::kResourceExhausted, "out of memory");
  }
}

int portbroker_release(portbroker_client* c, uint64_t lease_id) {
  if (c == nullptr) return -PORTBROKER_EBADREQUEST;
  auto released = c->client.release(lease_id);
  if (!released) return fail(&c->last_error, released.error());
  c->last_error.clear();
  return 0;
}

const char* portbroker_last_error(const portbroker_client* c) {
  return c != nullptr ? c->last_error.c_str() : connect_error.c_str();
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
