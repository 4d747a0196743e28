#!/bin/bash
# scancel of a running job, and SIGKILL of rank 0's launcher: everything of the job goes on
# every node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for how in scancel kill-launcher; do
  : >"$log"
  srun_dragon -- sh -c 'echo running; exec sleep 600' >"$log" 2>&1 &
  srun_pid=$!
  wait_for_line "$log" "^running$" 30
  # The other nodes' dragonds are up too (they joined before the head started).
  [ "$(pgrep -fc -- "$BUILD/daemon/dragond .*--node-id")" -eq 3 ] || fail "not 3 dragonds"
  if [ "$how" = scancel ]; then
    jid=$("$CLUSTER" exec squeue -h -o %i | head -1)
    [ -n "$jid" ] || fail "no job in squeue"
    "$CLUSTER" exec scancel "$jid"
  else
    launcher=$(pgrep -f -- "^$DRAGON sh -c echo running" | while read -r p; do
      if grep -q "PMIX_RANK=0" "/proc/$p/environ" 2>/dev/null; then echo "$p"; fi; done | head -1)
    [ -n "$launcher" ] || fail "no rank-0 launcher"
    kill -KILL "$launcher"
  fi
  set +e
  wait "$srun_pid"; rc=$?
  set -e
  cat "$log"
  [ "$rc" -ne 0 ] || fail "$how: srun exited 0"
  wait_nothing_left "sleep 600"
  echo "ok: $how"
done
