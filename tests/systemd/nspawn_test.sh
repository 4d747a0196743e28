#!/usr/bin/env bash
# dragond@.socket / dragond@.service under a real systemd: PID 1 of a throw-away
# systemd-nspawn container that boots the host's own /usr on a tmpfs root. Checks socket
# activation by a user's first connection, READY (systemctl start returns only after it), the
# watchdog, a job run through the system instance as that user, and a clean stop.
#   tests/systemd/nspawn_test.sh BUILD_DIR
# Needs root and systemd-container; exits 77 (skipped) without root.
set -euo pipefail
build=$(cd "$1" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "skipped: needs root"; exit 77; }
command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing (apt-get install systemd-container)"; exit 1; }

uid=65534  # nobody: nss-systemd knows it even in an empty /etc
machine=dragontest$$
log=$(mktemp)
npid=""
cleanup() {
  if [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; then
    [ -n "${IN:-}" ] && timeout 10 $IN systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
    kill "$npid" 2>/dev/null || true
    wait "$npid" 2>/dev/null || true
  fi
  rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn /run/systemd/nspawn-root 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

# --register=no --keep-unit: no machined or D-Bus on a host without systemd as PID 1.
systemd-nspawn -D / --volatile=yes --private-network --register=no --keep-unit -M "$machine" \
  --bind="$build" --console=pipe -b \
  systemd.mask=systemd-networkd-wait-online.service systemd.mask=systemd-firstboot.service \
  >"$log" 2>&1 &
npid=$!

# The container's PID 1 (polling: nothing signals its start to us), and never the host's own.
pid1=""
for _ in $(seq 200); do
  pid1=$(pgrep -P "$npid" -x systemd || true)
  [ -n "$pid1" ] && break
  sleep 0.05
done
if [ -z "$pid1" ] || [ "$(readlink /proc/"$pid1"/ns/pid)" = "$(readlink /proc/self/ns/pid)" ]; then
  echo "container systemd did not start"; cat "$log"; exit 1
fi
IN="nsenter -t $pid1 -a"
state=""
for _ in $(seq 200); do
  state=$($IN systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) break ;; esac
  sleep 0.05
done
echo "container systemd is $state"

passed=0
failed=0
check() {  # check NAME COMMAND...
  local name=$1
  shift
  if "$@"; then echo "ok: $name"; passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi
}

# The units exactly as installed, with dragond's path pointing into the build.
$IN mkdir -p /run/systemd/system
for unit in dragond@.socket dragond@.service; do
  sed "s|^ExecStart=.*|ExecStart=$build/daemon/dragond|" "$build/packaging/systemd/$unit" |
    $IN sh -c "cat > /run/systemd/system/$unit"
done
$IN systemctl daemon-reload
timeout 20 $IN systemctl start "dragond@$uid.socket"
check "the socket unit listens" test "$($IN systemctl is-active "dragond@$uid.socket")" = active
check "the service waits for a first connection" \
  test "$($IN systemctl is-active "dragond@$uid.service" || true)" = inactive
check "the socket belongs to the user, mode 0600" \
  test "$($IN stat -c '%u %a' "/run/dragon/$uid/dragond.sock")" = "$uid 600"

as_user="$IN setpriv --reuid=$uid --regid=$uid --clear-groups env -i PATH=/usr/bin:/bin HOME=/"
out=$(timeout 30 $as_user "$build/daemon/dragon" /bin/sh -c 'echo "hello uid $(id -u) parent $PPID"') || true
echo "job said: $out"
main=$($IN systemctl show -p MainPID --value "dragond@$uid.service")
check "a job runs as the user under the activated service" \
  test "$out" = "hello uid $uid parent $main"
check "the service is active" test "$($IN systemctl is-active "dragond@$uid.service")" = active
check "it runs as the user" test "$($IN ps -o uid= -p "$main" | tr -d ' ')" = "$uid"
status=$($IN systemctl show -p StatusText --value "dragond@$uid.service")
check "READY came with a status" test "$status" = "serving the socket systemd passed"
check "the watchdog was petted" test -n "$($IN systemctl show -p WatchdogTimestamp --value "dragond@$uid.service")"
ps_out=$(timeout 30 $as_user "$build/daemon/dragon" ps) || true
check "dragon ps reaches the system instance" grep -q PUID <<<"$ps_out"
# Root is another user: the service refuses it even though root can open the socket.
root_out=$(DRAGON_SOCKET="/run/dragon/$uid/dragond.sock" timeout 30 $IN env DRAGON_SOCKET="/run/dragon/$uid/dragond.sock" "$build/daemon/dragon" ps 2>&1) || true
check "another uid (root) is refused" grep -q PermissionDenied <<<"$root_out"

timeout 60 $IN systemctl stop "dragond@$uid.service"
check "the service stopped cleanly" \
  test "$($IN systemctl show -p Result --value "dragond@$uid.service")" = success

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
