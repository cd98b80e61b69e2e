#include "broker/daemon/log_limit.h"

#include <algorithm>
#include <iterator>

namespace portbroker::broker {

namespace {

// More uids than this with a window open: the windows that ended are forgotten.
constexpr size_t kMaxTrackedUids = 4096;

}  // namespace

bool LogLimiter::allow(uint32_t uid, uint64_t now_ms, size_t* suppressed) {
  if (windows_.size() >= kMaxTrackedUids && windows_.find(uid) == windows_.end()) {
    std::erase_if(windows_, [&](const auto& entry) {
      return now_ms - entry.second.start_ms >= window_ms_ && entry.second.dropped == 0;
    });
  }
  Window& w = windows_[uid];
  if (w.logged == 0 || now_ms - w.start_ms >= window_ms_) {
    w.start_ms = now_ms;
    w.logged = 0;
  }
  if (w.logged >= burst_) {
    ++w.dropped;
    return false;
  }
  ++w.logged;
  *suppressed = w.dropped;
  w.dropped = 0;
  return true;
}

std::string hex_prefix(std::span<const unsigned char> bytes, size_t max_bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  const size_t shown = std::min(bytes.size(), max_bytes);
  out.reserve(shown * 2 + 24);
  for (size_t i = 0; i < shown; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 0xf];
  }
  if (shown < bytes.size()) out += "...";
  out += " (" + std::to_string(bytes.size()) + " bytes)";
  return out;
}

}  // namespace portbroker::broker
