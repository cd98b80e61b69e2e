#include "broker/os/journal_file.h"

#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "broker/os/files.h"
#include "unit/journal_samples.h"

using namespace portbroker;
using namespace portbroker::broker;
using namespace portbroker::broker::journal;

namespace {

size_t open_fd_count() {
  size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d != nullptr);
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

// A private temporary directory, removed with everything in it.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/pb-journal-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string journal() const { return path + "/journal"; }
};

JournalFile open_ok(const std::string& dir) {
  auto j = JournalFile::open(dir);
  REQUIRE_MESSAGE(j.ok(), (j.ok() ? "" : j.error().message));
  return std::move(j).value();
}

void append_ok(JournalFile& j, const Record& r) {
  auto ok = j.append(r);
  REQUIRE_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));
}

size_t file_size(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<size_t>(st.st_size);
}

void truncate_to(const std::string& path, size_t size) {
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(size)) == 0);
}

// Whether the log file holds `records_end` bytes of records, then only the zeros of the space
// allocated ahead.
bool log_file_ends_at(const std::string& path, size_t records_end) {
  auto text = read_whole_file(path);
  return text.ok() && text->size() >= records_end &&
         text->find_first_not_of('\0', records_end) == std::string::npos;
}

}  // namespace

TEST_CASE("a new journal keeps every appended record across a reopen") {
  const size_t fds = open_fd_count();
  TempDir tmp;
  const auto history = pbtest::HistoryMaker(10).make(200);
  JournalState expected;
  {
    JournalFile j = open_ok(tmp.journal());
    CHECK(j.ignored().empty());
    CHECK(j.state().leases().empty());
    for (const Record& r : history) {
      append_ok(j, r);
      REQUIRE(expected.apply(r));
    }
    CHECK(j.state() == expected);
    CHECK(log_file_ends_at(j.log_path(), j.log_bytes()));
  }
  struct stat st {};
  REQUIRE(::stat(tmp.journal().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  {
    JournalFile j = open_ok(tmp.journal());
    CHECK(j.ignored().empty());
    CHECK(j.state() == expected);
    CHECK(j.state().next_id() == expected.next_id());
  }
  CHECK(open_fd_count() == fds);
}

TEST_CASE("a record that does not apply is refused before it is written") {
  TempDir tmp;
  JournalFile j = open_ok(tmp.journal());
  append_ok(j, pbtest::sample_granted(2, 1));
  const size_t before = j.log_bytes();
  auto ended = j.append(LeaseEnded{9});
  REQUIRE_FALSE(ended.ok());
  CHECK(ended.error().message == "journal record refused (lease ended): lease 9 is not live");
  auto checkpoint = j.append(Checkpoint{5, 1, 1});
  REQUIRE_FALSE(checkpoint.ok());
  CHECK(j.log_bytes() == before);
  CHECK(log_file_ends_at(j.log_path(), before));
}

TEST_CASE("a batch is appended all or none") {
  TempDir tmp;
  JournalState expected;
  const std::vector<Record> batch = {pbtest::sample_granted(2, 1, Mode::kShared),
                                     pbtest::sample_granted(3, 1, Mode::kShared),
                                     LeaseLingering{3, 100}};
  {
    JournalFile j = open_ok(tmp.journal());
    auto ok = j.append(batch);
    REQUIRE_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));
    for (const Record& r : batch) REQUIRE(expected.apply(r));
    CHECK(j.state() == expected);
    const size_t before = j.log_bytes();
    const std::vector<Record> bad = {LeaseEnded{2}, LeaseEnded{2}};
    auto refused = j.append(bad);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().message ==
          "journal record refused (lease ended, ...): record 2 of 2: lease 2 is not live");
    CHECK(j.log_bytes() == before);
    CHECK(j.state() == expected);
  }
  JournalFile j = open_ok(tmp.journal());
  CHECK(j.state() == expected);
  CHECK(j.state().leases().at(3).lingering_until_ms == 100);
}

TEST_CASE("a last record cut short is ignored, reported and cleared so appends stay sound") {
  TempDir tmp;
  const auto history = pbtest::HistoryMaker(11).make(20);
  JournalState expected;
  size_t whole = 0;
  std::string log;
  {
    JournalFile j = open_ok(tmp.journal());
    for (size_t i = 0; i + 1 < history.size(); ++i) {
      append_ok(j, history[i]);
      REQUIRE(expected.apply(history[i]));
    }
    whole = j.log_bytes();
    append_ok(j, history.back());
    log = j.log_path();
  }
  std::string reported;
  SUBCASE("the file ends inside the record") {
    truncate_to(log, whole + 5);
    reported = "journal.log: torn tail, 5 bytes ignored";
  }
  SUBCASE("the daemon died after the payload, before the header's store") {
    auto text = read_whole_file(log);
    REQUIRE(text.ok());
    std::string damaged = *text;
    std::fill_n(damaged.begin() + static_cast<std::ptrdiff_t>(whole), kFrameHeaderBytes, '\0');
    REQUIRE(write_file_atomically(tmp.journal(), "journal.log", damaged));
    reported = "journal.log: torn tail, ";  // up to the payload's last non-zero byte
  }
  JournalState more = expected;
  LeaseGranted next = pbtest::sample_granted(expected.next_id() + 1, expected.next_id());
  {
    JournalFile j = open_ok(tmp.journal());
    REQUIRE(j.ignored().size() == 1);
    CHECK(j.ignored()[0].find(reported) == 0);
    CHECK(j.state() == expected);
    CHECK(j.log_bytes() == whole);
    CHECK(log_file_ends_at(log, whole));  // nothing of the dead record can resurface
    append_ok(j, next);
    REQUIRE(more.apply(next));
  }
  JournalFile j = open_ok(tmp.journal());
  CHECK(j.ignored().empty());
  CHECK(j.state() == more);
}

TEST_CASE("a damaged record in the middle of the log is an error naming file and offset") {
  TempDir tmp;
  std::string log;
  size_t offset = 0;
  {
    JournalFile j = open_ok(tmp.journal());
    append_ok(j, pbtest::sample_granted(2, 1));
    offset = j.log_bytes();
    append_ok(j, pbtest::sample_granted(4, 3, Mode::kShared, 81));
    append_ok(j, LeaseEnded{2});
    log = j.log_path();
  }
  auto text = read_whole_file(log);
  REQUIRE(text.ok());
  std::string damaged = *text;
  damaged[offset + 20] = static_cast<char>(damaged[offset + 20] ^ 1);
  REQUIRE(write_file_atomically(tmp.journal(), "journal.log", damaged));
  auto j = JournalFile::open(tmp.journal());
  REQUIRE_FALSE(j.ok());
  CHECK(j.error().message == log + ": at offset " + std::to_string(offset) + ": bad checksum");
  // Nothing on disk was changed by the failed open.
  auto after = read_whole_file(log);
  REQUIRE(after.ok());
  CHECK(*after == damaged);
}

TEST_CASE("compaction then reopen gives the same state, and the log starts again") {
  const size_t fds = open_fd_count();
  TempDir tmp;
  const auto history = pbtest::HistoryMaker(12).make(400);
  JournalState expected;
  {
    JournalFile j = open_ok(tmp.journal());
    for (size_t i = 0; i < 300; ++i) {
      append_ok(j, history[i]);
      REQUIRE(expected.apply(history[i]));
    }
    const size_t grown = j.log_bytes();
    REQUIRE(j.compact());
    CHECK(j.log_bytes() < grown);
    CHECK(log_file_ends_at(j.log_path(), j.log_bytes()));
    CHECK(j.state() == expected);
    for (size_t i = 300; i < history.size(); ++i) {
      append_ok(j, history[i]);
      REQUIRE(expected.apply(history[i]));
    }
  }
  {
    JournalFile j = open_ok(tmp.journal());
    CHECK(j.ignored().empty());
    CHECK(j.state() == expected);
    REQUIRE(j.compact());
  }
  JournalFile j = open_ok(tmp.journal());
  CHECK(j.state() == expected);
  CHECK(open_fd_count() == fds + 1);  // j's log
}

TEST_CASE("a compaction cut short after the snapshot: the older log is ignored, nothing lost") {
  TempDir tmp;
  const auto history = pbtest::HistoryMaker(13).make(100);
  JournalState expected;
  std::string old_log;
  {
    JournalFile j = open_ok(tmp.journal());
    for (const Record& r : history) {
      append_ok(j, r);
      REQUIRE(expected.apply(r));
    }
    auto text = read_whole_file(j.log_path());
    REQUIRE(text.ok());
    old_log = *text;
    REQUIRE(j.compact());
  }
  // The crash came between the snapshot's rename and the new log's.
  REQUIRE(write_file_atomically(tmp.journal(), "journal.log", old_log));
  {
    JournalFile j = open_ok(tmp.journal());
    REQUIRE(j.ignored().size() == 1);
    CHECK(j.ignored()[0].find("journal.log: generation 1 is older than journal.snap's 2") == 0);
    CHECK(j.state() == expected);
    append_ok(j, LeaseEnded{expected.leases().begin()->first});
    REQUIRE(expected.apply(LeaseEnded{expected.leases().begin()->first}));
  }
  JournalFile j = open_ok(tmp.journal());
  CHECK(j.ignored().empty());
  CHECK(j.state() == expected);
}

TEST_CASE("a log newer than the snapshot, or a truncated snapshot, is refused") {
  TempDir tmp;
  {
    JournalFile j = open_ok(tmp.journal());
    append_ok(j, pbtest::sample_granted(2, 1));
    REQUIRE(j.compact());
    append_ok(j, pbtest::sample_granted(4, 3, Mode::kShared, 81));
  }
  const std::string snap = tmp.journal() + "/journal.snap";
  SUBCASE("snapshot gone") {
    REQUIRE(::unlink(snap.c_str()) == 0);
    auto j = JournalFile::open(tmp.journal());
    REQUIRE_FALSE(j.ok());
    CHECK(j.error().message.find("generation 2 is newer than journal.snap's 0") !=
          std::string::npos);
  }
  SUBCASE("snapshot cut short") {
    truncate_to(snap, file_size(snap) - 1);
    auto j = JournalFile::open(tmp.journal());
    REQUIRE_FALSE(j.ok());
    CHECK(j.error().message == snap + " is truncated");
  }
}

TEST_CASE("the journal directory must be private: records carry lease tokens") {
  TempDir tmp;
  REQUIRE(::mkdir(tmp.journal().c_str(), 0755) == 0);
  REQUIRE(::chmod(tmp.journal().c_str(), 0755) == 0);
  auto j = JournalFile::open(tmp.journal());
  REQUIRE_FALSE(j.ok());
  CHECK(j.error().message.find("must be private") != std::string::npos);
}

TEST_CASE("compaction falls due when the log outgrows the state, not before") {
  TempDir tmp;
  JournalFile j = open_ok(tmp.journal());
  // A few long-lived leases, then churn: the log grows, the state does not.
  for (uint64_t id = 1; id < 20; id += 2) append_ok(j, pbtest::sample_granted(id + 1, id));
  CHECK_FALSE(j.compaction_due());
  uint64_t id = 100;
  size_t appended = 0;
  while (!j.compaction_due()) {
    append_ok(j, pbtest::sample_granted(id + 1, id, Mode::kExclusive, 9000));
    append_ok(j, LeaseEnded{id + 1});
    id += 2;
    appended += 2;
    REQUIRE(appended < 100'000);
  }
  CHECK(j.log_bytes() >= (size_t{1} << 20));
  const JournalState before = j.state();
  REQUIRE(j.compact());
  CHECK_FALSE(j.compaction_due());
  CHECK(j.state() == before);
}

namespace {

// Runs in a child with its own mount namespace: fills a 64 KiB tmpfs with the journal.
// Returns what went wrong, empty when all is well.
std::string fill_tiny_tmpfs(const std::string& mountpoint) {
  if (::unshare(CLONE_NEWNS) != 0) return std::string("unshare: ") + std::strerror(errno);
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return std::string("mount --make-rprivate /: ") + std::strerror(errno);
  }
  if (::mount("tmpfs", mountpoint.c_str(), "tmpfs", 0, "size=64k") != 0) {
    return std::string("mount tmpfs: ") + std::strerror(errno);
  }
  const std::string dir = mountpoint + "/journal";
  const size_t fds = open_fd_count();
  JournalState acknowledged;
  std::string error_message;
  ErrorCode error_code = ErrorCode::kOk;
  {
    auto opened = JournalFile::open(dir);
    if (!opened) return "open: " + opened.error().message;
    JournalFile j = std::move(opened).value();
    pbtest::HistoryMaker maker(14);
    const auto history = maker.make(6000);
    // Single records and batches of 2 and 3 in turn: a batch is acknowledged whole or not.
    for (size_t i = 0, n = 1; i < history.size(); i += n, n = n % 3 + 1) {
      std::span<const Record> part(history.data() + i, std::min(n, history.size() - i));
      auto ok = j.append(part);
      if (!ok) {
        error_message = ok.error().message;
        error_code = ok.error().code;
        if (!(j.state() == acknowledged)) return "the failed append changed the state";
        if (!log_file_ends_at(j.log_path(), j.log_bytes())) return "the failed append left bytes";
        if (j.append(part)) return "an append succeeded on a full file system";
        break;
      }
      for (const Record& r : part) {
        if (!acknowledged.apply(r)) return "the history does not apply";
      }
    }
  }
  if (error_message.empty()) return "6000 records fit in 64 KiB";
  const std::string want = "cannot append to " + dir + "/journal.log: No space left on device";
  if (error_message != want) return "error \"" + error_message + "\", want \"" + want + "\"";
  if (error_code != ErrorCode::kResourceExhausted) return "error code is not kResourceExhausted";
  if (acknowledged.leases().empty()) return "nothing was acknowledged before the disk filled";
  {
    auto reopened = JournalFile::open(dir);
    if (!reopened) return "reopen: " + reopened.error().message;
    if (!reopened->ignored().empty()) return "reopen ignored: " + reopened->ignored()[0];
    if (!(reopened->state() == acknowledged)) return "reopen: not the acknowledged records";
  }
  if (open_fd_count() != fds) return "fds leaked";
  return {};
}

}  // namespace

TEST_CASE("ENOSPC on a tiny tmpfs: a clear error, and exactly what was acknowledged survives") {
  TempDir tmp;
  int pipefd[2];
  REQUIRE(::pipe2(pipefd, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    std::string failure;
    try {  // a doctest REQUIRE in a helper throws; the child must never return into doctest
      failure = fill_tiny_tmpfs(tmp.path);
    } catch (...) {
      failure = "a REQUIRE failed in the child";
    }
    (void)write_all(pipefd[1], failure.data(), failure.size(), "pipe");
    ::_exit(failure.empty() ? 0 : 1);
  }
  ::close(pipefd[1]);
  std::string failure;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0) failure.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK_MESSAGE(failure.empty(), failure);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  // The tmpfs lived in the child's mount namespace only.
  CHECK_FALSE(std::filesystem::exists(tmp.journal()));
}
