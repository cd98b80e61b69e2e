#include "broker/os/journal_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "broker/os/files.h"

// Compaction, and why a crash at any step loses nothing and applies nothing twice:
//   1. journal.snap is replaced (write_file_atomically) by a snapshot of generation G+1.
//   2. journal.log is replaced (write_file_atomically) by a log holding only Checkpoint{G+1}.
// Records are not idempotent (a lease granted twice is an error), so "snapshot, then truncate
// the log" is not enough: a crash between the two would replay the old log on top of a
// snapshot that already holds it. Instead each file starts with its generation, and open()
// replays the log only when it has the snapshot's generation:
//   - crash before 1 completes: old snapshot G, old log G: the journal as before compaction;
//   - crash between 1 and 2: snapshot G+1 holds everything; the log (G) is older, so open()
//     ignores it and starts a new one;
//   - crash after 2: snapshot G+1 and its empty log.
// A log newer than its snapshot cannot come from this order, so open() refuses it.

namespace portbroker::broker {
namespace {

using journal::Checkpoint;
using journal::Record;

// Far beyond any real journal (15,000 leases make about 3 MB); a bound so that a runaway file
// is refused rather than read into memory.
constexpr size_t kMaxFileBytes = size_t{1} << 30;
// Compact only when the log is at least this large and four times the snapshot's estimated
// size: compaction then costs at most a quarter of what was appended.
constexpr size_t kMinCompactBytes = size_t{1} << 20;
constexpr size_t kLeaseBytesEstimate = 256;
constexpr size_t kHoldBytesEstimate = 64;
// The log's space grows in steps: the first is small (a new log holds a checkpoint), each next
// one as large as the log so far, up to kMaxGrowBytes at a time.
constexpr size_t kFirstLogBytes = size_t{16} << 10;
constexpr size_t kMaxGrowBytes = size_t{4} << 20;
// Room after the records for the zero header that ends them.
constexpr size_t kFrameHeaderSlack = journal::kFrameHeaderBytes;

ErrorCode code_for_errno(int e) {
  return e == ENOSPC || e == EDQUOT ? ErrorCode::kResourceExhausted : ErrorCode::kInternal;
}

Result<void> prepare_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return errno_error(ErrorCode::kInternal, "cannot create journal directory " + dir, errno);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    return errno_error(ErrorCode::kInternal, "cannot use journal directory " + dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    return make_error(ErrorCode::kInternal, "journal directory " + dir + " is not a directory");
  }
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return make_error(ErrorCode::kInternal,
                      "journal directory " + dir +
                          " must be private to the daemon's user (mode 0700): the journal "
                          "holds lease tokens");
  }
  return {};
}

}  // namespace

Result<JournalFile> JournalFile::open(const std::string& dir) {
  if (auto ok = prepare_dir(dir); !ok) return ok.error();
  JournalFile j(dir);
  if (auto ok = j.replay_snapshot(); !ok) return ok.error();
  if (auto ok = j.replay_log(); !ok) return ok.error();
  if (!j.log_fd_) {
    if (auto ok = j.compact(); !ok) return ok.error();
  }
  return j;
}

Result<void> JournalFile::replay_snapshot() {
  const std::string path = snapshot_path();
  auto data = read_whole_file(path, kMaxFileBytes);
  if (!data) {
    if (data.error().code == ErrorCode::kNotFound) return {};  // a new journal
    return data.error();
  }
  auto summary = journal::decode_records(*data, [&](Record&& r, size_t offset) -> Result<void> {
    bool is_checkpoint = std::holds_alternative<Checkpoint>(r);
    if (is_checkpoint != (offset == 0)) {
      return make_error(ErrorCode::kInternal, "a checkpoint must come first, and only first");
    }
    return state_.apply(r);
  });
  if (!summary) return make_error(ErrorCode::kInternal, path + ": " + summary.error().message);
  // The snapshot is replaced whole (rename), so a short one was damaged, not torn by a crash.
  if (summary->torn_bytes != 0 || summary->records == 0 || summary->valid_bytes != data->size()) {
    return make_error(ErrorCode::kInternal, path + " is truncated");
  }
  return {};
}

Result<void> JournalFile::replay_log() {
  const std::string path = log_path();
  auto data = read_whole_file(path, kMaxFileBytes);
  if (!data) {
    if (data.error().code == ErrorCode::kNotFound) return {};  // log_fd_ stays empty: compact
    return data.error();
  }
  const uint64_t snapshot_generation = state_.generation();
  bool stale = false;
  uint64_t log_generation = 0;
  auto summary = journal::decode_records(*data, [&](Record&& r, size_t offset) -> Result<void> {
    const auto* cp = std::get_if<Checkpoint>(&r);
    if ((cp != nullptr) != (offset == 0)) {
      return make_error(ErrorCode::kInternal, "a checkpoint must come first, and only first");
    }
    if (cp != nullptr) {
      log_generation = cp->generation;
      if (log_generation < snapshot_generation) {
        stale = true;  // stops decoding: its records are already in the snapshot
        return make_error(ErrorCode::kInternal, "stale");
      }
      if (log_generation > snapshot_generation) {
        return make_error(ErrorCode::kInternal, "generation " + std::to_string(log_generation) +
                                                    " is newer than " + kSnapshotName + "'s " +
                                                    std::to_string(snapshot_generation) +
                                                    " (the snapshot is missing or was replaced)");
      }
    }
    return state_.apply(r);
  });
  if (stale) {
    ignored_.push_back(std::string(kLogName) + ": generation " + std::to_string(log_generation) +
                       " is older than " + kSnapshotName + "'s " +
                       std::to_string(snapshot_generation) +
                       " (a compaction was interrupted; the snapshot holds its records): ignored");
    return {};
  }
  if (!summary) return make_error(ErrorCode::kInternal, path + ": " + summary.error().message);
  if (summary->records == 0) {
    // Logs are created whole with their checkpoint, so this one is damaged; its records, if
    // it ever had any, cannot be told from garbage.
    ignored_.push_back(std::string(kLogName) + ": no checkpoint, " + std::to_string(data->size()) +
                       " bytes ignored");
    return {};
  }
  if (summary->torn_bytes != 0) {
    ignored_.push_back(std::string(kLogName) + ": torn tail, " +
                       std::to_string(summary->torn_bytes) + " bytes ignored");
  }
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return {};  // compact() starts a new log
  // On failure compact() starts a new log: appending after a torn record would bury it
  // mid-log, where it reads as corruption.
  (void)use_log(std::move(fd), summary->valid_bytes);
  return {};
}

Result<void> JournalFile::use_log(UniqueFd fd, size_t records_end) {
  log_fd_.reset();
  log_map_.reset();
  // Cutting the file at the records' end zeros whatever followed them; reserve() then
  // allocates the space again, zero-filled.
  if (::ftruncate(fd.get(), static_cast<off_t>(records_end)) != 0) {
    return errno_error(code_for_errno(errno), "cannot use " + log_path(), errno);
  }
  log_fd_ = std::move(fd);
  log_bytes_ = records_end;
  // Without room now (a full file system), the next append() tries again and fails cleanly.
  (void)reserve(std::max(records_end + kFrameHeaderSlack, kFirstLogBytes));
  return {};
}

Result<void> JournalFile::reserve(size_t bytes) {
  if (bytes <= log_map_.size()) return {};
  size_t want = std::max(bytes, log_map_.size() + std::min(log_map_.size(), kMaxGrowBytes));
  want = (want + kFirstLogBytes - 1) / kFirstLogBytes * kFirstLogBytes;
  if (want > kMaxFileBytes) {
    return make_error(ErrorCode::kResourceExhausted,
                      "cannot append to " + log_path() + ": the log has reached its limit of " +
                          std::to_string(kMaxFileBytes >> 20) + " MiB");
  }
  int e = 0;
  while ((e = ::posix_fallocate(log_fd_.get(), 0, static_cast<off_t>(want))) == EINTR) {
  }
  if (e != 0) return errno_error(code_for_errno(e), "cannot append to " + log_path(), e);
  return log_map_.map(log_fd_.get(), want);
}

JournalFile::Mapping::Mapping(Mapping&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

JournalFile::Mapping& JournalFile::Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void JournalFile::Mapping::reset() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

Result<void> JournalFile::Mapping::map(int fd, size_t size) {
  void* p = data_ == nullptr ? ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                             : ::mremap(data_, size_, size, MREMAP_MAYMOVE);
  if (p == MAP_FAILED) return errno_error(ErrorCode::kInternal, "cannot map the journal", errno);
  data_ = static_cast<char*>(p);
  size_ = size;
  return {};
}

Result<void> JournalFile::append(const Record& record) {
  return append(std::span<const Record>(&record, 1));
}

Result<void> JournalFile::append(std::span<const Record> records) {
  if (auto ok = store(records); !ok) return ok;
  for (const Record& r : records) (void)state_.apply(r);  // checked by store()
  return {};
}

Result<void> JournalFile::append(std::vector<Record>&& records) {
  if (auto ok = store(records); !ok) return ok;
  for (Record& r : records) (void)state_.apply(std::move(r));  // checked by store()
  return {};
}

Result<void> JournalFile::store(std::span<const Record> records) {
  if (records.empty()) return {};
  for (const Record& r : records) {
    if (std::holds_alternative<Checkpoint>(r)) {
      return make_error(ErrorCode::kInternal, "checkpoints are written by compaction only");
    }
  }
  if (auto ok = state_.check(records); !ok) {
    return make_error(ErrorCode::kInternal, std::string("journal record refused (") +
                                                journal::record_kind_name(records[0]) +
                                                (records.size() > 1 ? ", ..." : "") +
                                                "): " + ok.error().message);
  }
  frame_.clear();  // keeps its capacity: no allocation per append
  if (records.size() == 1) {
    journal::encode_record(records[0], frame_);
  } else {
    journal::encode_batch(records, frame_);
  }
  if (frame_.size() > journal::kFrameHeaderBytes + journal::kMaxRecordBytes) {
    return make_error(ErrorCode::kInternal, "journal batch of " + std::to_string(records.size()) +
                                                " records is too large for one frame");
  }
  if (!log_fd_) {
    if (auto ok = compact(); !ok) return ok;
  }
  // Room for the record and, after it, the zero header that ends the records.
  if (auto ok = reserve(log_bytes_ + frame_.size() + kFrameHeaderSlack); !ok) return ok;
  char* at = log_map_.data() + log_bytes_;
  std::memcpy(at + journal::kFrameHeaderBytes, frame_.data() + journal::kFrameHeaderBytes,
              frame_.size() - journal::kFrameHeaderBytes);
  // The header last, in one store: until it is there the record does not exist.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  uint64_t header;
  static_assert(sizeof(header) == journal::kFrameHeaderBytes);
  std::memcpy(&header, frame_.data(), sizeof(header));
  std::memcpy(at, &header, sizeof(header));
  log_bytes_ += frame_.size();
  return {};
}

Result<void> JournalFile::compact() {
  const uint64_t generation = state_.generation() + 1;
  const std::string snapshot = state_.snapshot(generation);
  if (auto ok = write_file_atomically(dir_, kSnapshotName, snapshot); !ok) return ok;
  // From here the old log is stale: not one more record may go there.
  log_fd_.reset();
  log_map_.reset();
  const Checkpoint checkpoint{generation, state_.next_id(), state_.next_session()};
  (void)state_.apply(checkpoint);  // a checkpoint applies to any state
  const std::string header = journal::encode_record(checkpoint);
  if (auto ok = write_file_atomically(dir_, kLogName, header); !ok) return ok;
  const std::string path = log_path();
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return errno_error(ErrorCode::kInternal, "cannot open " + path, errno);
  return use_log(std::move(fd), header.size());
}

bool JournalFile::compaction_due() const {
  if (log_bytes_ < kMinCompactBytes) return false;
  size_t estimate = state_.leases().size() * kLeaseBytesEstimate +
                    state_.holds().size() * kHoldBytesEstimate + state_.guard_ports().size() * 4;
  return log_bytes_ > 4 * estimate;
}

}  // namespace portbroker::broker
