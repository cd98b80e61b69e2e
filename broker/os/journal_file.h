// The lease journal on disk: `journal.snap` (a compacted snapshot, replaced atomically) and
// `journal.log` (records appended since), in a private directory under the runtime directory.
//
// No fsync: the runtime directory is /run, a tmpfs. The journal must survive the daemon's
// death (a crash, kill -9, an upgrade), not the machine's.
//
// Appends are stores into a shared mapping of the log, not write(2) calls: a record costs a
// memcpy instead of a system call on every acquire and release. The stores are in the page
// cache the moment they are made, so the daemon's death loses none of them. The log's space is
// allocated ahead with fallocate(2), in steps: a full file system fails that call, cleanly,
// instead of a store into an unbacked page (SIGBUS); the rest of the file reads as zeros, which
// ends the records (see journal::decode_records). A record's header is stored last, in one
// 8-byte store, so a death in the middle of an append leaves a zero header: the record was
// never acknowledged and reads as not there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "broker/core/journal.h"
#include "portbroker/fd.hpp"
#include "portbroker/result.hpp"

namespace portbroker::broker {

class JournalFile {
 public:
  // Reads `dir`/journal.snap and `dir`/journal.log and replays them. `dir` is created (0700)
  // when missing, and refused when another user may read it: records carry lease tokens,
  // which let another uid take a lingering lease. A torn last record is dropped from the log
  // (and reported in ignored()); a bad checksum or a record that does not apply is an error
  // naming the file and offset, and changes nothing on disk.
  static Result<JournalFile> open(const std::string& dir);

  JournalFile(JournalFile&&) = default;
  JournalFile& operator=(JournalFile&&) = default;

  // Every change the journal holds, including each append() that succeeded.
  const journal::JournalState& state() const { return state_; }
  // What open() found and set aside, one line each: "journal.log: torn tail, 13 bytes ignored".
  const std::vector<std::string>& ignored() const { return ignored_; }

  // Writes one record and applies it to state(). On failure nothing is written and state() is
  // unchanged: a record that does not apply to the state is refused before it is written
  // (kInternal); no room for it (the log's space cannot grow) gives kResourceExhausted for
  // ENOSPC and EDQUOT, kInternal for other errors, each naming the file and the errno.
  Result<void> append(const journal::Record& record);
  // The same for several records, written all or none in one frame (encode_batch): a crash
  // or a failed write never leaves part of them. Checked as a sequence, so a later record may
  // depend on an earlier one.
  Result<void> append(std::span<const journal::Record> records);
  // The same, taking the records' strings into state() instead of copying them.
  Result<void> append(std::vector<journal::Record>&& records);

  // Writes a snapshot of state() and starts a new, empty log. On failure the journal on disk
  // still holds exactly state(), and the next append() retries the compaction first.
  Result<void> compact();
  // The log has grown well past what a snapshot of the state would take: compact() is due.
  // Cheap (no encoding), so the daemon may ask after every append.
  bool compaction_due() const;

  // The records' bytes in the log (the file is larger: its space is allocated ahead).
  size_t log_bytes() const { return log_bytes_; }
  std::string log_path() const { return dir_ + "/" + kLogName; }
  std::string snapshot_path() const { return dir_ + "/" + kSnapshotName; }

  static constexpr const char* kLogName = "journal.log";
  static constexpr const char* kSnapshotName = "journal.snap";

 private:
  explicit JournalFile(std::string dir) : dir_(std::move(dir)) {}
  // append() but for applying the records to state_.
  Result<void> store(std::span<const journal::Record> records);
  Result<void> replay_snapshot();
  Result<void> replay_log();
  // Takes `fd` as the log whose records end at `records_end`: zeros what lies after them (a
  // torn append) and maps it with room allocated for more (when there is room: else append()
  // tries again).
  Result<void> use_log(UniqueFd fd, size_t records_end);
  // Makes the log's allocated and mapped space at least `bytes`.
  Result<void> reserve(size_t bytes);

  // The log's shared mapping; unmapped when it goes.
  class Mapping {
   public:
    Mapping() = default;
    Mapping(Mapping&& o) noexcept;
    Mapping& operator=(Mapping&& o) noexcept;
    ~Mapping() { reset(); }
    void reset();
    char* data() const { return data_; }
    size_t size() const { return size_; }
    // Maps (or remaps) the first `size` bytes of `fd`.
    Result<void> map(int fd, size_t size);

   private:
    char* data_ = nullptr;
    size_t size_ = 0;
  };

  std::string dir_;
  journal::JournalState state_;
  std::vector<std::string> ignored_;
  UniqueFd log_fd_;  // empty: the log must be started again (compact()) before an append
  Mapping log_map_;
  size_t log_bytes_ = 0;
  std::string frame_;
};

}  // namespace portbroker::broker
