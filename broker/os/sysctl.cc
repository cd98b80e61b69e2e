#include "broker/os/sysctl.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "broker/os/files.h"
#include "portbroker/fd.hpp"

namespace portbroker::broker {

namespace {

// What fits in one write to a proc_do_large_bitmap sysctl: the kernel reads at most a page
// less one byte per write, and a list split across writes could be misparsed at the seam.
constexpr size_t kMaxWrite = 4095;

}  // namespace

Result<std::vector<PortRange>> read_reserved_ports(const std::string& path) {
  auto text = read_whole_file(path, size_t{1} << 20);
  if (!text) return text.error();
  auto ports = parse_port_list(text.value());
  if (!ports) return make_error(ErrorCode::kInternal, path + ": " + ports.error().message);
  return ports;
}

Result<void> write_reserved_ports(std::span<const PortRange> ports, const std::string& path) {
  std::string text = format_port_list(std::vector<PortRange>(ports.begin(), ports.end())) + "\n";
  if (text.size() > kMaxWrite) {
    return make_error(ErrorCode::kInvalidOption,
                      "reserved port list is " + std::to_string(text.size()) +
                          " bytes, more than the kernel takes in one write (" +
                          std::to_string(kMaxWrite) + "); merge ranges");
  }
  // O_TRUNC means nothing to a sysctl (as with `echo > file`) but keeps a plain file standing
  // in for one (tests, a chroot) from keeping a longer old tail.
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd) return errno_error(ErrorCode::kInternal, "cannot open " + path, errno);
  ssize_t n;
  do {
    n = ::write(fd.get(), text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_error(ErrorCode::kInternal, "cannot write " + path, errno);
  if (static_cast<size_t>(n) != text.size()) {
    return make_error(ErrorCode::kInternal, "short write to " + path);
  }
  return {};
}

Result<PortRange> read_local_port_range(const std::string& path) {
  auto text = read_whole_file(path, size_t{1} << 20);
  if (!text) return text.error();
  auto range = parse_local_port_range(text.value());
  if (!range) return make_error(ErrorCode::kInternal, path + ": " + range.error().message);
  return range;
}

Result<GuardPlan> apply_reserved_ports(std::span<const PortRange> ours_before,
                                       std::span<const PortRange> wanted, const std::string& path) {
  auto current = read_reserved_ports(path);
  if (!current) return current.error();
  GuardPlan plan = plan_reserved_ports(current.value(), ours_before, wanted);
  if (plan.changed) {
    if (auto w = write_reserved_ports(plan.value, path); !w) return w.error();
  }
  return plan;
}

bool read_bindv6only() {
  auto text = read_whole_file("/proc/sys/net/ipv6/bindv6only", 64);
  return text && !text->empty() && (*text)[0] != '0';
}

}  // namespace portbroker::broker
