#!/usr/bin/env bash
# The example policy validates on a stock Debian system; --check-config reports every error in a
# file, each as FILE:LINE:COL.
# Usage: check_config_test.sh DAEMON EXAMPLE_POLICY
set -euo pipefail
daemon=$1 example=$2
source "$(dirname "$0")/cli_lib.sh"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

out=$("$daemon" --check-config "$example" 2>&1) || fail "the example policy is invalid:
$out"
[[ $out == *"$example: valid"* ]] || fail "unexpected output for the example: $out"
echo "example: $out"

# Three errors in three places: a bad port, an unknown user, an unknown key in another table.
bad=$scratch/bad.toml
cat >"$bad" <<'TOML'
[[rule]]
name = "a"
users = ["*"]
ports = 70000

[[rule]]
name = "b"
users = ["no-such-user-pbtest"]
ports = 8080

[[pool]]
name = "p"
users = ["*"]
ports = "30000-30010"
colour = "blue"
TOML
rc=0
out=$("$daemon" --check-config "$bad" 2>&1) || rc=$?
[ "$rc" -eq 1 ] || fail "--check-config on a bad file exited $rc:
$out"
echo "$out"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 3 ] || fail "expected three messages, got:
$out"
printf '%s\n' "$out" | sed -n 1p | grep -q "^$bad:4:9: port 70000 is out of range" ||
  fail "first message: $out"
printf '%s\n' "$out" | sed -n 2p | grep -q "^$bad:8:10: unknown user 'no-such-user-pbtest'" ||
  fail "second message: $out"
printf '%s\n' "$out" | sed -n 3p | grep -q "^$bad:15:1: unknown key 'colour'" ||
  fail "third message: $out"

# A TOML syntax error is one message with its place, too.
printf '[[rule]\nname = "x"\n' >"$scratch/syntax.toml"
out=$("$daemon" --check-config "$scratch/syntax.toml" 2>&1) && fail "a syntax error passed"
[[ $out == "$scratch/syntax.toml:1:"* ]] || fail "syntax error without its place: $out"
echo "check_config_test: the example is valid; three errors give three FILE:LINE:COL messages"
