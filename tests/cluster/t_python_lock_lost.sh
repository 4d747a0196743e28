#!/bin/bash
# A Python Lock held by a process on a node whose dragond is SIGKILLed: the head, waiting on
# the lock, gets BrokenLockError naming that node (not a hang), then NodeLost from a Queue of that node, end of file on the Pipe
# that process wrote to, -SIGKILL from its join and a refusal to start there; the job ends
# non-zero and nothing is left on any node.
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
# What else the head held of that process: each answers at once (well under the 60 s waits).
grep -qE "py-lock-lost: queue get failed after [0-4]\.[0-9]+ s: NodeLost: .*node $node" "$log" ||
  fail "a get from a Queue of the lost node did not raise NodeLost"
grep -qE "py-lock-lost: pipe recv failed after [0-4]\.[0-9]+ s: EOFError" "$log" ||
  fail "the read end of a Pipe whose writer was lost with its node did not get end of file"
grep -qE "py-lock-lost: join gave \(-9, False\) after [0-4]\.[0-9]+ s" "$log" ||
  fail "the join of a process lost with its node did not give -SIGKILL"
grep -qE "py-lock-lost: a start there failed after [0-4]\.[0-9]+ s: ValueError: no node $node in this job" "$log" ||
  fail "a start on the lost node was not refused"
grep -q "Exception ignored in atexit" "$log" && fail "the head's exit raised"
wait_nothing_left "py_lock_lost.py" "dragon._child" "dragon._template"
echo "ok"
