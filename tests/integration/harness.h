// Integration-test harness: runs the real portbrokerd inside the test process's private network
// namespace (entered by harness_main.cc before any test), so tests may use fixed ports and never
// touch the host's. Everything waits on real events (readiness datagram, pidfd, socket
// readiness, daemon round trips) with generous bounds; nothing sleeps.
//
// Child processes never run doctest assertions: they report through a line pipe and their exit
// status, and the parent asserts.
#pragma once

#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ipc/framing.h"
#include "ipc/portbroker.capnp.h"
#include "portbroker/client.hpp"
#include "portbroker/fd.hpp"

namespace pbtest {

using portbroker::UniqueFd;
using namespace std::chrono_literals;

inline constexpr auto kDefaultTimeout = std::chrono::seconds(20);

// ---- process set-up (harness_main.cc) -----------------------------------------------------------

// True when children may switch to another uid (the harness runs as real root). When the tests
// run as a normal user they live in a user namespace with only their own uid mapped.
bool can_switch_uid();

// Paths of the binaries under test.
std::string daemon_path();
std::string cli_path();
std::string example_path(const std::string& name);
std::string self_exe();  // this test binary, for the helper modes in harness_main.cc

// ---- files and fds ------------------------------------------------------------------------------

// A private directory (mode 0755 so that other uids can reach the daemon socket in it), removed
// recursively on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Open fds of a process: fd number -> readlink target.
std::map<int, std::string> list_fds(pid_t pid);
std::string describe_fd_diff(const std::map<int, std::string>& before,
                             const std::map<int, std::string>& after);
std::string read_file(const std::string& path);
bool path_exists(const std::string& path);  // lstat: a dangling symlink exists

// Checks at scope exit that the test process holds exactly the fds it held at scope entry.
class FdLeakCheck {
 public:
  FdLeakCheck();
  ~FdLeakCheck();

 private:
  std::map<int, std::string> before_;
};

// ---- child processes ----------------------------------------------------------------------------

struct ExitStatus {
  bool exited = false;  // normal exit (then `code`), else killed by `signal`
  int code = -1;
  int signal = 0;
  bool timed_out = false;  // we killed it because it overran its deadline
  bool ok() const { return exited && code == 0; }
  std::string describe() const;
};

struct SpawnOptions {
  std::optional<uid_t> uid;  // switch to this uid (and gid = uid, no groups) before running
  std::string name;          // comm (PR_SET_NAME) of a lambda child
  std::map<std::string, std::string> env;  // added to (or overriding) the environment
  std::vector<std::string> unset_env;
  bool stdout_to_lines = false;      // command: stdout goes to the line pipe (read_line)
  bool stdin_from_parent = false;    // command: stdin is the parent's send_line pipe
  std::vector<int> keep_fds;         // extra fds to keep open in the child (at the same numbers)
  std::optional<long> nofile_limit;  // RLIMIT_NOFILE for the child
  std::string output_path;           // stdout+stderr to this file instead of an anonymous memfd
};

// What a lambda child sees.
class ChildIo {
 public:
  ChildIo(int to_parent, int from_parent) : to_parent_(to_parent), from_parent_(from_parent) {}
  void send_line(const std::string& line);  // one event line to the parent
  // Blocks until the parent sends a line; nullopt when the parent closed the pipe.
  std::optional<std::string> read_line();
  int from_parent_fd() const { return from_parent_; }

 private:
  int to_parent_;
  int from_parent_;
  std::string buf_;
};

// A forked child: a lambda (exit status = its return value) or an exec'd command. Its stdout and
// stderr are captured; a line pipe carries events to the parent and another carries commands
// to it. Destruction kills (SIGKILL) and reaps a child still running.
class Child {
 public:
  static Child run(std::function<int(ChildIo&)> fn, const SpawnOptions& opts = {});
  static Child exec(const std::vector<std::string>& argv, const SpawnOptions& opts = {});

  Child(Child&&) noexcept;
  Child& operator=(Child&&) = delete;
  Child(const Child&) = delete;
  ~Child();

  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }  // readable once the child has exited
  // Next line from the child (without '\n'); nullopt on EOF or after `timeout`.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout = kDefaultTimeout);
  void send_line(const std::string& line);
  void close_input();  // EOF on the child's command pipe
  // Waits for exit; past the deadline the child is SIGKILLed and timed_out is set.
  ExitStatus wait(std::chrono::milliseconds timeout = kDefaultTimeout);
  void kill(int sig);
  bool running() const { return pid_ > 0 && !status_; }
  // Everything the child wrote to stdout/stderr so far (and, for lambdas, its event lines).
  std::string output() const;

 private:
  friend struct ChildAccess;
  Child() = default;
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  UniqueFd events_;   // read end: child's event lines (or command stdout)
  UniqueFd control_;  // write end: lines to the child
  UniqueFd capture_;  // memfd with stdout+stderr
  std::string output_path_;
  std::string line_buf_;
  std::string events_seen_;
  std::optional<ExitStatus> status_;
};

struct CommandResult {
  ExitStatus status;
  std::string out;  // stdout and stderr, interleaved as written
  std::string describe() const { return status.describe() + "; output:\n" + out; }
};

CommandResult run_command(const std::vector<std::string>& argv, const SpawnOptions& opts = {},
                          std::chrono::milliseconds timeout = kDefaultTimeout);

// ---- the daemon ---------------------------------------------------------------------------------

struct DaemonOptions {
  std::vector<std::string> args;  // extra command-line arguments
  const TempDir* dir = nullptr;   // share a directory (e.g. to restart on the same socket)
  std::string log_level = "debug";
  std::optional<long> nofile_limit;
  std::string config_text;  // written to <dir>/portbroker.toml when set; else no config file
  std::string socket_path;  // default: <dir>/portbroker.sock
};

// One running portbrokerd, in its own 0755 temp dir with its log in a file there. The constructor
// returns once it has sent READY=1 and answered a status request (the test fails otherwise).
// Destruction checks it leaked no fd (declare it before the test's clients, so they are gone by
// then), SIGTERMs it and checks it exited 0 and removed its socket file. While it lives, its log
// is printed with any failing assertion.
class Daemon {
 public:
  // For the failure-log listener (harness_main.cc): prints the log of every live daemon once
  // per test case.
  static void print_live_logs_once();
  static void new_test_case();

  explicit Daemon(DaemonOptions opts = {});
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  const std::string& dir() const { return dir_->path(); }
  pid_t pid() const { return pid_; }
  std::string log() const;
  std::string log_tail(size_t max_bytes = 12000) const;
  int fd_count() const { return static_cast<int>(list_fds(pid_).size()); }
  bool alive() const;

  // The environment that makes a client (library or CLI) find this daemon.
  std::map<std::string, std::string> client_env() const {
    return {{"PORTBROKER_SOCKET", socket_path_}};
  }
  portbroker::Client connect() const;  // REQUIREs success

  // Repeats `pred` (each call doing at least one blocking round trip to the daemon through the
  // harness's own connection) until it holds; false after `max_rounds`. A state change the
  // daemon has already been told about (a closed connection, a released lease) is visible
  // after a round trip or two, so the bound is generous and never reached in a passing run.
  bool wait_until(const std::function<bool(portbroker::Client&)>& pred, int max_rounds = 2000);
  // Waits until no lease is listed for `port`.
  bool wait_port_unleased(uint16_t port);
  std::vector<portbroker::LeaseInfo> leases();

  // CHECKs the daemon holds exactly the fds it held once ready (after letting it process every
  // pending disconnect), and that it still answers a status request.
  void check_no_fd_leak();

  // Signals it (SIGTERM by default) and waits; CHECKs a clean exit and the socket file removed.
  // Idempotent.
  void stop(int sig = SIGTERM);
  // SIGKILL and reap (the socket file stays behind, as after a crash).
  void kill_hard();
  // For a daemon told to stop some other way (`portbroker shutdown`): waits for its clean exit.
  void wait_stopped();

 private:
  void register_for_failure_log();
  void unregister_for_failure_log();

  std::unique_ptr<TempDir> own_dir_;
  const TempDir* dir_ = nullptr;
  std::string socket_path_;
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<Child> proc_;
  bool stopped_ = false;
  std::optional<portbroker::Client> probe_;
  std::map<int, std::string> baseline_fds_;
};

// Starts portbrokerd with `args` (NOTIFY_SOCKET set) expecting it NOT to become ready: returns
// its exit status and output, or a failure status if it did signal readiness (then it is
// SIGTERMed).
struct FailedStart {
  bool became_ready = false;
  CommandResult result;
};
FailedStart start_daemon_expect_failure(const std::vector<std::string>& args, const TempDir& dir);

// The `portbroker` CLI against `d`.
CommandResult run_cli(const Daemon& d, const std::vector<std::string>& args,
                      SpawnOptions opts = {});

// ---- lease holders ------------------------------------------------------------------------------

// What one acquire in a child process gave.
struct AcquireOutcome {
  bool ok = false;
  portbroker::ErrorCode code = portbroker::ErrorCode::kOk;
  std::string message;      // the daemon's message on failure
  uint16_t port = 0;        // the lease's port
  uint16_t bound_port = 0;  // getsockname() of the granted fd
  uint64_t id = 0;
  std::string describe() const;
};

// A child process (comm `opts.name`, default "pbholder") that connects to `d`, acquires `spec`,
// reports the outcome, then obeys lines from the parent:
//   "exit" (or EOF)  returns 0, releasing everything as the process exits;
//   "accept NAME"    accepts one connection (blocking), reads a line, answers "NAME", closes it
//                    and reports "accepted";
//   "serve NAME"     answers every connection with "NAME" until "exit".
// With `wait_for_go` it connects first and acquires only once the parent sends "go" (for
// concurrent acquires); read its outcome with read_outcome().
Child start_holder(const Daemon& d, const std::string& spec, SpawnOptions opts = {},
                   bool wait_for_go = false);
AcquireOutcome read_outcome(Child& holder);

struct Holder {
  Child child;
  AcquireOutcome lease;
};
// start_holder + read_outcome, REQUIRing the grant.
Holder spawn_holder(const Daemon& d, const std::string& spec, SpawnOptions opts = {});
// Acquires `spec` in a short-lived child process and returns what happened.
AcquireOutcome acquire_in_child(const Daemon& d, const std::string& spec, SpawnOptions opts = {});

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- network ------------------------------------------------------------------------------------

// A blocking TCP connection to 127.0.0.1:port (or `addr`), with send/receive deadlines.
UniqueFd connect_tcp(uint16_t port, const std::string& addr = "127.0.0.1");
bool send_all(int fd, const std::string& data);
// Reads up to and including '\n' (returned without it); nullopt on EOF, error or timeout.
std::optional<std::string> recv_line(int fd, std::chrono::milliseconds timeout = kDefaultTimeout);
uint16_t local_port(int fd);  // getsockname
bool is_listening(int fd);    // SO_ACCEPTCONN
int socket_type(int fd);      // SO_TYPE
// Binds (and for TCP listens) a socket outside the broker, as another program would.
UniqueFd bind_outside(int type, uint16_t port, const std::string& addr = "127.0.0.1");
// What a program outside the broker gets from a plain bind() (and listen(), for TCP) of
// addr:port: 0 when it worked (the socket is closed again at once), else the errno.
int outside_bind_errno(uint16_t port, const std::string& addr, bool reuseaddr,
                       int type = SOCK_STREAM);
// Can this process bind `port` right now (nothing holds it)?
bool port_free(uint16_t port, const std::string& addr = "127.0.0.1");

// ---- raw protocol -------------------------------------------------------------------------------

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
