#include "ipc/framing.h"

#include <kj/io.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

namespace portbroker::ipc {

capnp::ReaderOptions reader_options() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 4 * kMaxRecordWords;
  options.nestingLimit = 16;
  return options;
}

Result<UniqueFd> make_seqpacket_socket(bool nonblocking) {
  int flags = SOCK_SEQPACKET | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  UniqueFd fd(::socket(AF_UNIX, flags, 0));
  if (!fd) {
    return make_error(ErrorCode::kResourceExhausted,
                      std::string("cannot create a Unix socket: ") + std::strerror(errno));
  }
  return fd;
}

Result<UniqueFd> connect_to(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return make_error(ErrorCode::kConnectionFailed,
                      "socket path '" + path + "' is empty or longer than " +
                          std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  auto fd = make_seqpacket_socket(false);
  if (!fd) return fd.error();
  int rc;
  do {
    rc = ::connect(fd->get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int e = errno;
    std::string hint = (e == ENOENT || e == ECONNREFUSED) ? " (is portbrokerd running?)" : "";
    return make_error(ErrorCode::kConnectionFailed,
                      "cannot connect to portbrokerd at " + path + ": " + std::strerror(e) + hint);
  }
  return std::move(fd).value();
}

kj::ArrayPtr<const capnp::word> flatten(capnp::MessageBuilder& message,
                                        kj::ArrayPtr<capnp::word> scratch,
                                        kj::Array<capnp::word>& heap) {
  auto segments = message.getSegmentsForOutput();
  const size_t words = capnp::computeSerializedSizeInWords(segments);
  if (words > scratch.size()) {
    heap = capnp::messageToFlatArray(segments);
    return heap;
  }
  kj::ArrayOutputStream out(scratch.asBytes());
  capnp::writeMessage(out, segments);
  return scratch.slice(0, words);
}

Result<void> send_message(int sock, capnp::MessageBuilder& message, std::span<const int> fds,
                          bool dont_wait, int* saved_errno) {
  capnp::word scratch[kFlattenScratchWords];
  kj::Array<capnp::word> heap;
  return send_record(sock, flatten(message, scratch, heap), fds, dont_wait, saved_errno);
}

Result<void> send_record(int sock, kj::ArrayPtr<const capnp::word> data, std::span<const int> fds,
                         bool dont_wait, int* saved_errno) {
  if (data.size() > kMaxRecordWords) {
    return make_error(ErrorCode::kBadRequest, "message of " + std::to_string(data.size() * 8) +
                                                  " bytes exceeds the record limit of " +
                                                  std::to_string(kMaxRecordBytes));
  }
  int e = send_bytes(sock, data.begin(), data.size() * sizeof(capnp::word), fds, dont_wait);
  if (e == 0) return {};
  if (saved_errno) *saved_errno = e;
  return make_error(ErrorCode::kConnectionFailed,
                    std::string("cannot send to peer: ") + std::strerror(e));
}

int send_bytes(int sock, const void* data, size_t len, std::span<const int> fds, bool dont_wait) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // Room on the stack for the most fds a record may carry; more (only tests send more) on the
  // heap.
  alignas(cmsghdr) char stack_control[CMSG_SPACE(sizeof(int) * kMaxSocketsPerRequest)];
  std::vector<char> heap_control;
  if (!fds.empty()) {
    const size_t space = CMSG_SPACE(sizeof(int) * fds.size());
    char* control = stack_control;
    if (space > sizeof(stack_control)) {
      heap_control.resize(space);
      control = heap_control.data();
    }
    std::memset(control, 0, space);
    msg.msg_control = control;
    msg.msg_controllen = space;
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
  }
  int flags = MSG_NOSIGNAL | (dont_wait ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, flags);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? errno : 0;
}

RecvStatus recv_record(int sock, RecvBuffer& buf, bool accept_fds, bool dont_wait) {
  buf.bytes = 0;
  buf.fds.clear();
  buf.error = 0;
  iovec iov{buf.words.data(), buf.words.size() * sizeof(capnp::word)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxSocketsPerRequest)];
  if (accept_fds) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  int flags = MSG_CMSG_CLOEXEC | (dont_wait ? MSG_DONTWAIT : 0);
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    buf.error = errno;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RecvStatus::kWouldBlock;
    return RecvStatus::kError;
  }
  if (accept_fds) {
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
        buf.fds.emplace_back(fd);
      }
    }
  }
  if (msg.msg_flags & MSG_TRUNC) return RecvStatus::kTruncated;
  if (!accept_fds && (msg.msg_flags & MSG_CTRUNC)) return RecvStatus::kBadFds;
  if (msg.msg_flags & MSG_CTRUNC) return RecvStatus::kTruncated;
  if (n == 0) return RecvStatus::kEof;
  if (static_cast<size_t>(n) > kMaxRecordBytes) return RecvStatus::kTruncated;
  if (n % sizeof(capnp::word) != 0) return RecvStatus::kMisaligned;
  buf.bytes = static_cast<size_t>(n);
  return RecvStatus::kRecord;
}

}  // namespace portbroker::ipc
