#!/usr/bin/env bash
# dragond@.socket / dragond@.service under a real systemd: PID 1 of a throw-away
# systemd-nspawn container. Checks the unit's hardening score (systemd-analyze security, at most
# 3.0), socket activation by a user's first connection, READY (systemctl start returns only
# after it), a job run through the system instance as that user under the unit's sandbox, the
# watchdog restarting a hung dragond, and a stop that leaves nothing of the user behind.
#   tests/systemd/nspawn_test.sh BUILD_DIR
#     boots the host's own /usr on a tmpfs root and installs the units from BUILD_DIR, with
#     dragond and dragon from BUILD_DIR.
#   tests/systemd/nspawn_test.sh --root ROOTDIR
#     boots ROOTDIR, a root with systemd and the dragon packages installed, and uses the units
#     and programs installed there. ROOTDIR is left unchanged: it is the read-only lower layer of
#     an overlay whose upper layer is a tmpfs (--volatile=overlay); --ephemeral would copy the
#     whole tree first unless it is on btrfs.
# Needs root and systemd-container; exits 77 (skipped) without root.
set -euo pipefail
usage() { echo "usage: $0 BUILD_DIR | --root ROOTDIR" >&2; exit 2; }
build=""
root=""
case ${1:-} in
  --root) [ $# -eq 2 ] || usage; root=$(cd "$2" && pwd) ;;
  ""|-*) usage ;;
  *) [ $# -eq 1 ] || usage; build=$(cd "$1" && pwd) ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root"; exit 77; }
command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing (apt-get install systemd-container)"; exit 1; }

uid=65534  # nobody: nss-systemd knows it even in an empty /etc
machine=dragontest$$
log=$(mktemp)
held_out=$(mktemp)
npid=""
held=""
cleanup() {
  [ -n "$held" ] && kill "$held" 2>/dev/null || true
  if [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; then
    [ -n "${IN:-}" ] && timeout 10 $IN systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
    kill "$npid" 2>/dev/null || true
    wait "$npid" 2>/dev/null || true
  fi
  rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn /run/systemd/nspawn-root 2>/dev/null || true
  rm -f "$log" "$held_out"
}
trap cleanup EXIT

passed=0
failed=0
check() {  # check NAME COMMAND...
  local name=$1
  shift
  if "$@"; then echo "ok: $name"; passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi
}
# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds; fails after SECONDS.
wait_until() {
  local deadline=$(( ${EPOCHREALTIME/./} + $1 * 1000000 ))
  shift
  until "$@"; do
    [ "${EPOCHREALTIME/./}" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# --register=no --keep-unit: no machined or D-Bus on a host without systemd as PID 1.
if [ -n "$build" ]; then
  boot=(-D / --volatile=yes --bind="$build")
  dragon=$build/daemon/dragon
  units=/run/systemd/system
else
  boot=(-D "$root" --volatile=overlay)
  dragon=/usr/bin/dragon
  units=/lib/systemd/system
fi
systemd-nspawn "${boot[@]}" --private-network --register=no --keep-unit -M "$machine" \
  --console=pipe -b \
  systemd.mask=systemd-networkd-wait-online.service systemd.mask=systemd-firstboot.service \
  >"$log" 2>&1 &
npid=$!

# The container's PID 1 (polling: nothing signals its start to us), and never the host's own.
pid1=""
container_pid1() { pid1=$(pgrep -P "$npid" -x systemd || true); [ -n "$pid1" ]; }
wait_until 20 container_pid1 || true
if [ -z "$pid1" ] || [ "$(readlink /proc/"$pid1"/ns/pid)" = "$(readlink /proc/self/ns/pid)" ]; then
  echo "container systemd did not start"; cat "$log"; exit 1
fi
IN="nsenter -t $pid1 -a"
state=""
booted() {
  state=$($IN systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) true ;; *) false ;; esac
}
wait_until 30 booted || true
echo "container systemd is $state"

show() { $IN systemctl show -p "$1" --value "dragond@$uid.service"; }
no_user_process() {  # no process of the user in the container
  test -z "$($IN find /proc -mindepth 1 -maxdepth 1 -name '[0-9]*' -uid "$uid" 2>/dev/null)"
}
# Open or mapped memfds of dragon pools, of any process in the container.
dragon_memfds() {
  $IN sh -c 'ls -l /proc/[0-9]*/fd/; cat /proc/[0-9]*/maps' 2>/dev/null | grep -c 'memfd:dragon' || true
}

if [ -n "$build" ]; then
  # The units exactly as installed, with dragond's path pointing into the build.
  $IN mkdir -p "$units"
  for unit in dragond@.socket dragond@.service; do
    sed "s|^ExecStart=.*|ExecStart=$build/daemon/dragond|" "$build/packaging/systemd/$unit" |
      $IN sh -c "cat > $units/$unit"
  done
  $IN systemctl daemon-reload
else
  check "the packages installed the units and dragon" \
    $IN test -f "$units/dragond@.service" -a -f "$units/dragond@.socket" -a -x "$dragon"
fi

# The hardening as systemd of the container judges it (the root's own in --root mode).
score=$($IN systemd-analyze security --offline=true --no-pager "$units/dragond@.service" 2>&1 |
  sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
echo "systemd-analyze security: ${score:-no score} (at most 3.0)"
check "systemd-analyze security scores the service at most 3.0" \
  awk -v s="$score" 'BEGIN { exit !(s != "" && s + 0 <= 3.0) }'

timeout 20 $IN systemctl start "dragond@$uid.socket"
check "the socket unit listens" test "$($IN systemctl is-active "dragond@$uid.socket")" = active
check "the service waits for a first connection" \
  test "$($IN systemctl is-active "dragond@$uid.service" || true)" = inactive
check "the socket belongs to the user, mode 0600" \
  test "$($IN stat -c '%u %a' "/run/dragon/$uid/dragond.sock")" = "$uid 600"

as_user="$IN setpriv --reuid=$uid --regid=$uid --clear-groups env -i PATH=/usr/bin:/bin HOME=/"
if [ -n "$build" ]; then as_user="$as_user PYTHONPATH=$build/python"; fi
hello_job() {  # hello_job: a job says hello; checks it ran as the user under the current MainPID
  local out main
  out=$(timeout 30 $as_user "$dragon" /bin/sh -c 'echo "hello uid $(id -u) parent $PPID"') || true
  echo "job said: $out"
  main=$(show MainPID)
  test "$out" = "hello uid $uid parent $main"
}
check "a job runs as the user under the activated service" hello_job
main=$(show MainPID)
check "the service is active" test "$($IN systemctl is-active "dragond@$uid.service")" = active
check "it runs as the user" test "$($IN stat -c %u "/proc/$main")" = "$uid"
status=$(show StatusText)
check "READY came with a status" test "$status" = "serving the socket systemd passed"
check "the watchdog was petted" test -n "$(show WatchdogTimestamp)"
ps_out=$(timeout 30 $as_user "$dragon" ps) || true
check "dragon ps reaches the system instance" grep -q PUID <<<"$ps_out"
# Root is another user: the service refuses it even though root can open the socket.
root_out=$(timeout 30 $IN env DRAGON_SOCKET="/run/dragon/$uid/dragond.sock" "$dragon" ps 2>&1) || true
check "another uid (root) is refused" grep -q PermissionDenied <<<"$root_out"

# The sandbox is on the jobs, and leaves them what user programs need.
sandbox=$(timeout 30 $as_user "$dragon" /bin/sh -c \
  'grep -E "^(CapBnd|NoNewPrivs|Seccomp):" /proc/self/status') || true
check "a job has no capabilities, no new privileges and a system call filter" \
  test "$(tr -d ' \t\n' <<<"$sandbox")" = "CapBnd:0000000000000000NoNewPrivs:1Seccomp:2"
needs=$(timeout 30 $as_user "$dragon" /bin/sh -c 'taskset -c 0 true &&
  test -r /proc/cpuinfo -a -r /proc/meminfo -a -d /sys/devices/system/cpu/cpu0 -a ! -e /proc/1 &&
  echo yes') || true
check "a job pins itself to a CPU, reads the topology and sees no other user's process" \
  test "$needs" = yes
python=""
$IN test -x /usr/bin/python3 && python=yes
if [ -n "$python" ]; then
  wx=$(timeout 30 $as_user "$dragon" /usr/bin/python3 -c 'import mmap
mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
print("yes")') || true
  check "a job maps writable and executable memory (JITs)" test "$wx" = yes
else
  echo "note: no python3 in the container, W+X memory not tried"
fi

# The watchdog restarts a hung dragond. WatchdogSec=30 of the unit would make this take a
# minute, so a drop-in shortens it to 3 s for the rest of the test.
$IN mkdir -p /run/systemd/system/dragond@.service.d
printf '[Service]\nWatchdogSec=3\n' | $IN sh -c 'cat > /run/systemd/system/dragond@.service.d/watchdog.conf'
$IN systemctl daemon-reload
timeout 30 $IN systemctl restart "dragond@$uid.service"
check "the drop-in sets WatchdogSec=3" test "$(show WatchdogUSec)" = 3s
# dragond pets at half of WatchdogSec: the time between two pets, as systemd saw them.
pets=()
pet_seen() {
  local t
  t=$(show WatchdogTimestampMonotonic)
  if [ "${#pets[@]}" -eq 0 ] || [ "${pets[-1]}" != "$t" ]; then pets+=("$t"); fi
  [ "${#pets[@]}" -ge 3 ]
}
interval=""
if wait_until 10 pet_seen; then interval=$(( (pets[2] - pets[1]) / 1000 )); fi
echo "dragond pets the watchdog every ${interval:-?} ms (WatchdogSec=3)"
check "dragond pets the watchdog at half of WatchdogSec" \
  test -n "$interval" -a "${interval:-0}" -ge 1200 -a "${interval:-0}" -le 1800
hung=$(show MainPID)
restarts=$(show NRestarts)
$IN kill -STOP "$hung"
restarted() {
  local m
  m=$(show MainPID)
  [ "$(show NRestarts)" -gt "$restarts" ] && [ "$m" != 0 ] && [ "$m" != "$hung" ] &&
    [ "$($IN systemctl is-active "dragond@$uid.service")" = active ]
}
check "the watchdog restarts a hung dragond (NRestarts up, a new MainPID, active)" \
  wait_until 30 restarted
check "systemd logged the watchdog timeout" \
  grep -q 'Watchdog timeout' <<<"$($IN journalctl --no-pager -u "dragond@$uid.service")"
check "the hung dragond is gone" $IN test ! -e "/proc/$hung"
check "a job runs under the restarted service" hello_job

# A job holding dragon memory (a pool, when the Python package is there) while the service is
# stopped: the stop ends it, and nothing of the user is left.
$IN sh -c 'cat > /tmp/nspawn-hold.py && chmod 644 /tmp/nspawn-hold.py' <<'PY'
import multiprocessing, time
from multiprocessing import shared_memory
assert multiprocessing.get_start_method() == "dragon"
block = shared_memory.SharedMemory(name="nspawn-hold", create=True, size=1 << 20)
block.buf[:5] = b"hello"
print("holding", flush=True)
time.sleep(600)
PY
pool=""
if [ -n "$python" ] &&
  $IN env ${build:+PYTHONPATH=$build/python} python3 -c 'import dragon' 2>/dev/null; then
  pool=yes
  timeout 120 $as_user "$dragon" /tmp/nspawn-hold.py >"$held_out" 2>&1 &
else
  echo "note: no dragon Python package in the container, the held job holds no pool"
  timeout 120 $as_user "$dragon" /bin/sh -c 'echo holding; exec sleep 600' >"$held_out" 2>&1 &
fi
held=$!
check "a job holds on while the service is stopped" wait_until 30 grep -q holding "$held_out"
if [ -n "$pool" ]; then
  check "it holds a dragon pool (a memfd)" test "$(dragon_memfds)" -gt 0
fi
# The documented state dump signals dragond alone: systemctl kill signals the whole cgroup by
# default, and SIGUSR1 ends the user's jobs.
dumps() { $IN journalctl --no-pager -u "dragond@$uid.service" | grep -c 'state dump' || true; }
dumps_before=$(dumps)
timeout 30 $IN systemctl kill --kill-who=main -s USR1 "dragond@$uid.service"
dumped() { [ "$(dumps)" -gt "$dumps_before" ]; }
check "the documented SIGUSR1 makes dragond write its state to the journal" wait_until 20 dumped
job_alive() {  # the held job's process (the Python program, or sleep) runs, not a zombie: in
  # the service's cgroup (the launcher, which runs outside it, matches the same words)
  local d
  for d in $($IN find /proc -mindepth 1 -maxdepth 1 -name '[0-9]*' -uid "$uid" 2>/dev/null); do
    if $IN cat "$d/cmdline" 2>/dev/null | tr '\0' ' ' | grep -qE 'nspawn-hold|sleep 600' &&
      $IN grep -q "dragond@$uid.service" "$d/cgroup" 2>/dev/null &&
      ! $IN grep -q '^State:.Z' "$d/status" 2>/dev/null; then
      return 0
    fi
  done
  return 1
}
check "the job lives on after the state dump" job_alive
timeout 60 $IN systemctl stop "dragond@$uid.socket" "dragond@$uid.service"
check "the service stopped cleanly" test "$(show Result)" = success
check "no process of the user is left" wait_until 20 no_user_process
check "no dragon memory is left (memfd or /dev/shm)" \
  test "$(dragon_memfds)" = 0 -a -z "$($IN find /dev/shm -mindepth 1 -user "$uid")"
check "the socket is removed on stop" $IN test ! -e "/run/dragon/$uid/dragond.sock"
kill "$held" 2>/dev/null || true
wait "$held" 2>/dev/null || true
held=""

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
