// Harness, child processes: lambdas and commands forked from the test, their output captured.
// Child processes never run doctest assertions: they report through a line pipe and their exit
// status, and the parent asserts.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness_files.h"

namespace pbtest {

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
  // Command only: these fds become the child's 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and
  // LISTEN_PID (the child's own pid, set after the fork) exactly as systemd passes them.
  std::vector<std::pair<int, std::string>> listen_fds;
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
  // The fd read_line() reads, for poll()ing many children at once (drain read_line(0ms) first:
  // it may hold whole lines already read).
  int event_fd() const { return events_.get(); }
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

}  // namespace pbtest
