#!/usr/bin/env bash
# The bash completion offers exactly the subcommands `portbroker --help` lists, and for each
# exactly the options `portbroker COMMAND --help` lists.
# Usage: completion_test.sh CLI COMPLETION_FILE
set -euo pipefail
cli=$1 completion=$2
source "$(dirname "$0")/cli_lib.sh"
bc=/usr/share/bash-completion/bash_completion
[ -r "$bc" ] || fail "$bc not found (install Debian's bash-completion)"

# Runs the completion function on a command line (the words, the last one being completed)
# in a fresh bash, and prints the candidates sorted, one a line.
complete_words() {
  bash --norc --noprofile -c '
    source "$1" && source "$2" && shift 2
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
    COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    _portbroker portbroker "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    printf "%s\n" "${COMPREPLY[@]}"' _ "$bc" "$completion" "$@" | sort
}

want=$(cli_commands | sort)
got=$(complete_words portbroker "")
[ "$got" = "$want" ] || fail "subcommands: completion offers
$got
but portbroker --help lists
$want"
for cmd in $want; do
  want_opts=$(cli_options "$cmd")
  got_opts=$(complete_words portbroker "$cmd" --)
  [ "$got_opts" = "$want_opts" ] ||
    fail "'$cmd' options: completion offers [$(echo $got_opts)], --help lists [$(echo $want_opts)]"
done
# Global options before the command, and the command found after them.
[ "$(complete_words portbroker --socket /x wh)" = who ] || fail "a command after --socket PATH"
[ "$(complete_words portbroker --ver)" = --version ] || fail "--version before a command"
echo "completion_test: $(echo $want | wc -w) subcommands and their options match the CLI's"
