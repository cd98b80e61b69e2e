// Framing (ipc/framing.h) over a real SOCK_SEQPACKET socketpair: what each side sees for
// records of every bad shape, and that no fd ever leaks on the way.
#include "ipc/framing.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ipc/portbroker.capnp.h"

namespace portbroker {
namespace {

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    ++n;
  }
  return n;
}

struct Pair {
  UniqueFd a, b;
};

Pair seqpacket_pair() {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  return Pair{UniqueFd(sv[0]), UniqueFd(sv[1])};
}

struct Pipe {
  UniqueFd read, write;
};

Pipe make_pipe() {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  return Pipe{UniqueFd(p[0]), UniqueFd(p[1])};
}

kj::Array<capnp::word> status_record(const std::string& socket_path) {
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::Reply>().initStatus().setSocketPath(socket_path);
  return capnp::messageToFlatArray(message);
}

std::string socket_path_of(const ipc::RecvBuffer& buf) {
  capnp::FlatArrayMessageReader reader(buf.record(), ipc::reader_options());
  auto path = reader.getRoot<wire::Reply>().getStatus().getSocketPath();
  return std::string(path.cStr(), path.size());
}

ipc::RecvStatus recv(int sock, ipc::RecvBuffer& buf, bool accept_fds) {
  return ipc::recv_record(sock, buf, accept_fds, /*dont_wait=*/true);
}

TEST_CASE("a message goes over as one record and reads back whole") {
  Pair p = seqpacket_pair();
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::Reply>().initStatus().setSocketPath("/run/x.sock");
  REQUIRE(ipc::send_message(p.a.get(), message));
  ipc::RecvBuffer buf;
  REQUIRE(recv(p.b.get(), buf, false) == ipc::RecvStatus::kRecord);
  CHECK(buf.fds.empty());
  CHECK(socket_path_of(buf) == "/run/x.sock");
  CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kWouldBlock);
}

TEST_CASE("flatten writes capnp's flat array: into the scratch when it fits, else the heap") {
  // One segment or several (a first segment too small for the text): each way, the bytes
  // messageToFlatArray gives, and the same record over the socket.
  for (unsigned first_words : {1024u, 2u}) {
    for (size_t path_bytes : {size_t{10}, size_t{3000}}) {
      CAPTURE(first_words);
      CAPTURE(path_bytes);
      capnp::MallocMessageBuilder message(first_words, capnp::AllocationStrategy::FIXED_SIZE);
      const std::string path(path_bytes, 'p');
      message.initRoot<wire::Reply>().initStatus().setSocketPath(path);
      kj::Array<capnp::word> want = capnp::messageToFlatArray(message);
      capnp::word scratch[ipc::kFlattenScratchWords];
      kj::Array<capnp::word> heap;
      kj::ArrayPtr<const capnp::word> got = ipc::flatten(message, scratch, heap);
      const bool fits = want.size() <= ipc::kFlattenScratchWords;
      CHECK((got.begin() == scratch) == fits);
      CHECK((heap == nullptr) == fits);
      REQUIRE(got.size() == want.size());
      CHECK(std::memcmp(got.begin(), want.begin(), want.asBytes().size()) == 0);

      Pair p = seqpacket_pair();
      REQUIRE(ipc::send_message(p.a.get(), message));
      ipc::RecvBuffer buf;
      REQUIRE(recv(p.b.get(), buf, false) == ipc::RecvStatus::kRecord);
      CHECK(socket_path_of(buf) == path);
    }
  }
}

TEST_CASE("an oversize record is refused and the next one still reads") {
  Pair p = seqpacket_pair();
  ipc::RecvBuffer buf;
  // Just over the limit fits the buffer's spare word; far over it is cut off by the kernel
  // (MSG_TRUNC). Both are refused.
  for (size_t extra : {sizeof(capnp::word), size_t{4096}}) {
    CAPTURE(extra);
    std::vector<char> big(ipc::kMaxRecordBytes + extra);
    REQUIRE(ipc::send_bytes(p.a.get(), big.data(), big.size(), {}, false) == 0);
    CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kTruncated);
    CHECK(buf.bytes == 0);
  }
  auto small = status_record("/after");
  REQUIRE(ipc::send_record(p.a.get(), small));
  REQUIRE(recv(p.b.get(), buf, false) == ipc::RecvStatus::kRecord);
  CHECK(socket_path_of(buf) == "/after");
}

TEST_CASE("the sender refuses a record over the limit and sends nothing") {
  Pair p = seqpacket_pair();
  std::vector<capnp::word> words(ipc::kMaxRecordWords + 1);
  int err = 0;
  auto sent =
      ipc::send_record(p.a.get(), kj::arrayPtr(words.data(), words.size()), {}, false, &err);
  REQUIRE_FALSE(sent);
  CHECK(sent.error().code == ErrorCode::kBadRequest);
  ipc::RecvBuffer buf;
  CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kWouldBlock);
}

TEST_CASE("a record that is not a whole number of words is misaligned") {
  Pair p = seqpacket_pair();
  char bytes[12] = {};
  REQUIRE(ipc::send_bytes(p.a.get(), bytes, sizeof(bytes), {}, false) == 0);
  ipc::RecvBuffer buf;
  CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kMisaligned);
  CHECK(buf.bytes == 0);
}

TEST_CASE("a truncated message frames as a record but the reader refuses it") {
  Pair p = seqpacket_pair();
  auto whole = status_record(std::string(200, 'x'));
  REQUIRE(whole.size() > 4);
  REQUIRE(ipc::send_record(p.a.get(), kj::arrayPtr(whole.begin(), whole.size() / 2)));
  ipc::RecvBuffer buf;
  REQUIRE(recv(p.b.get(), buf, false) == ipc::RecvStatus::kRecord);
  CHECK_THROWS_AS(socket_path_of(buf), kj::Exception);
}

TEST_CASE("an empty record reads as the end of the connection") {
  Pair p = seqpacket_pair();
  REQUIRE(ipc::send_bytes(p.a.get(), nullptr, 0, {}, false) == 0);
  ipc::RecvBuffer buf;
  CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kEof);
  p.a.reset();
  CHECK(recv(p.b.get(), buf, false) == ipc::RecvStatus::kEof);
}

// A socketpair with one record waiting that carries both ends of a pipe, and `more` further
// copies of its write end.
struct FdsInFlight {
  Pair p = seqpacket_pair();
  Pipe pipe = make_pipe();
  const size_t open_before = open_fds();  // before anything is received

  FdsInFlight(const std::string& socket_path, size_t more) {
    std::vector<int> fds = {pipe.read.get(), pipe.write.get()};
    fds.insert(fds.end(), more, pipe.write.get());
    auto record = status_record(socket_path);
    REQUIRE(ipc::send_record(p.a.get(), record, fds));
  }
};

TEST_CASE("fds on a record to a side that accepts none: refused, and none installed") {
  FdsInFlight f("/fds", 0);
  ipc::RecvBuffer buf;
  CHECK(recv(f.p.b.get(), buf, false) == ipc::RecvStatus::kBadFds);
  CHECK(buf.fds.empty());
  CHECK(open_fds() == f.open_before);
}

TEST_CASE("fds ride along when accepted: the same files, close-on-exec") {
  FdsInFlight f("/granted", 0);
  {
    ipc::RecvBuffer buf;
    REQUIRE(recv(f.p.b.get(), buf, true) == ipc::RecvStatus::kRecord);
    CHECK(socket_path_of(buf) == "/granted");
    REQUIRE(buf.fds.size() == 2);
    for (const UniqueFd& fd : buf.fds) CHECK((::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(open_fds() == f.open_before + 2);
    // Written through the received write end, read from the original read end.
    REQUIRE(::write(buf.fds[1].get(), "ok", 2) == 2);
    char got[2] = {};
    REQUIRE(::read(f.pipe.read.get(), got, 2) == 2);
    CHECK(std::string(got, 2) == "ok");
  }
  CHECK(open_fds() == f.open_before);
}

TEST_CASE("more fds than any record may carry: truncated, and every one closed") {
  FdsInFlight f("/many", ipc::kMaxSocketsPerRequest);
  {
    ipc::RecvBuffer buf;
    CHECK(recv(f.p.b.get(), buf, true) == ipc::RecvStatus::kTruncated);
  }
  CHECK(open_fds() == f.open_before);
}

}  // namespace
}  // namespace portbroker
