#include "portbroker/result.hpp"

#include <cstring>

namespace portbroker {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk:
      return "ok";
    case ErrorCode::kBadRequest:
      return "bad-request";
    case ErrorCode::kUnsupportedVersion:
      return "unsupported-version";
    case ErrorCode::kUnknownRequest:
      return "unknown-request";
    case ErrorCode::kPermissionDenied:
      return "permission-denied";
    case ErrorCode::kConflict:
      return "conflict";
    case ErrorCode::kInUseOutside:
      return "in-use-outside";
    case ErrorCode::kNotFound:
      return "not-found";
    case ErrorCode::kLimitExceeded:
      return "limit-exceeded";
    case ErrorCode::kResourceExhausted:
      return "resource-exhausted";
    case ErrorCode::kNoFreePort:
      return "no-free-port";
    case ErrorCode::kAddressUnavailable:
      return "address-unavailable";
    case ErrorCode::kInvalidOption:
      return "invalid-option";
    case ErrorCode::kConnectionFailed:
      return "connection-failed";
    case ErrorCode::kProtocolError:
      return "protocol-error";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

Error errno_error(ErrorCode code, const std::string& what, int err) {
  return Error{code, what + ": " + std::strerror(err)};
}

}  // namespace portbroker
