#!/bin/bash
# The Python examples, unchanged, in a 3-node job: each checks its own result, and its workers
# (placed round-robin, the default) must have run on more than one node.
. "$(dirname "$0")/lib.sh"
EX=$(cd "$(dirname "$0")/../../examples" && pwd)
run_example() {  # run_example NAME ARGS... : runs it, checks the exit code and the hosts line
  local name=$1 out hosts
  shift
  out=$(srun_dragon "$EX/$name" "$@" 2>&1) || fail "$name: srun exited $?: $out"
  echo "$out"
  hosts=$(sed -n 's/.* ran on \([0-9]*\) host(s).*/\1/p' <<<"$out" | tail -1)
  [ -n "$hosts" ] || fail "$name: no hosts line"
  [ "$hosts" -ge 2 ] || fail "$name: its workers ran on $hosts node(s) of 3"
  echo "note: $name: workers on $hosts nodes"
}
# Tasks long enough (about 40 ms each here) that the head's worker cannot take them all while
# the other nodes' first processes start (their templates start with them): with 50000 darts,
# all 64 ran on the head's node once in CI, the job over in 0.8 s.
run_example monte_carlo_pi.py --tasks 64 --darts 200000
run_example queue_pipeline.py --records 3000 --workers 3
run_example numpy_pipeline.py --blocks 12 --workers 3
wait_nothing_left "dragon._child" "dragon._template"
echo "ok"
