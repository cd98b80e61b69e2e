#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for a bounded time (`make fuzz`).
#   run.sh BUILD_DIR SECONDS_PER_TARGET
# Each target starts from the checked-in seeds (tests/fuzz/corpus/NAME) and the regression
# inputs (tests/fuzz/regressions/NAME), and grows a scratch corpus in BUILD_DIR/fuzz-corpus/NAME
# that is kept between runs; the checked-in directories are only read. A crash, leak, sanitizer
# report or timeout fails the run and names the input that caused it: add it to
# tests/fuzz/regressions/NAME and to tests/unit/fuzz_regressions_test.cc.
set -euo pipefail
build=$1
seconds=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
failed=()
for name in spec policy record dispatch; do
  bin="$build/tests/fuzz/fuzz_$name"
  work="$build/fuzz-corpus/$name"
  artifacts="$build/fuzz-artifacts/$name/"
  mkdir -p "$work" "$artifacts" "$here/regressions/$name"
  echo "fuzz: $name for ${seconds}s" >&2
  # -timeout: one input taking this long is a hang; -rss_limit_mb bounds memory growth.
  if ! "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65537 \
      -print_final_stats=1 -artifact_prefix="$artifacts" \
      "$work" "$here/corpus/$name" "$here/regressions/$name" \
      >"$build/fuzz-$name.log" 2>&1; then
    failed+=("$name")
    echo "fuzz: $name FAILED; the input is in $artifacts; the tail of $build/fuzz-$name.log:" >&2
    tail -n 40 "$build/fuzz-$name.log" >&2
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$build/fuzz-$name.log" \
      | sed "s/^/fuzz: $name /" >&2 || true
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all targets ran ${seconds}s each without a finding" >&2
