// The Python package (client/python): installed with pip from the tree into a scratch directory,
// then its pytest suite runs against the real daemon in this private network namespace.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "harness.h"

using namespace pbtest;

TEST_CASE("the Python package: pip-installed from the tree, its pytest suite passes") {
  FdLeakCheck fds;
  TempDir scratch;
  const std::string src = scratch.path() + "/src";
  const std::string site = scratch.path() + "/site";
  // A copy, so that pip's in-tree build leaves nothing behind in the source tree.
  std::error_code copy_error;
  std::filesystem::copy(PB_PYTHON_SRC, src, std::filesystem::copy_options::recursive, copy_error);
  REQUIRE_MESSAGE(!copy_error, "cannot copy " PB_PYTHON_SRC ": " << copy_error.message());
  CommandResult pip = run_command(
      {PB_PYTHON3, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
       "--disable-pip-version-check", "--root-user-action=ignore", "--target", site, src},
      {}, std::chrono::seconds(120));
  REQUIRE_MESSAGE(pip.status.ok(), pip.describe());

  Daemon d({.args = {"--pool", "24100-24109"}});
  SpawnOptions opts = python_options(d);
  opts.env["PYTHONPATH"] = site;
  opts.env["PORTBROKER_EXPECT_PACKAGE_UNDER"] = site;
  opts.env["PORTBROKER_CLI"] = cli_path();
  CommandResult tests = run_command({PB_PYTHON3, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     "-o", "console_output_style=classic", src + "/tests"},
                                    opts, std::chrono::seconds(240));
  CHECK_MESSAGE(tests.status.ok(), tests.describe());
  CHECK_MESSAGE(contains(tests.out, " passed"), tests.out);
  CHECK_MESSAGE(!contains(tests.out, "skipped"), tests.out);
  CHECK(d.wait_until([](portbroker::Client& c) {
    auto leases = c.list();
    return leases && leases->empty();
  }));
  d.check_no_fd_leak();
}
