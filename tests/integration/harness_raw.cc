#include "harness_raw.h"

#include <doctest/doctest.h>
#include <poll.h>

#include <cerrno>
#include <utility>

#include "ipc/wire.h"
#include "portbroker/spec.hpp"

namespace pbtest {

RawConn::RawConn(const std::string& path) {
  auto fd = portbroker::ipc::connect_to(path);
  REQUIRE_MESSAGE(fd.ok(), "raw connect: " << fd.error().message);
  fd_ = std::move(fd).value();
}

int RawConn::send_raw(const void* data, size_t len, const std::vector<int>& fds) {
  return portbroker::ipc::send_bytes(fd_.get(), data, len, fds, false);
}

int RawConn::send_message(capnp::MessageBuilder& msg, const std::vector<int>& fds) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  return send_raw(words.begin(), words.size() * sizeof(capnp::word), fds);
}

RawConn::Got RawConn::recv(std::chrono::milliseconds timeout) {
  reader_.reset();
  if (!wait_fd(fd_.get(), POLLIN, Clock::now() + timeout)) return Got::kTimeout;
  auto st = portbroker::ipc::recv_record(fd_.get(), buf_, /*accept_fds=*/true, /*dont_wait=*/true);
  switch (st) {
    case portbroker::ipc::RecvStatus::kRecord:
      break;
    case portbroker::ipc::RecvStatus::kEof:
      return Got::kClosed;
    case portbroker::ipc::RecvStatus::kError:
      return buf_.error == ECONNRESET ? Got::kClosed : Got::kError;
    case portbroker::ipc::RecvStatus::kWouldBlock:
      return Got::kTimeout;
    default:
      return Got::kUnreadable;
  }
  try {
    reader_.emplace(buf_.record(), portbroker::ipc::reader_options());
    (void)reader_->getRoot<portbroker::wire::Reply>().which();
  } catch (const kj::Exception& e) {
    reader_.reset();
    return Got::kUnreadable;
  }
  return Got::kReply;
}

portbroker::wire::Reply::Reader RawConn::reply() const {
  REQUIRE(reader_.has_value());
  return const_cast<capnp::FlatArrayMessageReader&>(*reader_).getRoot<portbroker::wire::Reply>();
}

std::string RawConn::describe_reply() const {
  if (!reader_) return "(no reply)";
  auto r = reply();
  switch (r.which()) {
    case portbroker::wire::Reply::ERROR:
      return "error code " + std::to_string(static_cast<int>(r.getError().getCode())) + ": " +
             std::string(r.getError().getMessage().cStr());
    case portbroker::wire::Reply::ACQUIRED:
      return "acquired " + std::to_string(r.getAcquired().size()) + " socket(s)";
    case portbroker::wire::Reply::RELEASED:
      return "released";
    case portbroker::wire::Reply::LEASES:
      return "leases (" + std::to_string(r.getLeases().size()) + ")";
    case portbroker::wire::Reply::STATUS:
      return "status";
    default:
      break;
  }
  return "reply of unknown kind " + std::to_string(static_cast<int>(r.which()));
}

void build_status(capnp::MallocMessageBuilder& msg, uint32_t version) {
  auto req = msg.initRoot<portbroker::wire::Request>();
  req.setVersion(version);
  req.setStatus();
}

void build_acquire(capnp::MallocMessageBuilder& msg, const std::vector<std::string>& specs) {
  auto req = msg.initRoot<portbroker::wire::Request>();
  req.setVersion(portbroker::wire::PROTOCOL_VERSION);
  auto list = req.initAcquire(static_cast<unsigned>(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i) {
    auto spec = portbroker::parse_socket_spec(specs[i]);
    REQUIRE_MESSAGE(spec.ok(), spec.error().message);
    portbroker::ipc::spec_to_wire(spec.value(), list[static_cast<unsigned>(i)]);
  }
}

}  // namespace pbtest
