#include "portbroker/info.hpp"

#include <algorithm>
#include <string_view>

namespace portbroker {

bool event_is_about_lease(const Event& e) {
  static constexpr std::string_view kLeaseKinds[] = {"acquired", "reclaimed",     "released",
                                                     "revoked",  "holder-exited", "lingering",
                                                     "expired",  "refused"};
  return std::find(std::begin(kLeaseKinds), std::end(kLeaseKinds), e.kind) != std::end(kLeaseKinds);
}

}  // namespace portbroker
