// The one impure corner of the policy module: names through NSS, as every other tool sees them.
#include "broker/os/names.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

namespace portbroker::broker {

namespace {

// getpw*_r/getgr*_r report ERANGE when the caller's buffer is too small (large groups are
// common on directory-backed systems), so grow it rather than guessing a size.
template <typename Entry, typename Lookup>
bool lookup_with_growing_buffer(Lookup lookup, Entry& entry) {
  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 4096);
  for (;;) {
    Entry* result = nullptr;
    int rc = lookup(&entry, buf.data(), buf.size(), &result);
    if (rc == ERANGE && buf.size() < (size_t{1} << 24)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    return rc == 0 && result != nullptr;
  }
}

class SystemNameResolver final : public NameResolver {
 public:
  std::optional<uint32_t> uid_of(std::string_view user) const override {
    if (user.empty() || user.find('\0') != std::string_view::npos) return std::nullopt;
    std::string name(user);
    struct passwd pw {};
    auto lookup = [&](struct passwd* e, char* b, size_t n, struct passwd** r) {
      return ::getpwnam_r(name.c_str(), e, b, n, r);
    };
    if (!lookup_with_growing_buffer(lookup, pw)) return std::nullopt;
    return pw.pw_uid;
  }

  std::optional<uint32_t> gid_of(std::string_view group) const override {
    if (group.empty() || group.find('\0') != std::string_view::npos) return std::nullopt;
    std::string name(group);
    struct group gr {};
    auto lookup = [&](struct group* e, char* b, size_t n, struct group** r) {
      return ::getgrnam_r(name.c_str(), e, b, n, r);
    };
    if (!lookup_with_growing_buffer(lookup, gr)) return std::nullopt;
    return gr.gr_gid;
  }
};

}  // namespace

const NameResolver& system_name_resolver() {
  static const SystemNameResolver resolver;
  return resolver;
}

}  // namespace portbroker::broker
