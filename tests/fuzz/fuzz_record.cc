// The record decoder, as the client library reads a reply from a daemon it cannot trust
// (through the same tight ReaderOptions the daemon uses for requests): every kind of reply
// through the codec, plus the request-side codec the daemon runs before dispatch.
#include <capnp/serialize.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ipc/codec.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"
#include "ipc/wire.h"
#include "tests/fuzz/targets.h"

namespace {

using namespace portbroker;
namespace wire = portbroker::wire;

void decode_reply(wire::Reply::Reader reply) {
  switch (reply.which()) {
    case wire::Reply::ERROR:
      (void)ipc::error_from_wire(reply);
      return;
    case wire::Reply::ACQUIRED:
      (void)ipc::grants_from_wire(reply.getAcquired(), 64, 64);
      return;
    case wire::Reply::LEASES:
      (void)ipc::leases_from_wire(reply.getLeases());
      return;
    case wire::Reply::STATUS:
      (void)ipc::status_from_wire(reply.getStatus());
      return;
    case wire::Reply::RELOADED:
      (void)ipc::reload_from_wire(reply.getReloaded());
      return;
    case wire::Reply::WHO:
      (void)ipc::who_from_wire(reply.getWho());
      return;
    case wire::Reply::PROBLEMS:
      (void)ipc::problems_from_wire(reply.getProblems());
      return;
    case wire::Reply::RESERVATIONS:
      (void)ipc::reservations_from_wire(reply.getReservations());
      return;
    default:
      return;
  }
}

void decode_request(wire::Request::Reader req) {
  switch (req.which()) {
    case wire::Request::ACQUIRE:
      (void)ipc::acquire_from_wire(req.getAcquire());
      return;
    case wire::Request::WHO:
      (void)ipc::who_query_from_wire(req.getWho());
      return;
    case wire::Request::RESERVE:
      (void)ipc::reservation_from_wire(req.getReserve());
      return;
    default:
      return;
  }
}

}  // namespace

namespace pbfuzz {

int record_one(const uint8_t* data, size_t size) {
  // As recv_record leaves it: whole words only, at most the record limit, word-aligned.
  if (size % sizeof(capnp::word) != 0 || size > ipc::kMaxRecordBytes) return 0;
  std::vector<capnp::word> words(size / sizeof(capnp::word));
  if (size != 0) std::memcpy(words.data(), data, size);
  auto record = kj::arrayPtr(words.data(), words.size());
  try {
    capnp::FlatArrayMessageReader reader(record, ipc::reader_options());
    decode_reply(reader.getRoot<wire::Reply>());
  } catch (const kj::Exception&) {
  }
  try {
    capnp::FlatArrayMessageReader reader(record, ipc::reader_options());
    decode_request(reader.getRoot<wire::Request>());
  } catch (const kj::Exception&) {
  }
  return 0;
}

}  // namespace pbfuzz

// The unit tests replay the corpus and every regression input through record_one (without
// libFuzzer).
#ifndef PB_FUZZ_NO_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return pbfuzz::record_one(data, size);
}
#endif
