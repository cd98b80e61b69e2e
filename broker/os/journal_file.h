// The lease journal on disk: `journal.snap` (a compacted snapshot, replaced atomically) and
// `journal.log` (records appended since), in a private directory under the runtime directory.
//
// No fsync: the runtime directory is /run, a tmpfs. The journal must survive the daemon's
// death (a crash, kill -9, an upgrade), not the machine's, and a write(2) that returned is in
// the page cache whatever happens to the process after it.
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

  // Writes one record (one write(2)) and applies it to state(). On failure nothing is written
  // and state() is unchanged: a record that does not apply to the state is refused before it
  // is written (kInternal), and a failed write is cut back off the log. ENOSPC and EDQUOT give
  // kResourceExhausted, other errors kInternal, each naming the file and the errno.
  Result<void> append(const journal::Record& record);
  // The same for several records, written all or none in one frame (encode_batch): a crash
  // or a failed write never leaves part of them. Checked as a sequence, so a later record may
  // depend on an earlier one.
  Result<void> append(std::span<const journal::Record> records);

  // Writes a snapshot of state() and starts a new, empty log. On failure the journal on disk
  // still holds exactly state(), and the next append() retries the compaction first.
  Result<void> compact();
  // The log has grown well past what a snapshot of the state would take: compact() is due.
  // Cheap (no encoding), so the daemon may ask after every append.
  bool compaction_due() const;

  size_t log_bytes() const { return log_bytes_; }
  std::string log_path() const { return dir_ + "/" + kLogName; }
  std::string snapshot_path() const { return dir_ + "/" + kSnapshotName; }

  static constexpr const char* kLogName = "journal.log";
  static constexpr const char* kSnapshotName = "journal.snap";

 private:
  explicit JournalFile(std::string dir) : dir_(std::move(dir)) {}
  Result<void> replay_snapshot();
  Result<void> replay_log();
  // Truncates the log back to log_bytes_ after a failed write; on failure drops the fd so
  // that the next append compacts instead of writing after a torn record.
  void cut_back();

  std::string dir_;
  journal::JournalState state_;
  std::vector<std::string> ignored_;
  UniqueFd log_fd_;  // empty: the log must be started again (compact()) before an append
  size_t log_bytes_ = 0;
  std::string frame_;
};

}  // namespace portbroker::broker
