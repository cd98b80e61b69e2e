// Harness, files and fds: scratch directories, file reads, and the test process's own fd-leak
// check. Every other harness header builds on this one.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>

#include "common/process.h"
#include "common/temp_dir.h"
#include "portbroker/fd.hpp"

namespace pbtest {

using portbroker::UniqueFd;
using namespace std::chrono_literals;

inline constexpr auto kDefaultTimeout = std::chrono::seconds(20);

// A private directory (mode 0755 so that other uids can reach the daemon socket in it), removed
// recursively on destruction. The test fails at once if it cannot be made.
class TempDir : public common::TempDir {
 public:
  TempDir();
};

std::string read_file(const std::string& path);
bool path_exists(const std::string& path);  // lstat: a dangling symlink exists

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Checks at scope exit that the test process holds exactly the fds it held at scope entry.
class FdLeakCheck {
 public:
  FdLeakCheck();
  ~FdLeakCheck();

 private:
  std::map<int, std::string> before_;
};

}  // namespace pbtest
