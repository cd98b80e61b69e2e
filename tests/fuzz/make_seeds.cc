// Writes the binary seeds of tests/fuzz/corpus/{record,dispatch}: one legitimate record of every
// request and reply kind, built with the codec the daemon and client use. Run by hand after a
// wire change (`build-fuzz/tests/fuzz/make_seeds tests/fuzz/corpus`); the output is checked in.
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "ipc/codec.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/spec.hpp"

namespace {

using namespace portbroker;

void write(const std::string& path, const std::string& prefix, capnp::MessageBuilder& m) {
  auto words = capnp::messageToFlatArray(m);
  auto bytes = words.asBytes();
  std::ofstream out(path, std::ios::binary);
  out << prefix;
  out.write(reinterpret_cast<const char*>(bytes.begin()),
            static_cast<std::streamsize>(bytes.size()));
}

using RequestFill = std::function<void(wire::Request::Builder)>;
using ReplyFill = std::function<void(wire::Reply::Builder)>;

SocketSpec spec(const char* text) { return parse_socket_spec(text).value(); }

LeaseInfo lease() {
  LeaseInfo l;
  l.id = 7;
  l.name = "http";
  l.address = IpAddress::parse("127.0.0.1").value();
  l.port = 8080;
  l.mode = Mode::kShared;
  l.holder.pid = 42;
  l.holder.uid = 1000;
  l.state = "active";
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds CORPUS_DIR\n");
    return 2;
  }
  std::string dir = argv[1];
  std::vector<std::pair<std::string, RequestFill>> requests = {
      {"acquire",
       [](auto r) {
         std::vector<SocketSpec> s = {spec("http=tcp:127.0.0.1:8080,backlog=16"),
                                      spec("udp:[::1]:0,reuseport"), spec("tcp:0.0.0.0:80,shared")};
         ipc::acquire_to_wire(s, r);
       }},
      {"acquire-linger",
       [](auto r) {
         std::vector<SocketSpec> s = {spec("tcp:127.0.0.1:0,linger=1,freebind,keepalive")};
         ipc::acquire_to_wire(s, r);
       }},
      {"release", [](auto r) { r.setRelease(1); }},
      {"list", [](auto r) { r.setList(); }},
      {"status", [](auto r) { r.setStatus(); }},
      {"reserve",
       [](auto r) {
         ReservationInfo info;
         info.name = "web";
         info.target = "tcp:8000-8009";
         info.tcp = true;
         info.port_first = 8000;
         info.port_last = 8009;
         info.users = {"root", "1000"};
         info.hold = true;
         ipc::reservation_to_wire(info, r.initReserve());
       }},
      {"unreserve", [](auto r) { r.setUnreserve("web"); }},
      {"reservations", [](auto r) { r.setReservations(); }},
      {"reload", [](auto r) { r.setReload(); }},
      {"who",
       [](auto r) {
         ipc::who_query_to_wire({Protocol::kTcp, 8080}, r.initWho());
       }},
      {"check", [](auto r) { r.setCheck(); }},
      {"shutdown", [](auto r) { r.initShutdown().setRevokeAll(false); }},
  };
  for (const auto& [name, fill] : requests) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<wire::Request>();
    r.setVersion(wire::PROTOCOL_VERSION);
    fill(r);
    write(dir + "/record/request-" + name, "", m);
    write(dir + "/dispatch/" + name, std::string(1, '\x07'), m);  // no fault
    write(dir + "/dispatch/" + name + "-emfile", std::string(1, '\x00'), m);
    write(dir + "/dispatch/" + name + "-listen", std::string(1, '\x23'), m);
  }
  std::vector<std::pair<std::string, ReplyFill>> replies = {
      {"error", [](auto r) { ipc::error_to_wire(make_error(ErrorCode::kConflict, "held"), r); }},
      {"acquired",
       [](auto r) { ipc::grant_to_wire(ipc::view_of(lease()), 0, r.initAcquired(1)[0]); }},
      {"leases",
       [](auto r) {
         std::vector<LeaseInfo> l = {lease(), lease()};
         ipc::leases_to_wire(l, r);
       }},
      {"status",
       [](auto r) {
         DaemonStatus s;
         s.version = "0.1.0";
         s.socket_path = "/run/portbroker/portbroker.sock";
         ipc::status_to_wire(s, r.initStatus());
       }},
      {"reloaded",
       [](auto r) {
         ipc::reload_to_wire({"/etc/portbroker/portbroker.toml", {"lease 3"}}, r.initReloaded());
       }},
      {"who",
       [](auto r) {
         WhoReport w;
         w.port = 8080;
         w.leases = {lease()};
         w.pools = {"default"};
         ipc::who_to_wire(w, r.initWho());
       }},
      {"problems",
       [](auto r) {
         std::vector<Problem> p = {{"unprotected", "port 1433 is in the ephemeral range"}};
         ipc::problems_to_wire(p, r);
       }},
      {"reservations",
       [](auto r) {
         ReservationInfo info;
         info.name = "db";
         info.target = "tcp:1433";
         info.tcp = true;
         info.port_first = info.port_last = 1433;
         std::vector<ReservationInfo> v = {info};
         ipc::reservations_to_wire(v, r);
       }},
  };
  for (const auto& [name, fill] : replies) {
    capnp::MallocMessageBuilder m;
    fill(m.initRoot<wire::Reply>());
    write(dir + "/record/reply-" + name, "", m);
  }
  return 0;
}
