#!/usr/bin/env bash
# Installs the build into a scratch prefix, then builds and runs an outside application that
# finds it with find_package(portbroker) and with pkg-config.
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cmake --install "$build_dir" --prefix "$scratch/prefix" >/dev/null
cmake -S "$source_dir/consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
cmake --build "$scratch/build" >/dev/null

export LD_LIBRARY_PATH="$scratch/prefix/lib"
out=$("$scratch/build/cxx_app" "$scratch/none.sock")
echo "cxx_app: $out"
[[ $out == *"cannot connect to portbrokerd at $scratch/none.sock"* ]]
out=$("$scratch/build/c_app" "$scratch/none.sock")
echo "c_app: $out"
[[ $out == "-13 cannot connect"* ]]

# pkg-config: the .pc file's flags compile and link the C example too.
pc_dir=$(dirname "$(find "$scratch/prefix" -name portbroker.pc)")
flags=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs portbroker \
          --define-variable=prefix="$scratch/prefix")
cc -o "$scratch/c_app_pc" "$source_dir/consumer/c_app.c" $flags
"$scratch/c_app_pc" "$scratch/none.sock" | grep -q '^-13 '
echo "install test: find_package and pkg-config both work"
