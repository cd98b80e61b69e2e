// Harness, raw protocol: a SEQPACKET connection that speaks (and mis-speaks) the wire protocol
// without the client library.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "harness_files.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

namespace pbtest {

// A raw SEQPACKET connection to the daemon, for speaking (and mis-speaking) the wire protocol.
class RawConn {
 public:
  explicit RawConn(const std::string& path);  // REQUIREs connect
  int fd() const { return fd_.get(); }
  void close() { fd_.reset(); }

  // Sends one record as is (which may be empty), with optional SCM_RIGHTS fds. Returns errno or 0.
  int send_raw(const void* data, size_t len, const std::vector<int>& fds = {});
  int send_message(capnp::MessageBuilder& msg, const std::vector<int>& fds = {});

  enum class Got { kReply, kClosed, kTimeout, kError, kUnreadable };
  // Receives one record and parses it as a Reply.
  Got recv(std::chrono::milliseconds timeout = kDefaultTimeout);
  portbroker::wire::Reply::Reader reply() const;
  size_t received_fds() const { return buf_.fds.size(); }
  std::string describe_reply() const;  // for failure messages

 private:
  UniqueFd fd_;
  portbroker::ipc::RecvBuffer buf_;
  std::optional<capnp::FlatArrayMessageReader> reader_;
};

// Request builders for the raw protocol.
void build_status(capnp::MallocMessageBuilder& msg, uint32_t version);
void build_acquire(capnp::MallocMessageBuilder& msg, const std::vector<std::string>& specs);

}  // namespace pbtest
