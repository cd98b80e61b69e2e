// Request dispatch through the real daemon code: one record per input, sent on a fresh
// connection to a live Server (libuv loop, sessions, dispatch, LeaseService) in a private
// network namespace, with the lease sockets' system calls going through a seam that fails the
// call the input's first byte picks (EMFILE from socket(), listen failing after bind, ...).
// Everything the daemon does for a request happens: the reply is read (granted fds closed), the
// connection closed, and the loop run until the session is gone, so leases end as they would.
//
// Input: byte 0 = the fault, the rest = the record. An `upgrade` request is skipped: it would
// re-execute this process.
#include <capnp/serialize.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "broker/daemon/server.h"
#include "broker/os/syscalls.h"
#include "common/netns.h"
#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"

namespace {

using namespace portbroker;
using namespace portbroker::broker;

// Real calls, except the one the input asks to fail.
class FaultPlan final : public SysCalls {
 public:
  void plan(uint8_t byte) {
    kind_ = byte & 7;              // 0-5: which call; 6, 7: none
    nth_ = ((byte >> 3) & 3) + 1;  // its 1st to 4th occurrence
    static constexpr int kErrnos[] = {EMFILE, ENOBUFS, EADDRINUSE, EACCES,
                                      ENOMEM, EINVAL,  EPERM,      EADDRNOTAVAIL};
    err_ = kErrnos[(byte >> 5) & 7];
    seen_ = 0;
  }
  int socket(int d, int t, int p) override { return fail(0) ? -1 : SysCalls::socket(d, t, p); }
  int setsockopt(int fd, int level, int name, const void* v, socklen_t len) override {
    return fail(1) ? -1 : SysCalls::setsockopt(fd, level, name, v, len);
  }
  int bind(int fd, const sockaddr* a, socklen_t len) override {
    return fail(2) ? -1 : SysCalls::bind(fd, a, len);
  }
  int listen(int fd, int backlog) override { return fail(3) ? -1 : SysCalls::listen(fd, backlog); }
  int shutdown(int fd, int how) override { return fail(4) ? -1 : SysCalls::shutdown(fd, how); }
  int dup_cloexec(int fd) override { return fail(5) ? -1 : SysCalls::dup_cloexec(fd); }

 private:
  bool fail(int kind) {
    if (kind != kind_ || ++seen_ != nth_) return false;
    errno = err_;
    return true;
  }
  int kind_ = 7;
  int nth_ = 1;
  int seen_ = 0;
  int err_ = 0;
};

// The scratch directory (control socket, state), removed when the fuzzer exits.
std::string g_scratch;

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "fuzz_dispatch: %s\n", why.c_str());
  std::abort();
}

struct World {
  FaultPlan sys;
  std::string dir;
  uv_loop_t* loop = nullptr;
  std::unique_ptr<Server> server;

  World() {
    std::string why;
    if (!pbtest::enter_private_netns(why)) die("no private network namespace: " + why);
    ::signal(SIGPIPE, SIG_IGN);
    // Every log line is still formatted (client bytes go into some), but goes nowhere.
    auto logger =
        std::make_shared<spdlog::logger>("fuzz", std::make_shared<spdlog::sinks::null_sink_mt>());
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
    char tmpl[] = "/tmp/pb-fuzz-dispatch-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) die("mkdtemp failed");
    dir = tmpl;
    g_scratch = dir;
    std::atexit([] { std::filesystem::remove_all(g_scratch); });
    ServerConfig cfg;
    cfg.socket_path = dir + "/portbroker.sock";
    cfg.config_path = dir + "/portbroker.toml";  // absent: the embedded default policy
    cfg.state_dir = dir + "/state";
    cfg.journal = false;
    cfg.sys = &sys;
    auto policy = load_policy(cfg.policy_source());
    if (!policy) die("policy: " + policy.error().message);
    loop = uv_default_loop();
    server = std::make_unique<Server>(loop, cfg, std::move(policy).value());
    if (auto r = server->start(); !r) die("start: " + r.error().message);
  }

  // Runs the loop until `done` or a generous bound (who and check work on the thread pool).
  template <typename Done>
  void pump(int fd, Done done) {
    for (int i = 0; i < 4000 && !done(); ++i) {
      uv_run(loop, UV_RUN_NOWAIT);
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, i < 100 ? 0 : 1);
    }
  }
};

bool is_upgrade(const std::vector<capnp::word>& words) {
  try {
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(words.data(), words.size()),
                                         ipc::reader_options());
    return reader.getRoot<wire::Request>().which() == wire::Request::UPGRADE;
  } catch (const kj::Exception&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World world;
  if (size == 0 || size - 1 > ipc::kMaxRecordBytes) return 0;
  std::vector<capnp::word> words((size - 1 + sizeof(capnp::word) - 1) / sizeof(capnp::word));
  if (size > 1) std::memcpy(words.data(), data + 1, size - 1);
  if (size - 1 >= sizeof(capnp::word) && is_upgrade(words)) return 0;
  world.sys.plan(data[0]);

  auto client = ipc::connect_to(world.dir + "/portbroker.sock");
  if (!client) die("connect: " + client.error().message);
  int fd = client->get();
  // The record as sent: the raw bytes, not rounded up to words (a misaligned record is input).
  if (int e = ipc::send_bytes(fd, words.data(), size - 1, {}, true); e != 0) return 0;
  ipc::RecvBuffer buf;
  bool replied = false;
  bool closed = false;
  world.pump(fd, [&] {
    while (!closed) {
      auto st = ipc::recv_record(fd, buf, true, true);
      if (st == ipc::RecvStatus::kWouldBlock) break;
      buf.fds.clear();  // granted sockets: closed here, as a client that exits would
      if (st == ipc::RecvStatus::kRecord) {
        replied = true;
      } else {
        closed = true;
      }
    }
    return replied || closed;
  });
  client->reset();
  world.pump(-1, [&] { return world.server->session_count() == 0; });
  world.sys.plan(7);
  return 0;
}
