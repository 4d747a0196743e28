#!/bin/bash
# SIGKILL of a non-head node's dragond mid-job: the head's wait on a process there ends with
# NodeLost (within 2 s), the launcher says which node was lost, the job ends non-zero and
# nothing is left on any node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start_job "$log" "$PROBE" wait-lost 2
wait_for_line "$log" "probe: sleeper .* running on node 2" 30
kill_dragond_of 2
expect_node_lost "$log" wait-lost 2.0
grep -q "node 2 (n3) was lost" "$log" || fail "nobody said which node was lost"
wait_nothing_left "sleep 600"
echo "ok"
