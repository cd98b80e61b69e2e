#include "common/flood.h"

#include <capnp/serialize.h>
#include <poll.h>

#include <cstring>
#include <vector>

#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

namespace pbtest::common {

namespace wire = portbroker::wire;
namespace ipc = portbroker::ipc;

const char* flood_name(FloodKind kind) {
  switch (kind) {
    case FloodKind::kCheck:
      return "check";
    case FloodKind::kWho:
      return "who";
    case FloodKind::kList:
      return "list";
    case FloodKind::kStatus:
      return "status";
    case FloodKind::kGarbage:
      return "malformed";
  }
  return "?";
}

namespace {

kj::Array<capnp::word> flood_request(FloodKind kind, uint16_t who_port) {
  capnp::MallocMessageBuilder msg;
  auto r = msg.initRoot<wire::Request>();
  r.setVersion(wire::PROTOCOL_VERSION);
  switch (kind) {
    case FloodKind::kCheck:
      r.setCheck();
      break;
    case FloodKind::kWho: {
      auto who = r.initWho();
      who.setProtocol(wire::Protocol::TCP);
      who.setPort(who_port);
      break;
    }
    case FloodKind::kList:
      r.setList();
      break;
    case FloodKind::kStatus:
      r.setStatus();
      break;
    case FloodKind::kGarbage: {
      // A segment table promising more words than follow: the daemon's reader throws.
      auto words = kj::heapArray<capnp::word>(4);
      auto bytes = words.asBytes();
      std::memset(bytes.begin(), 0xa5, bytes.size());
      const uint32_t table[2] = {0, 1000};
      std::memcpy(bytes.begin(), table, sizeof(table));
      return words;
    }
  }
  return capnp::messageToFlatArray(msg);
}

}  // namespace

bool run_flood(const std::string& path, FloodKind kind, int conns, uint16_t who_port,
               int control_fd, const std::function<bool(const Flood&)>& on_control, Flood& flood) {
  kj::Array<capnp::word> request = flood_request(kind, who_port);
  std::vector<portbroker::UniqueFd> fds;
  for (int i = 0; i < conns; ++i) {
    auto fd = ipc::connect_to(path);
    if (!fd) {
      flood.error = fd.error().message;
      return false;
    }
    if (!ipc::send_record(fd->get(), request).ok()) {
      flood.error = "cannot send a request";
      return false;
    }
    fds.push_back(std::move(fd).value());
  }
  flood.connections = static_cast<int>(fds.size());
  ipc::RecvBuffer buf;
  std::vector<pollfd> pfds(fds.size() + 1);
  for (;;) {
    for (size_t i = 0; i < fds.size(); ++i) pfds[i] = {fds[i].get(), POLLIN, 0};
    pfds.back() = {control_fd, POLLIN, 0};
    if (::poll(pfds.data(), pfds.size(), -1) < 0) continue;
    if (pfds.back().revents != 0 && !on_control(flood)) return true;
    for (size_t i = 0; i < fds.size(); ++i) {
      if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      if (ipc::recv_record(fds[i].get(), buf, true, true) != ipc::RecvStatus::kRecord) {
        flood.error = "a connection was lost";
        return false;
      }
      capnp::FlatArrayMessageReader reader(buf.record(), ipc::reader_options());
      if (reader.getRoot<wire::Reply>().getMore()) continue;  // a part: the rest follows
      ++flood.replies;
      if (!ipc::send_record(fds[i].get(), request).ok()) {
        flood.error = "cannot send a request";
        return false;
      }
    }
  }
}

}  // namespace pbtest::common
