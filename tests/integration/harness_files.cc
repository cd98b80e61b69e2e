#include "harness_files.h"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <utility>

namespace pbtest {

namespace {

common::TempDir make_temp_dir() {
  auto dir = common::TempDir::create("pb-it-", 0755);
  REQUIRE_MESSAGE(dir.ok(), dir.error().message);
  return std::move(dir).value();
}

}  // namespace

TempDir::TempDir() : common::TempDir(make_temp_dir()) {}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

FdLeakCheck::FdLeakCheck() : before_(list_fds(0)) {}

FdLeakCheck::~FdLeakCheck() {
  auto after = list_fds(0);
  CHECK_MESSAGE(after.size() == before_.size(), "the test process leaked fds:\n"
                                                    << describe_fd_diff(before_, after));
}

}  // namespace pbtest
