# Shared by the packaging tests: what the CLI itself says it has, read from its --help.
# Sourced; needs $cli (the built `portbroker`).

fail() {
  echo "${0##*/}: FAIL: $*" >&2
  exit 1
}

# The subcommands `portbroker --help` lists, one a line.
cli_commands() {
  "$cli" --help | awk '/^Subcommands:/ { on = 1; next } on && NF == 0 { on = 0 } on { print $1 }'
}

# The long options `portbroker COMMAND --help` lists (its own and the global ones), one a line.
cli_options() {
  "$cli" "$1" --help | awk '/^Options:/ { on = 1; next } on && NF == 0 { on = 0 } on { print $1 }' |
    tr ',' '\n' | grep '^--' | sort -u
}
