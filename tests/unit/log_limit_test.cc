#include "broker/daemon/log_limit.h"

#include <doctest/doctest.h>

#include <array>

using portbroker::broker::hex_prefix;
using portbroker::broker::LogLimiter;

TEST_CASE("log limiter: a burst per uid and window, then one count of what was dropped") {
  LogLimiter limit(3, 1000);
  size_t dropped = 99;
  for (int i = 0; i < 3; ++i) {
    CHECK(limit.allow(7, 10, &dropped));
    CHECK(dropped == 0);
  }
  for (int i = 0; i < 500; ++i) CHECK_FALSE(limit.allow(7, 20 + i, &dropped));
  // Another uid is not held back by the first one's flood.
  CHECK(limit.allow(8, 30, &dropped));
  CHECK(dropped == 0);
  // The next window: logged again, saying how many were dropped.
  CHECK(limit.allow(7, 1010, &dropped));
  CHECK(dropped == 500);
  CHECK(limit.allow(7, 1011, &dropped));
  CHECK(dropped == 0);
}

TEST_CASE("log limiter: 10,000 lines from one uid log at most the burst per window") {
  LogLimiter limit(10, 60'000);
  size_t logged = 0, dropped = 0;
  for (uint64_t t = 0; t < 10'000; ++t) logged += limit.allow(1000, t, &dropped) ? 1 : 0;
  CHECK(logged == 10);
}

TEST_CASE("log limiter: many uids stay bounded and each gets its burst") {
  LogLimiter limit(1, 10);
  size_t dropped = 0;
  for (uint32_t uid = 0; uid < 20'000; ++uid) CHECK(limit.allow(uid, uid / 100, &dropped));
}

TEST_CASE("hex prefix: a short prefix and the size, never the raw bytes") {
  std::array<unsigned char, 20> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(i * 17);
  CHECK(hex_prefix(bytes, 4) == "00112233... (20 bytes)");
  CHECK(hex_prefix(std::span(bytes).first(2)) == "0011 (2 bytes)");
  CHECK(hex_prefix({}) == " (0 bytes)");
}
