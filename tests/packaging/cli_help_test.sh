#!/usr/bin/env bash
# --version on both binaries; every subcommand's --help shows the global options, and exec's
# the socket-spec grammar with every option the parser knows.
# Usage: cli_help_test.sh CLI DAEMON VERSION
set -euo pipefail
cli=$1 daemon=$2 version=$3
source "$(dirname "$0")/cli_lib.sh"

[ "$("$cli" --version)" = "portbroker $version" ] || fail "portbroker --version: $("$cli" --version)"
[ "$("$daemon" --version)" = "portbrokerd $version" ] ||
  fail "portbrokerd --version: $("$daemon" --version)"

for cmd in $(cli_commands); do
  help=$("$cli" "$cmd" --help) || fail "portbroker $cmd --help exited $?"
  [[ $help == *"--socket"* ]] || fail "portbroker $cmd --help does not show --socket"
  # And the option is taken there, not only shown.
  out=$("$cli" "$cmd" --socket /nonexistent/pb.sock --help) || fail "$cmd --socket X --help: $out"
done

help=$("$cli" exec --help)
[[ $help == *"[NAME=]PROTO:ADDRESS:PORT[,OPTION...]"* ]] || fail "exec --help has no SPEC grammar"
# Every option the spec parser accepts (its own list, from its error message) is in the help.
known=$("$cli" exec --listen tcp:127.0.0.1:1,nosuchoption -- true 2>&1 || true)
known=${known##*known: }
known=${known%)*}
[ -n "$known" ] || fail "cannot read the spec options from the parser's message"
for opt in ${known//,/ }; do
  [[ $help == *"$opt"* ]] || fail "exec --help does not name the spec option '$opt'"
done
[[ $help == *"--keep-fds"* ]] || fail "exec --help does not show --keep-fds"
echo "cli_help_test: --version on both; global options on every subcommand; the SPEC grammar"
