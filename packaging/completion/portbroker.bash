# bash completion for portbroker(1). tests/packaging/completion_test.sh checks these lists
# against the CLI's own `--help`, so a command or option added there must be added here.

_portbroker() {
  local cur prev words cword
  _init_completion || return

  local commands="list status release exec reserve unreserve reservations reload shutdown upgrade who check events metrics"
  local -A options=(
    [list]="--json"
    [status]="--json"
    [release]=""
    [exec]="--listen --keep-fds --intercept --pass-loopback --linger"
    [reserve]="--user --group --hold --no-listen"
    [unreserve]=""
    [reservations]="--json"
    [reload]=""
    [shutdown]="--revoke-all"
    [upgrade]=""
    [who]="--udp --json"
    [check]="--json"
    [events]="--json --since"
    [metrics]=""
  )

  # The command is the first word that is neither an option nor --socket's argument.
  local i command=
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      --socket) ((i++)) ;;
      --) break ;;
      -*) ;;
      *)
        command=${words[i]}
        break
        ;;
    esac
  done

  # After `exec ... --` comes a command line of its own.
  if [[ $command == exec ]]; then
    local j
    for ((j = i + 1; j < cword; j++)); do
      if [[ ${words[j]} == -- ]]; then
        _command_offset $((j + 1))
        return
      fi
    done
  fi

  case $prev in
    --socket)
      _filedir
      return
      ;;
    --user)
      COMPREPLY=($(compgen -u -- "$cur"))
      return
      ;;
    --group)
      COMPREPLY=($(compgen -g -- "$cur"))
      return
      ;;
    --listen)
      COMPREPLY=($(compgen -W "tcp: udp:" -- "$cur"))
      compopt -o nospace
      return
      ;;
  esac

  if [[ -z $command ]]; then
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W "--socket --help --version" -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$commands" -- "$cur"))
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "${options[$command]} --socket --help" -- "$cur"))
  fi
}
complete -F _portbroker portbroker
