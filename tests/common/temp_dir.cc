#include "common/temp_dir.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <utility>

namespace pbtest::common {

portbroker::Result<TempDir> TempDir::create(const std::string& prefix, mode_t mode) {
  std::string tmpl = "/tmp/" + prefix + "XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return portbroker::errno_error(portbroker::ErrorCode::kInternal, "mkdtemp " + tmpl, errno);
  }
  TempDir dir(tmpl);
  if (::chmod(tmpl.c_str(), mode) != 0) {
    return portbroker::errno_error(portbroker::ErrorCode::kInternal, "chmod " + tmpl, errno);
  }
  return dir;
}

TempDir::TempDir(TempDir&& o) noexcept : path_(std::exchange(o.path_, std::string())) {}

TempDir& TempDir::operator=(TempDir&& o) noexcept {
  if (this != &o) {
    remove();
    path_ = std::exchange(o.path_, std::string());
  }
  return *this;
}

TempDir::~TempDir() { remove(); }

void TempDir::remove() {
  if (path_.empty()) return;
  // Best effort: a leftover scratch directory must not fail a destructor.
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  path_.clear();
}

}  // namespace pbtest::common
