// Records on the control socket: one Cap'n Proto message per SOCK_SEQPACKET record, with
// granted sockets riding along as SCM_RIGHTS on the reply that grants them.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::ipc {

// The largest record either side accepts. A request for 64 sockets with every option is a
// few KiB; anything bigger is refused (MSG_TRUNC) rather than reassembled.
inline constexpr size_t kMaxRecordBytes = 64 * 1024;
inline constexpr size_t kMaxRecordWords = kMaxRecordBytes / sizeof(capnp::word);
// The most sockets one acquire may ask for (and so the most fds on one record).
inline constexpr size_t kMaxSocketsPerRequest = 64;

// Tight limits: a hostile record cannot make the reader walk more than a few times its size
// or recurse deeply.
capnp::ReaderOptions reader_options();

// Creates a SOCK_SEQPACKET|SOCK_CLOEXEC Unix socket (optionally non-blocking).
Result<UniqueFd> make_seqpacket_socket(bool nonblocking);

// Connects a fresh blocking socket to `path`.
Result<UniqueFd> connect_to(const std::string& path);

// Sends `len` bytes as one record with `fds` attached (MSG_NOSIGNAL; MSG_DONTWAIT with
// `dont_wait`). Returns 0 or the errno. No checks: tests use it to send malformed records.
int send_bytes(int sock, const void* data, size_t len, std::span<const int> fds, bool dont_wait);

// `message` in record form (Cap'n Proto's flat array: segment table, then segments), written
// into `scratch` when it fits (no allocation: a request or reply is a few hundred bytes),
// else into `heap`. The result views one of the two.
kj::ArrayPtr<const capnp::word> flatten(capnp::MessageBuilder& message,
                                        kj::ArrayPtr<capnp::word> scratch,
                                        kj::Array<capnp::word>& heap);

// Words of stack a sender may give flatten() as scratch.
inline constexpr size_t kFlattenScratchWords = 256;

// Sends one already-serialized record (see send_message).
Result<void> send_record(int sock, kj::ArrayPtr<const capnp::word> words,
                         std::span<const int> fds = {}, bool dont_wait = false,
                         int* saved_errno = nullptr);

// Serializes `message` into one record and sends it with `fds` attached. MSG_NOSIGNAL always;
// with `dont_wait` a full socket buffer yields kResourceExhausted with errno EAGAIN in
// `*saved_errno` instead of blocking.
Result<void> send_message(int sock, capnp::MessageBuilder& message, std::span<const int> fds = {},
                          bool dont_wait = false, int* saved_errno = nullptr);

enum class RecvStatus {
  kRecord,      // one whole record is in the buffer
  kEof,         // the peer closed the connection (or sent an empty record)
  kWouldBlock,  // non-blocking socket, nothing to read
  kTruncated,   // the record was larger than kMaxRecordBytes; it has been discarded
  kBadFds,      // the record carried fds and this side accepts none; they were discarded
  kMisaligned,  // the record length is not a whole number of words
  kError,       // recvmsg failed; errno in `error`
};

// A word-aligned receive buffer and what the last record carried.
struct RecvBuffer {
  std::vector<capnp::word> words = std::vector<capnp::word>(kMaxRecordWords + 1);
  size_t bytes = 0;
  std::vector<UniqueFd> fds;
  int error = 0;

  kj::ArrayPtr<const capnp::word> record() const {
    return kj::arrayPtr(words.data(), bytes / sizeof(capnp::word));
  }
};

// Reads one record. With `accept_fds` false (the daemon) the record is read with no control
// buffer, so the kernel discards any fds it carried, and such a record is reported kBadFds.
// Received fds are MSG_CMSG_CLOEXEC.
RecvStatus recv_record(int sock, RecvBuffer& buf, bool accept_fds, bool dont_wait);

}  // namespace portbroker::ipc
