#!/usr/bin/env bash
# `make deb`: builds the Debian packages (portbroker, libportbroker0, libportbroker-dev) from a
# copy of this source tree in which packaging/debian is laid out as debian/ (the tree's top level
# stays as DESIGN.md fixes it), then checks them with lintian.
# Usage: build-deb.sh OUT_DIR   (the packages and the build log end up in OUT_DIR)
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)

version=$(sed -n 's/^project(portbroker VERSION \([0-9.]*\) .*/\1/p' "$source_dir/CMakeLists.txt")
changelog_version=$(dpkg-parsechangelog -l "$source_dir/packaging/debian/changelog" -S Version)
if [ "$version" != "$changelog_version" ]; then
  echo "build-deb: CMakeLists.txt says $version, packaging/debian/changelog $changelog_version" >&2
  exit 1
fi

tree=$out/portbroker-$version
rm -rf "$tree" "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
mkdir -p "$tree"
# The tracked and new (not ignored) files, as they are in the work tree.
if git -C "$source_dir" rev-parse --git-dir >/dev/null 2>&1; then
  git -C "$source_dir" ls-files -z --cached --others --exclude-standard |
    (cd "$source_dir" && xargs -0 cp --parents -t "$tree" 2>/dev/null || true)
else
  tar -C "$source_dir" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$tree" -xf -
fi
cp -r "$source_dir/packaging/debian" "$tree/debian"

# ccache reuses the objects of a previous package build, from this or another copy.
if command -v ccache >/dev/null; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
  # Paths below the copy count as relative (and debug info maps them so), wherever it is.
  export CCACHE_BASEDIR=$tree CCACHE_NOHASHDIR=1
fi
export DEB_BUILD_OPTIONS="parallel=${JOBS:-2} ${DEB_BUILD_OPTIONS:-}"
echo "build-deb: dpkg-buildpackage in $tree (log: $out/build.log)"
if ! (cd "$tree" && dpkg-buildpackage -b -us -uc) >"$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (whole log: $out/build.log)" >&2
  exit 1
fi
changes=$(ls "$out"/portbroker_"$version"_*.changes)
# Errors and warnings fail; overrides are in packaging/debian/*.lintian-overrides, with reasons.
lintian --fail-on error,warning --display-level '>=warning' "$changes"
ls "$out"/*.deb
