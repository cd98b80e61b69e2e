#!/usr/bin/env bash
# The shipped unit (packaging/portbroker.service) under a real systemd: `systemctl restart` and
# `systemctl kill -s KILL` (then Restart=always) keep every lease, session and lingering lease,
# and the holders' listeners never stop accepting.
#
# systemd boots as PID 1 in private pid, mount, net and cgroup namespaces (see
# ../shared/systemd-sandbox.md), with tmpfs on /run, /tmp and /var/tmp, and a target of our own
# with DefaultDependencies=no that wants only portbroker.service: never sysinit.target, whose
# systemd-tmpfiles would empty the machine's /tmp. Its cgroups live in a fresh cgroup2 subtree,
# so it can neither see nor kill another test's units.
#
# Usage (as root): systemd_test.sh BUILD_DIR SOURCE_DIR PORTBROKERD CLI LISTEN_FDS_SERVER
# (the binaries under BUILD_DIR). Fails, saying why, when it cannot run here.
set -euo pipefail
# A pipeline ends in `grep >/dev/null`, never `grep -q`: -q exits at the first match, and the
# writer killed by SIGPIPE then fails the pipeline under pipefail (ldd did, now and then).

build_dir=$(cd "$1" && pwd -P)
source_dir=$(cd "$2" && pwd -P)
daemon=$(realpath "$3") cli=$(realpath "$4") server=$(realpath "$5")
deadline=$((SECONDS + 150))  # ctest's TIMEOUT is 180: clean up well before it kills us

fail() {
  echo "systemd_test: FAIL: $*" >&2
  exit 1
}

# --- Can it run here? Say why not, loudly: a test that cannot run has not passed. ---
[ "$(id -u)" -eq 0 ] || fail "must run as root (it boots systemd in private namespaces)"
systemd_bin=
for candidate in /lib/systemd/systemd /usr/lib/systemd/systemd; do
  if [ -x "$candidate" ]; then systemd_bin=$candidate; break; fi
done
[ -n "$systemd_bin" ] || fail "no systemd binary (/lib/systemd/systemd); install Debian's systemd"
for tool in unshare nsenter mount ip pgrep; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
for bin in "$daemon" "$cli" "$server"; do
  [ -x "$bin" ] || fail "$bin not built"
  [[ $bin == "$build_dir"/* ]] || fail "$bin is not under $build_dir"
done
cg2_root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[ -n "$cg2_root" ] || fail "no cgroup2 hierarchy mounted (systemd needs one of its own)"
unshare --pid --fork --mount --net --cgroup true 2>/dev/null ||
  fail "cannot create pid/mount/net/cgroup namespaces here (unshare failed)"

scratch=$(mktemp -d)
cgroup=$cg2_root/pbtest-systemd-$$
unshare_pid=
sd=
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if [ -n "$unshare_pid" ]; then
    # The namespace's PID 1 first: the kernel then kills everything else in the namespace.
    sd=${sd:-$(pgrep -P "$unshare_pid" -x systemd)}
    if [ -n "$sd" ]; then kill -9 "$sd" 2>/dev/null; fi
    kill -9 "$unshare_pid" 2>/dev/null
    wait "$unshare_pid" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ]; then
    echo "--- systemd's console ---" >&2
    tail -n 40 "$scratch/systemd.log" >&2 || true
    echo "--- portbrokerd ---" >&2
    tail -n 60 "$scratch/daemon.log" >&2 || true
  fi
  # Emptied cgroups, deepest first.
  if [ -d "$cgroup" ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$cgroup" ] || break
      sleep 0.1
    done
    [ -d "$cgroup" ] && echo "systemd_test: could not remove $cgroup" >&2
  fi
  rm -rf "$scratch"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# --- Boot. boot.sh runs as the namespace's PID 1 and becomes systemd. ---
cat >"$scratch/boot.sh" <<'EOF'
#!/bin/bash
set -e
build_dir=$1 source_dir=$2 scratch=$3 systemd_bin=$4  # $5: the daemon, relative to $1
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/pbtest/build /run/pbtest/out /run/systemd/system/portbroker.service.d
# The shipped unit, running the built daemon (read before /tmp, where a checkout may live, is
# covered below).
sed 's|^ExecStart=[^ ]*|ExecStart=/run/pbtest/portbrokerd|' \
  "$source_dir/packaging/portbroker.service" >/run/systemd/system/portbroker.service
# The build and a log directory stay reachable under /run after /tmp is covered below.
mount --bind "$build_dir" /run/pbtest/build
mount --bind "$scratch" /run/pbtest/out
# Our own /tmp and /var/tmp: PrivateTmp= directories land there, and nothing this systemd does
# can reach the machine's.
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount -t proc proc /proc
# Only our cgroup subtree (the cgroup namespace's root), as the unified hierarchy.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# A copy: the unit's PrivateTmp= would hide a build under /tmp from the service.
cp "/run/pbtest/build/$5" /run/pbtest/portbrokerd
# No journald in this boot: the daemon's output goes to a file the test prints on failure.
printf '[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:/run/pbtest/out/daemon.log\nStandardError=inherit\n' \
  >/run/systemd/system/portbroker.service.d/test.conf
# A sanitizer build (make test-asan): LeakSanitizer stops the daemon's threads with ptrace(2) at
# exit, which the unit's system-call filter denies (@debug) like any other ptrace.
if ldd /run/pbtest/portbrokerd | grep >/dev/null 'libasan'; then
  printf '[Service]\nSystemCallFilter=@debug\n' >/run/systemd/system/portbroker.service.d/asan.conf
fi
printf '[Unit]\nDefaultDependencies=no\nWants=portbroker.service\n' \
  >/run/systemd/system/pbtest.target
ip link set lo up
export container=pbtest
exec "$systemd_bin" --system --unit=pbtest.target --log-target=console --show-status=no
EOF
chmod +x "$scratch/boot.sh"
mkdir "$cgroup" || fail "cannot create the cgroup $cgroup"
# Enter the fresh cgroup first, so that the new cgroup namespace is rooted there.
bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' _ "$cgroup" \
  unshare --pid --fork --mount --net --cgroup --propagation private \
  "$scratch/boot.sh" "$build_dir" "$source_dir" "$scratch" "$systemd_bin" \
  "${daemon#"$build_dir"/}" \
  >"$scratch/systemd.log" 2>&1 &
unshare_pid=$!

until sd=$(pgrep -P "$unshare_pid" -x systemd); do
  kill -0 "$unshare_pid" 2>/dev/null || fail "the namespace's boot failed"
  [ $SECONDS -lt $deadline ] || fail "systemd did not start"
  sleep 0.05
done
# In the namespace, with the library found under /run/pbtest/build (the binaries' RUNPATH names
# the build directory, which the namespace's /tmp covers when a checkout lives there).
ns() { nsenter -t "$sd" -m -p -n env LD_LIBRARY_PATH=/run/pbtest/build "$@"; }
systemctl_ns() { timeout 60 nsenter -t "$sd" -m -p systemctl "$@"; }
until ns test -S /run/systemd/private; do
  [ $SECONDS -lt $deadline ] || fail "systemd's manager did not come up"
  sleep 0.05
done
# Blocks until the daemon said READY=1 (Type=notify).
systemctl_ns start portbroker.service || fail "portbroker.service did not start"

cli_in=/run/pbtest/build/${cli#"$build_dir"/}
server_in=/run/pbtest/build/${server#"$build_dir"/}
pb() { ns "$cli_in" "$@"; }

# Say hello on PORT and expect the echo (bash's /dev/tcp: no other tool needed).
echo_ok() {
  ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 && echo hello >&3 && read -r -t 5 line <&3 &&
              [ "$line" = hello ]' _ "$1"
}
# A connection completes (the backlog of a socket nobody accepts from still queues).
connect_ok() {
  ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1' _ "$1"
}
wait_for() {  # wait_for WHAT COMMAND...: until COMMAND succeeds, within the deadline
  local what=$1
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 0.05
  done
}
# The holder's pid (in the namespace) of the lease on PORT, from the table: ID NAME PROTO ADDRESS
# PORT MODE PID ...
holder_of() { pb list | awk -v port="$1" '$5 == port { print $7; exit }'; }
lease_count() { pb list --json | grep -c '"id":' || true; }
has_leases() { [ "$(lease_count)" -eq "$1" ]; }

# --- Holders: an exclusive lease, a shared lease with two members, a lingering lease. ---
ns "$cli_in" exec --listen web=tcp:127.0.0.1:7001 -- "$server_in" >/dev/null 2>&1 &
wait_for "the exclusive lease" has_leases 1
ns "$cli_in" exec --listen sh=tcp:127.0.0.1:7003,shared -- "$server_in" >/dev/null 2>&1 &
wait_for "the first shared member" has_leases 2
ns "$cli_in" exec --listen sh=tcp:127.0.0.1:7003,shared -- "$server_in" >/dev/null 2>&1 &
wait_for "the second shared member" has_leases 3
ns "$cli_in" exec --listen lin=tcp:127.0.0.1:7002,linger=600 -- "$server_in" >/dev/null 2>&1 &
wait_for "the lingering lease" has_leases 4
ns kill "$(holder_of 7002)"
lingering() { pb list --json | grep >/dev/null '"state": "lingering"'; }
wait_for "the lease to linger" lingering
wait_for "the web server" echo_ok 7001
wait_for "the shared servers" echo_ok 7003

pb list --json >"$scratch/before.json"
web_holder=$(holder_of 7001)
[ -n "$web_holder" ] || fail "no holder listed for port 7001: $(pb list)"
echo "before: $(lease_count) leases, the exclusive one held by pid $web_holder"

# A client connecting every few ms throughout: the listener must never refuse.
ns bash -c 'fails=0; ok=0
  while [ ! -e /run/pbtest/out/stop-probe ]; do
    if exec 3<>/dev/tcp/127.0.0.1/7001 && echo p >&3 && read -r -t 5 l <&3; then
      ok=$((ok + 1)); else fails=$((fails + 1)); fi
    exec 3>&- 3<&-
    sleep 0.005
  done
  echo "$ok $fails" >/run/pbtest/out/probe-result' 2>/dev/null &
probe_pid=$!

check_same() {  # after $1: the same leases, the listeners alive, conflicts named
  local after=$1
  pb list --json >"$scratch/after.json" || fail "list failed after $after"
  diff -u "$scratch/before.json" "$scratch/after.json" >&2 ||
    fail "the lease list changed across $after"
  echo_ok 7001 || fail "the exclusive holder stopped serving after $after"
  echo_ok 7003 || fail "the shared group stopped serving after $after"
  connect_ok 7002 || fail "the lingering lease's socket stopped queueing after $after"
  local out rc=0
  out=$(pb exec --listen tcp:127.0.0.1:7001 -- true 2>&1) || rc=$?
  [ "$rc" -eq 1 ] || fail "a conflicting acquire after $after exited $rc: $out"
  [[ $out == *"pid $web_holder"* ]] || fail "the conflict after $after does not name the holder: $out"
  echo "after $after: same $(lease_count) leases, listeners serving, conflict names pid $web_holder"
}

main_pid() { systemctl_ns show -p MainPID --value portbroker.service; }
active() { [ "$(systemctl_ns is-active portbroker.service)" = active ]; }

# --- systemctl restart: SIGTERM, then a new daemon from the fd store. ---
old=$(main_pid)
systemctl_ns restart portbroker.service || fail "systemctl restart failed"
new=$(main_pid)
[ "$new" != "$old" ] && [ "$new" != 0 ] || fail "the daemon was not restarted ($old -> $new)"
grep -q "took over" "$scratch/daemon.log" || fail "the restarted daemon took nothing from the fd store"
check_same "systemctl restart"

# --- A crash: SIGKILL, and Restart=always starts it again. ---
old=$new
systemctl_ns kill -s KILL portbroker.service || fail "systemctl kill failed"
restarted() { active && [ "$(main_pid)" != "$old" ] && [ "$(main_pid)" != 0 ]; }
wait_for "Restart=always to bring the daemon back" restarted
check_same "systemctl kill -s KILL"

touch "$scratch/stop-probe"
wait "$probe_pid" || true
read -r probe_ok probe_fails <"$scratch/probe-result" || fail "the prober did not report"
echo "prober: $probe_ok connections served, $probe_fails failed"
[ "$probe_fails" -eq 0 ] || fail "$probe_fails connections to the brokered server failed"
[ "$probe_ok" -gt 0 ] || fail "the prober never connected"

# --- The restored state is live: a new member joins the shared group, the lingering lease is
# reclaimed with its socket, and a holder's exit ends its lease (its session came back). ---
ns "$cli_in" exec --listen sh=tcp:127.0.0.1:7003,shared -- "$server_in" >/dev/null 2>&1 &
wait_for "a third shared member" has_leases 5
ns "$cli_in" exec --listen lin=tcp:127.0.0.1:7002,linger=600 -- "$server_in" >/dev/null 2>&1 &
reclaimed() { ! lingering && echo_ok 7002; }
wait_for "the lingering lease to be reclaimed" reclaimed
has_leases 5 || fail "reclaiming made a new lease: $(pb list --json)"
ns kill "$web_holder"
web_gone() { ! pb list --json | grep >/dev/null '"port": 7001'; }
wait_for "the exclusive lease to end with its holder" web_gone
pb exec --listen tcp:127.0.0.1:7001 -- true || fail "port 7001 not free after its holder left"

# --- A holder that dies while no daemon runs: its lease ends at the next start, and its port is
# free again (the fd store must not keep the broker's copy of its socket). ---
ns "$cli_in" exec --listen gone=tcp:127.0.0.1:7005 -- "$server_in" >/dev/null 2>&1 &
has_7005() { pb list --json | grep >/dev/null '"port": 7005'; }
wait_for "a lease on 7005" has_7005
gone_pid=$(holder_of 7005)
old=$(main_pid)
systemctl_ns kill -s STOP portbroker.service || fail "systemctl kill -s STOP failed"
ns kill -9 "$gone_pid"
holder_dead() { ! ns kill -0 "$gone_pid" 2>/dev/null; }
wait_for "the holder on 7005 to die" holder_dead
systemctl_ns kill -s KILL portbroker.service || fail "systemctl kill failed"
wait_for "Restart=always to bring the daemon back again" restarted
gone_7005() { ! has_7005; }
wait_for "the lease of the holder that died while no daemon ran to end" gone_7005
out=$(pb exec --listen tcp:127.0.0.1:7005 -- true 2>&1) ||
  fail "port 7005 is still bound after its holder died while no daemon ran: $out"
# And the journal forgets that lease: the next start does not end it again.
systemctl_ns restart portbroker.service || fail "the last systemctl restart failed"
ended=$(grep -c "its holder is gone" "$scratch/daemon.log" || true)
[ "$ended" -le 1 ] || fail "a lease that ended at one start was ended again at the next"
pb list --json >"$scratch/after.json" || fail "list failed after the last restart"
has_leases 4 || fail "the leases changed across the last restart: $(cat "$scratch/after.json")"

# --- The unit's sandbox leaves every feature working. ---
# The ephemeral-port guard wrote its one sysctl (ProtectKernelTunables= with that file writable):
# the embedded default pool is listed.
ns grep -q '20000-29999' /proc/sys/net/ipv4/ip_local_reserved_ports ||
  fail "the guard did not write ip_local_reserved_ports: $(ns cat /proc/sys/net/ipv4/ip_local_reserved_ports)"
# device= (SO_BINDTODEVICE) needs no capability.
out=$(pb exec --listen tcp:127.0.0.1:7010,device=lo -- true 2>&1) || fail "device=lo under the unit: $out"
# A listener outside the broker, of another user: `who` names its process (ProtectProc=invisible
# shows it to a daemon that may ptrace it; its /proc/PID/fd needs CAP_DAC_READ_SEARCH).
ns setpriv --reuid=65534 --regid=65534 --clear-groups \
  systemd-socket-activate -l 127.0.0.1:7011 "$server_in" >/dev/null 2>&1 &
outside_named() { pb who 7011 | grep >/dev/null 'outside the broker: LISTEN 127.0.0.1:7011 by pid [0-9]* (systemd-socket-, uid 65534)'; }
wait_for "who to name the outside listener: $(pb who 7011)" outside_named
# A holder of another user survives `systemctl stop` + `start`, which empties the fd store: its
# lease comes back from the journal. The unit denies pidfd_getfd(2) (@debug), so the broker has
# no copy of its socket then, and says so; with the README's drop-in it takes the copy back.
ns setpriv --reuid=65534 --regid=65534 --clear-groups \
  "$cli_in" --socket /run/portbroker/portbroker.sock exec --listen nob=tcp:127.0.0.1:7012 -- "$server_in" >/dev/null 2>&1 &
has_7012() { pb list --json | grep >/dev/null '"port": 7012'; }
wait_for "a lease of uid 65534" has_7012
stop_start() {
  systemctl_ns stop portbroker.service || fail "systemctl stop failed"
  # This test has started the unit more often in the last seconds than StartLimitBurst= allows.
  systemctl_ns reset-failed portbroker.service
  systemctl_ns start portbroker.service || fail "systemctl start failed"
  restored=$(grep 'restart: .* restored' "$scratch/daemon.log" | tail -n 1)
  has_7012 || fail "the lease of uid 65534 did not survive stop and start: $(pb list)"
  echo_ok 7012 || fail "the holder of uid 65534 stopped serving"
}
stop_start
if ldd "$daemon" | grep >/dev/null 'libasan'; then
  # The sanitizer build's drop-in allows @debug, pidfd_getfd with it.
  [[ $restored == *"restored (0 without the broker's copy)"* ]] ||
    fail "with @debug allowed not every lease came back with its socket: $restored"
else
  [[ $restored != *"(0 without the broker's copy)"* && $restored == *"without the broker's copy"* ]] ||
    fail "after stop and start under the unit's filter the copies came back: $restored"
  grep -q "127.0.0.1:7012, pid [0-9]* .*: restored without the broker's copy of its socket" "$scratch/daemon.log" ||
    fail "the lease of port 7012 is not reported as restored without the broker's copy"
  pb list | grep >/dev/null ' 7012 .*active (no broker copy)' || fail "list does not say the lease of port 7012 has no broker copy: $(pb list)"
  pb list --json | tr -d ' \n' | grep >/dev/null '"broker_copy":false' || fail "list --json does not say broker_copy false: $(pb list --json)"
fi
ns sh -c "printf '[Service]\nSystemCallFilter=pidfd_getfd\n' >/run/systemd/system/portbroker.service.d/getfd.conf"
systemctl_ns daemon-reload || fail "systemctl daemon-reload failed"
stop_start
[[ $restored == *"restored (0 without the broker's copy)"* ]] ||
  fail "with the drop-in allowing pidfd_getfd not every lease came back with its socket: $restored"
pb list --json | tr -d ' \n' | grep >/dev/null '"broker_copy":false' && fail "a lease still has no broker copy: $(pb list)"
echo "under the unit: the guard's sysctl, device=, who naming another user's process, stop + start with and without pidfd_getfd"

if grep -q "Sanitizer" "$scratch/daemon.log"; then fail "the daemon reported a sanitizer error"; fi
echo "systemd_test: restart and kill -9 under systemd kept every lease"
