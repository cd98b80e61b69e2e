#include "harness_holder.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <utility>

#include "harness_net.h"

namespace pbtest {

using portbroker::Client;

std::string AcquireOutcome::describe() const {
  if (ok) {
    return "granted port " + std::to_string(port) + " (fd bound to " + std::to_string(bound_port) +
           "), lease " + std::to_string(id);
  }
  return std::string("refused with ") + portbroker::error_code_name(code) + ": " + message;
}

namespace {

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// The holder's command loop (runs in the child).
int holder_loop(ChildIo& io, portbroker::Lease& lease) {
  const int listen_fd = lease.fd();
  for (;;) {
    auto cmd = io.read_line();
    if (!cmd || *cmd == "exit") return 0;
    if (*cmd == "close") {
      // Its copy of the socket goes; the session, and so the lease, stays.
      ::close(lease.release_fd());
      io.send_line("closed");
    } else if (cmd->rfind("accept ", 0) == 0) {
      int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) {
        io.send_line("accept failed: " + std::string(std::strerror(errno)));
        return 2;
      }
      auto got = recv_line(conn);
      send_all(conn, cmd->substr(7) + "\n");
      ::close(conn);
      io.send_line(got ? "accepted" : "accepted-no-line");
    } else if (cmd->rfind("serve ", 0) == 0) {
      std::string name = cmd->substr(6);
      for (;;) {
        pollfd p[2] = {{listen_fd, POLLIN, 0}, {io.from_parent_fd(), POLLIN, 0}};
        if (::poll(p, 2, -1) < 0) {
          if (errno == EINTR) continue;
          return 3;
        }
        if (p[1].revents) return 0;  // "exit" or EOF: either way we are done
        if (p[0].revents & POLLIN) {
          int conn = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (conn < 0) continue;
          if (recv_line(conn)) send_all(conn, name + "\n");
          ::close(conn);
        }
      }
    } else {
      io.send_line("unknown command: " + *cmd);
    }
  }
}

}  // namespace

Child start_holder(const Daemon& d, const std::string& spec, SpawnOptions opts, bool wait_for_go) {
  if (opts.name.empty()) opts.name = "pbholder";
  std::string path = d.socket_path();
  return Child::run(
      [path, spec, wait_for_go](ChildIo& io) {
        auto c = Client::connect(path);
        if (!c) {
          io.send_line("err " + std::to_string(static_cast<int>(c.error().code)) + " " +
                       one_line(c.error().message));
          return 1;
        }
        if (wait_for_go) {
          io.send_line("connected");
          auto go = io.read_line();
          if (!go || *go != "go") return 0;
        }
        auto lease = c->acquire(spec);
        if (!lease) {
          io.send_line("err " + std::to_string(static_cast<int>(lease.error().code)) + " " +
                       one_line(lease.error().message));
          return 0;
        }
        io.send_line("ok " + std::to_string(lease->port()) + " " +
                     std::to_string(local_port(lease->fd())) + " " + std::to_string(lease->id()));
        return holder_loop(io, *lease);
      },
      opts);
}

AcquireOutcome read_outcome(Child& holder) {
  AcquireOutcome o;
  auto line = holder.read_line();
  if (line && *line == "connected") line = holder.read_line();
  if (!line) {
    o.code = portbroker::ErrorCode::kInternal;
    o.message = "the child reported nothing; its output:\n" + holder.output();
    return o;
  }
  std::istringstream in(*line);
  std::string word;
  in >> word;
  if (word == "ok") {
    unsigned port = 0, bound = 0;
    in >> port >> bound >> o.id;
    o.ok = true;
    o.port = static_cast<uint16_t>(port);
    o.bound_port = static_cast<uint16_t>(bound);
  } else {
    int code = 0;
    in >> code;
    o.code = static_cast<portbroker::ErrorCode>(code);
    std::getline(in, o.message);
    if (!o.message.empty() && o.message[0] == ' ') o.message.erase(0, 1);
    if (word != "err") o.message = "unexpected line from the child: " + *line;
  }
  return o;
}

Holder spawn_holder(const Daemon& d, const std::string& spec, SpawnOptions opts) {
  Child c = start_holder(d, spec, std::move(opts));
  AcquireOutcome o = read_outcome(c);
  REQUIRE_MESSAGE(o.ok, "holder of " << spec << ": " << o.describe());
  return Holder{std::move(c), o};
}

AcquireOutcome acquire_in_child(const Daemon& d, const std::string& spec, SpawnOptions opts) {
  if (opts.name.empty()) opts.name = "pbacquirer";
  Child c = start_holder(d, spec, std::move(opts));
  AcquireOutcome o = read_outcome(c);
  c.close_input();
  ExitStatus st = c.wait();
  CHECK_MESSAGE(st.ok(), "acquiring child " << st.describe() << "\n" << c.output());
  return o;
}

Child start_outside(uint16_t port, int type, const SpawnOptions& opts) {
  Child c = Child::run(
      [port, type](ChildIo& io) {
        UniqueFd fd = bind_outside(type, port);
        if (!fd) {
          io.send_line(std::string("bind failed: ") + std::strerror(errno));
          return 1;
        }
        io.send_line("bound");
        while (io.read_line()) {
        }
        return 0;
      },
      opts);
  REQUIRE_MESSAGE(c.read_line() == "bound", c.output());
  return c;
}

}  // namespace pbtest
