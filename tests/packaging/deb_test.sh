#!/usr/bin/env bash
# `make deb`'s build: the three packages build with dpkg-buildpackage (the symbols file checked
# strictly), lintian reports no error or warning, and each package holds what it should. The
# maintainer scripts enable and start the unit where systemd runs and purge the daemon's state.
# Usage: deb_test.sh SOURCE_DIR OUT_DIR
set -euo pipefail
source_dir=$1 out=$2
source "$(dirname "$0")/cli_lib.sh"
for tool in dpkg-buildpackage dh lintian scdoc; do
  command -v "$tool" >/dev/null || fail "$tool not found (packaging/install-deps.sh installs it)"
done

bash "$source_dir/packaging/build-deb.sh" "$out" || fail "make deb failed"
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
version=$(dpkg-parsechangelog -l "$source_dir/packaging/debian/changelog" -S Version)

contains() {  # contains PACKAGE PATH...: the package holds each path
  local deb=$out/${1}_${version}_$arch.deb
  [ -f "$deb" ] || fail "$deb was not built"
  local list
  list=$(dpkg-deb -c "$deb" | awk '{ print $6 }' | sed 's|^\./|/|')
  shift
  for path in "$@"; do
    grep -qx "$path" <<<"$list" || fail "$(basename "$deb") lacks $path"
  done
}
contains portbroker /usr/bin/portbrokerd /usr/bin/portbroker \
  /lib/systemd/system/portbroker.service /usr/share/bash-completion/completions/portbroker \
  /usr/share/doc/portbroker/examples/portbroker.toml.example \
  /usr/share/man/man1/portbroker.1.gz /usr/share/man/man5/portbroker.toml.5.gz \
  /usr/share/man/man8/portbrokerd.8.gz
contains libportbroker0 "/usr/lib/$multiarch/libportbroker.so.0" \
  "/usr/lib/$multiarch/libportbroker.so.$version"
contains libportbroker-dev /usr/include/portbroker/client.hpp /usr/include/portbroker/portbroker.h \
  "/usr/lib/$multiarch/libportbroker.so" "/usr/lib/$multiarch/pkgconfig/portbroker.pc" \
  "/usr/lib/$multiarch/cmake/portbroker/portbrokerConfig.cmake"

scripts=$out/control
rm -rf "$scripts"
dpkg-deb -e "$out/portbroker_${version}_$arch.deb" "$scripts"
grep -q 'deb-systemd-helper .*enable.*portbroker.service' "$scripts/postinst" ||
  fail "postinst does not enable the unit"
grep -q '_dh_action=start' "$scripts/postinst" &&
  grep -q "deb-systemd-invoke \$_dh_action 'portbroker.service'" "$scripts/postinst" ||
  fail "postinst does not start the unit"
grep -q 'rm -rf /var/lib/portbroker /run/portbroker' "$scripts/postrm" ||
  fail "postrm does not remove the daemon's state on purge"
dpkg-deb -e "$out/libportbroker0_${version}_$arch.deb" "$scripts/lib"
grep -q '^libportbroker 0 libportbroker0' "$scripts/lib/shlibs" || fail "no shlibs entry"
grep -q 'portbroker_connect@PORTBROKER_1' "$scripts/lib/symbols" || fail "the symbols file lacks the C ABI"
echo "deb_test: three packages built, lintian clean, contents and maintainer scripts as expected"
