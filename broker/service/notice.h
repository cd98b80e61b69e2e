// Something the daemon should log. The service layer never logs itself: it hands these up.
#pragma once

#include <string>
#include <vector>

namespace portbroker::broker {

struct Notice {
  enum Level { kInfo, kWarn } level = kInfo;
  std::string text;
};

using Notices = std::vector<Notice>;

}  // namespace portbroker::broker
