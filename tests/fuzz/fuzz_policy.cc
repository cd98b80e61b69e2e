// The policy parser (TOML through toml++ into the policy model), then what the daemon does with
// a policy it accepted: lint it, compute the guard's ports, and decide requests.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "broker/core/policy.h"
#include "tests/fuzz/targets.h"

namespace {

using namespace portbroker;
using namespace portbroker::broker;

// A fixed account table: the fuzzer must not depend on the host's passwd.
class FixedNames final : public NameResolver {
 public:
  std::optional<uint32_t> uid_of(std::string_view user) const override {
    if (user == "root") return 0;
    if (user == "alice") return 1000;
    if (user == "www-data") return 33;
    if (user == "unbound") return 101;
    if (user == "mssql") return 996;
    return std::nullopt;
  }
  std::optional<uint32_t> gid_of(std::string_view group) const override {
    if (group == "root") return 0;
    if (group == "web") return 2000;
    return std::nullopt;
  }
};

}  // namespace

namespace pbfuzz {

int policy_one(const uint8_t* data, size_t size) {
  static const FixedNames names;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto policy = parse_policy(text, "fuzz.toml", names);
  if (!policy.ok()) return 0;
  (void)policy->lint();
  (void)policy->guarded_ports();
  auto any = IpAddress::parse("0.0.0.0");
  auto local6 = IpAddress::parse("::1");
  const Principal callers[] = {{0, 0, {}, ""}, {1000, 2000, {33}, "/system.slice/web.service"}};
  for (const Principal& who : callers) {
    for (uint16_t port : {uint16_t{0}, uint16_t{80}, uint16_t{8080}, uint16_t{20000}}) {
      for (Mode mode : {Mode::kExclusive, Mode::kShared, Mode::kReuseport}) {
        Request req{Protocol::kTcp, *any, port, mode, port == 20000};
        HeldLease held[] = {{Protocol::kUdp, *local6, 53}};
        (void)policy->check(who, req, held);
      }
    }
    (void)policy->pools_for(who, Protocol::kUdp);
    (void)policy->reservations_at(Protocol::kTcp, 80);
    (void)policy->pools_at(Protocol::kTcp, 20000);
  }
  return 0;
}

}  // namespace pbfuzz

// The unit tests replay the corpus and every regression input through policy_one (without
// libFuzzer).
#ifndef PB_FUZZ_NO_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return pbfuzz::policy_one(data, size);
}
#endif
