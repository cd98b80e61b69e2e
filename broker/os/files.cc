#include "broker/os/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "portbroker/fd.hpp"

namespace portbroker::broker {

Result<std::string> read_whole_file(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    int e = errno;
    return errno_error(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInternal,
                       "cannot read " + path, e);
  }
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(ErrorCode::kInternal, "cannot read " + path, errno);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) return make_error(ErrorCode::kInternal, path + " is too large");
  }
  return out;
}

Result<void> write_all(int fd, const void* data, size_t size, const std::string& what) {
  const auto* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < size) {
    ssize_t n = ::write(fd, p + off, size - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(ErrorCode::kInternal, "cannot write " + what, errno);
    if (n == 0) return make_error(ErrorCode::kInternal, "cannot write " + what + ": short write");
    off += static_cast<size_t>(n);
  }
  return {};
}

Result<void> write_file_atomically(const std::string& dir, const std::string& name,
                                   const std::string& text, bool durable) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kInternal, "cannot create " + dir + ": " + ec.message());
  std::string path = dir + "/" + name;
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd) return errno_error(ErrorCode::kInternal, "cannot write " + tmp, errno);
  if (auto w = write_all(fd.get(), text.data(), text.size(), tmp); !w) {
    ::unlink(tmp.c_str());
    return w;
  }
  if ((durable && ::fsync(fd.get()) != 0) || ::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return errno_error(ErrorCode::kInternal, "cannot save " + path, e);
  }
  if (!durable) return {};
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d) ::fsync(d.get());
  return {};
}

Dir open_dir_at(int dirfd, const char* name) {
  UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return nullptr;
  DIR* d = ::fdopendir(fd.get());
  if (!d) return nullptr;
  (void)fd.release();  // the DIR owns it now
  return Dir(d);
}

}  // namespace portbroker::broker
