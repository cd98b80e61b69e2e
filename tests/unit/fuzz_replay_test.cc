// Every checked-in fuzz seed and every regression input (an input that once crashed a target)
// through the pure fuzz targets, without libFuzzer: a target aborts on a broken invariant, and
// the sanitizer build (make test-asan) catches what libFuzzer's build would.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/fuzz/targets.h"

namespace {

namespace fs = std::filesystem;

// Feeds every file of tests/fuzz/{corpus,regressions}/NAME to `target`; returns how many.
size_t replay(const std::string& name, int (*target)(const uint8_t*, size_t)) {
  size_t n = 0;
  for (const char* kind : {"corpus", "regressions"}) {
    fs::path dir = fs::path(PB_FUZZ_DIR) / kind / name;
    if (!fs::is_directory(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::ostringstream bytes;
      bytes << in.rdbuf();
      const std::string input = bytes.str();
      INFO("input: " << entry.path().string());
      CHECK(target(reinterpret_cast<const uint8_t*>(input.data()), input.size()) == 0);
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE("the socket-spec fuzz target's seeds and regressions") {
  CHECK(replay("spec", &pbfuzz::spec_one) >= 10);
}

TEST_CASE("the policy fuzz target's seeds and regressions") {
  CHECK(replay("policy", &pbfuzz::policy_one) >= 3);
}

TEST_CASE("the record fuzz target's seeds and regressions") {
  CHECK(replay("record", &pbfuzz::record_one) >= 20);
}
