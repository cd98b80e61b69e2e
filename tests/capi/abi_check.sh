#!/usr/bin/env bash
# The C ABI's symbols: what libportbroker.so exports must be exactly client/portbroker.sym (name
# and version node), every function portbroker.h declares must be among them, and nothing but
# the C ABI and the C++ API (namespace portbroker) may be exported. An accidental ABI break (a
# function renamed, removed or moved out of its version node, a helper leaking) fails here.
#   abi_check.sh LIBRARY SYMFILE HEADER
set -euo pipefail
lib=$1 symfile=$2 header=$3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

nm -D --defined-only --with-symbol-versions "$lib" | awk '$2 != "A" {print $3}' >"$scratch/all"
grep -v '^_Z' "$scratch/all" | sort >"$scratch/c" || true
grep -v '^#' "$symfile" | sed '/^$/d' | sort >"$scratch/want"
if ! diff -u "$scratch/want" "$scratch/c" >"$scratch/diff"; then
  echo "abi_check: $lib exports C symbols other than $symfile lists (- missing, + unlisted):"
  tail -n +3 "$scratch/diff"
  exit 1
fi

# The header and the library agree on the functions.
gcc -E -P -x c "$header" | tr '\n' ' ' | grep -oE '\bportbroker_[a-z0-9_]+ *\(' |
  sed 's/ *($//' | sort -u >"$scratch/declared"
sed 's/@.*//' "$scratch/want" | sort -u >"$scratch/listed"
if ! diff -u "$scratch/declared" "$scratch/listed" >"$scratch/diff"; then
  echo "abi_check: $header and $symfile disagree (- declared only, + listed only):"
  tail -n +3 "$scratch/diff"
  exit 1
fi

# Everything else is the C++ API.
grep '^_Z' "$scratch/all" | sed 's/@.*//' | c++filt |
  grep -vE '^((typeinfo( name)?|vtable) for )?portbroker::' >"$scratch/stray" || true
if [ -s "$scratch/stray" ]; then
  echo "abi_check: $lib exports symbols outside the C ABI and namespace portbroker:"
  head -20 "$scratch/stray"
  exit 1
fi
echo "abi_check: $(wc -l <"$scratch/c") C symbols as listed; $(grep -c '^_Z' "$scratch/all") C++ API symbols"
