// Log lines a client can cause at will (malformed records, refused connections) are rate
// limited per uid, so that a flood of garbage cannot fill the disk or drown other lines.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>

namespace portbroker::broker {

class LogLimiter {
 public:
  // At most `burst` lines per uid in each `window_ms`.
  LogLimiter(size_t burst, uint64_t window_ms) : burst_(burst), window_ms_(window_ms) {}

  // Whether a line for `uid` may be logged at `now_ms`. When it may, `*suppressed` is how many
  // lines of this uid were dropped before it (to be said once), else it is left alone.
  bool allow(uint32_t uid, uint64_t now_ms, size_t* suppressed);

 private:
  struct Window {
    uint64_t start_ms = 0;
    size_t logged = 0;
    size_t dropped = 0;
  };

  size_t burst_;
  uint64_t window_ms_;
  std::unordered_map<uint32_t, Window> windows_;
};

// "0a1b2c3d… (N bytes)": at most `max_bytes` of a client's record, in hex, for a log line that
// must never carry the client's raw bytes.
std::string hex_prefix(std::span<const unsigned char> bytes, size_t max_bytes = 16);

}  // namespace portbroker::broker
