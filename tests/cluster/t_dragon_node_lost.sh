#!/bin/bash
# SIGKILL of a non-head node's dragond mid-job: the head's wait on a process there ends with
# NodeLost (within 2 s), the launcher says which node was lost, the job ends non-zero and
# nothing is left on any node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
srun_dragon "$PROBE" wait-lost 2 >"$log" 2>&1 &
srun_pid=$!
wait_for_line "$log" "probe: sleeper .* running on node 2" 30
victim=$(pgrep -f -- "$BUILD/daemon/dragond .*--node-id 2" | head -1)
[ -n "$victim" ] || fail "no dragond for node 2"
kill -KILL "$victim"
set +e
wait "$srun_pid"; rc=$?
set -e
cat "$log"
[ "$rc" -ne 0 ] || fail "the job succeeded after losing a node"
line=$(grep -E "probe: ok wait-lost after [0-9.]+ s: NodeLost" "$log") || fail "the wait did not end with NodeLost"
secs=$(sed -E 's/.*after ([0-9.]+) s.*/\1/' <<<"$line")
awk -v s="$secs" 'BEGIN { exit !(s < 2.0) }' || fail "NodeLost took $secs s (more than 2 s)"
grep -q "node 2 (n3) was lost" "$log" || fail "nobody said which node was lost"
wait_nothing_left "sleep 600"
echo "ok"
