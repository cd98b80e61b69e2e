// Whole-file reads and crash-safe writes of the daemon's own small files (policy, state, guard
// and journal snapshots).
#pragma once

#include <dirent.h>

#include <cstddef>
#include <memory>
#include <string>

#include "portbroker/result.hpp"

namespace portbroker::broker {

// The whole file, refused (kInternal) past `max_bytes`. A missing file is kNotFound.
Result<std::string> read_whole_file(const std::string& path, size_t max_bytes = size_t{16} << 20);

// Temp file, fsync, rename, fsync of the directory: after a crash the file is either the old
// one or the new one, never a torn mix. Creates `dir` when missing. Without `durable` there
// is no fsync: readers still see the old file or the new one whole (the metrics textfile,
// rewritten every few seconds, need not survive a crash).
Result<void> write_file_atomically(const std::string& dir, const std::string& name,
                                   const std::string& text, bool durable = true);

// write(2) until all of `data` is written (EINTR retried).
Result<void> write_all(int fd, const void* data, size_t size, const std::string& what);

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using Dir = std::unique_ptr<DIR, DirCloser>;

// The directory `name` under `dirfd` (AT_FDCWD, or an open directory), for readdir; null with
// errno set when it cannot be opened.
Dir open_dir_at(int dirfd, const char* name);

}  // namespace portbroker::broker
