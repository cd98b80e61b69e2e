// Errors as values: every expected failure in portbroker is a Result, never an exception.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace portbroker {

// Stable error codes. They travel on the wire (ipc/portbroker.capnp mirrors them) and are
// returned negated by the C ABI, so their numbers never change once released.
enum class ErrorCode : uint16_t {
  kOk = 0,
  kBadRequest = 1,           // malformed or inconsistent request
  kUnsupportedVersion = 2,   // protocol version the daemon does not speak
  kUnknownRequest = 3,       // request kind the daemon does not know
  kPermissionDenied = 4,     // policy refused
  kConflict = 5,             // port leased by someone else through the broker
  kInUseOutside = 6,         // port held by a process outside the broker
  kNotFound = 7,             // no such lease / reservation
  kLimitExceeded = 8,        // a per-client limit was hit
  kResourceExhausted = 9,    // out of fds or memory in the daemon
  kNoFreePort = 10,          // the dynamic pool has no free port
  kAddressUnavailable = 11,  // address not local / device missing (EADDRNOTAVAIL, ENODEV)
  kInvalidOption = 12,       // unknown or invalid socket option
  kConnectionFailed = 13,    // client side: could not reach the daemon
  kProtocolError = 14,       // client side: daemon sent something unreadable
  kInternal = 15,
};

const char* error_code_name(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error)
      : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

inline Error make_error(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

// "WHAT: <strerror(err)>", the one spelling of a failed system call in every message.
Error errno_error(ErrorCode code, const std::string& what, int err);

}  // namespace portbroker
