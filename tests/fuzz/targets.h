// The pure fuzz targets as functions, so that the unit tests replay the checked-in corpus and
// every regression input through exactly the code libFuzzer runs (tests/unit/fuzz_replay_test.cc).
// Each returns 0 and aborts on a broken invariant, as libFuzzer expects.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pbfuzz {

int spec_one(const uint8_t* data, size_t size);    // fuzz_spec.cc
int policy_one(const uint8_t* data, size_t size);  // fuzz_policy.cc
int record_one(const uint8_t* data, size_t size);  // fuzz_record.cc

}  // namespace pbfuzz
