#!/bin/bash
# Python multiprocessing across the 3 nodes: processes placed with dragon.Policy on every node
# share Queues, Pipes, locks, events, conditions, a barrier, Values, a Manager, a Listener and a
# round-robin Pool, and are joined, terminated and waited on from the head (py_across.py).
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
out=$(srun_dragon "$HERE/py_across.py" 2>&1) || fail "py_across: srun exited $?: $out"
echo "$out"
grep -q "Traceback" <<<"$out" && fail "a traceback in the job's output"
grep -q "py-across: ok 3 nodes, 300 items, workers on 2 other hosts, pool on 3 hosts" <<<"$out" ||
  fail "py_across did not pass"
# The workers' output came back from every node.
for n in 0 1 2; do
  grep -q "py-across: worker on node $n " <<<"$out" || fail "no output from the worker on node $n"
done
wait_nothing_left "py_across.py" "dragon._child" "dragon._template"
echo "ok"
