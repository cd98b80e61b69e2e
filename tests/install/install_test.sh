#!/usr/bin/env bash
# Installs the build into a scratch prefix and moves it elsewhere (nothing may depend on where it
# was installed), then: everything an admin needs is there; the installed CLI and daemon run
# without LD_LIBRARY_PATH; an outside application builds against it with find_package(portbroker)
# and with pkg-config, and acquires a port from the installed daemon (in a private network
# namespace, so the host's ports are never touched).
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT
fail() {
  echo "install_test: FAIL: $*" >&2
  exit 1
}

cmake --install "$build_dir" --prefix "$scratch/installed" >/dev/null
mv "$scratch/installed" "$scratch/moved"
prefix=$scratch/moved
unset LD_LIBRARY_PATH

for f in bin/portbrokerd bin/portbroker lib/systemd/system/portbroker.service \
  share/bash-completion/completions/portbroker share/doc/portbroker/examples/portbroker.toml.example \
  share/man/man1/portbroker.1 share/man/man5/portbroker.toml.5 share/man/man8/portbrokerd.8; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
pc=$(find "$prefix" -name portbroker.pc)
grep -q '^prefix=${pcfiledir}/' "$pc" || fail "the .pc file is not relocatable: $(head -1 "$pc")"
! grep -rq "$scratch/installed" "$prefix/lib" || fail "an installed file names the install prefix"

"$prefix/bin/portbroker" --version | grep -q '^portbroker ' || fail "the installed CLI does not run"
"$prefix/bin/portbrokerd" --version | grep -q '^portbrokerd ' || fail "the installed daemon does not run"

cmake -S "$source_dir/consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$scratch/build" >/dev/null
# pkg-config: the .pc file's flags compile and link the C example too.
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs portbroker)
include=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=includedir portbroker)
[ "$(realpath "$include")" = "$prefix/include" ] || fail "pkg-config's includedir is not in the moved prefix: $include"
cc -o "$scratch/c_app_pc" "$source_dir/consumer/c_app.c" $flags -Wl,-rpath,"$(dirname "$(dirname "$pc")")"

# Without a daemon each says so.
out=$("$scratch/build/cxx_app" "$scratch/none.sock")
[[ $out == *"cannot connect to portbrokerd at $scratch/none.sock"* ]] || fail "cxx_app: $out"
out=$("$scratch/build/c_app" "$scratch/none.sock")
[[ $out == "-13 cannot connect"* ]] || fail "c_app: $out"

# With the installed daemon, in a network namespace of our own (a user namespace too when not
# root), each acquires a port.
if [ "$(id -u)" -eq 0 ]; then ns=(unshare --net); else ns=(unshare --map-root-user --net); fi
out=$("${ns[@]}" bash -c '
  set -e
  prefix=$1 scratch=$2
  ip link set lo up
  "$prefix/bin/portbrokerd" --socket "$scratch/run/pb.sock" --state-dir "$scratch/state" \
    --config "$scratch/none.toml" >"$scratch/daemon.log" 2>&1 &
  pid=$!
  trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null || true" EXIT
  for _ in $(seq 600); do [ -S "$scratch/run/pb.sock" ] && break; sleep 0.05; done
  "$scratch/build/cxx_app" "$scratch/run/pb.sock"
  "$scratch/build/c_app" "$scratch/run/pb.sock"
  "$scratch/c_app_pc" "$scratch/run/pb.sock"
  "$prefix/bin/portbroker" --socket "$scratch/run/pb.sock" status | head -1
' _ "$prefix" "$scratch" 2>&1) || fail "against the installed daemon:
$out
$(cat "$scratch/daemon.log" 2>/dev/null)"
echo "$out"
[ "$(grep -c '^acquired port [0-9]' <<<"$out")" -eq 3 ] || fail "not every application acquired a port"
echo "install test: the moved tree runs; find_package and pkg-config builds both acquire a port"
