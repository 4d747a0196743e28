#!/bin/bash
# A Python Lock held by a process on a node whose dragond is SIGKILLed: the head, waiting on
# the lock, gets BrokenLockError naming that node (not a hang); the job ends non-zero and
# nothing is left on any node.
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start_job "$log" "$HERE/py_lock_lost.py"
wait_for_line "$log" "py-lock-lost: held on node [0-9]+" 60
node=$(sed -nE 's/.*py-lock-lost: held on node ([0-9]+).*/\1/p' "$log" | head -1)
kill_dragond_of "$node"
set +e
wait "$SRUN_PID"; rc=$?
set -e
cat "$log"
[ "$rc" -ne 0 ] || fail "the job succeeded after losing a node"
grep -qE "py-lock-lost: broken after [0-9.]+ s: .*on node $node\)" "$log" ||
  fail "the waiter did not hear that the lock held on node $node broke"
wait_nothing_left "py_lock_lost.py" "dragon._child" "dragon._template"
echo "ok"
