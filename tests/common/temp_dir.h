// One scratch directory type for tests and benchmarks, with no test framework: the integration
// harness wraps it with a doctest check, the benchmark with its die().
#pragma once

#include <sys/types.h>

#include <string>

#include "portbroker/result.hpp"

namespace pbtest::common {

// A fresh directory under /tmp, removed with everything below it on destruction.
class TempDir {
 public:
  // mkdtemp("/tmp/<prefix>XXXXXX"), then `mode` (mkdtemp makes 0700).
  static portbroker::Result<TempDir> create(const std::string& prefix, mode_t mode = 0700);

  TempDir(TempDir&& o) noexcept;
  TempDir& operator=(TempDir&& o) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  void remove();

  std::string path_;
};

}  // namespace pbtest::common
