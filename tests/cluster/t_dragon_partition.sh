#!/bin/bash
# A network partition: node 2's link goes down mid-job. Its dragond does not die, nothing
# resets a connection: only silence tells. The head's wait on a process there ends with
# NodeLost within cluster.node_timeout (1.5 s) plus a heartbeat, never a hang; the job ends
# non-zero naming the node; once the link is back, nothing is left anywhere.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
link_up() { ip -n dc-n3 link set eth0 up 2>/dev/null || true; }
trap 'link_up; rm -f "$log"' EXIT
srun_dragon "$PROBE" wait-lost 2 >"$log" 2>&1 &
srun_pid=$!
wait_for_line "$log" "probe: sleeper .* running on node 2" 30
ip -n dc-n3 link set eth0 down
wait_for_line "$log" "probe: ok wait-lost after" 10
link_up
set +e
wait "$srun_pid"; rc=$?
set -e
cat "$log"
[ "$rc" -ne 0 ] || fail "the job succeeded across a partition"
line=$(grep -E "probe: ok wait-lost after [0-9.]+ s: NodeLost" "$log") || fail "no NodeLost"
secs=$(sed -E 's/.*after ([0-9.]+) s.*/\1/' <<<"$line")
awk -v s="$secs" 'BEGIN { exit !(s < 2.5) }' || fail "NodeLost took $secs s"
grep -q "node 2 (n3) was lost" "$log" || fail "nobody said which node was lost"
wait_nothing_left "sleep 600"
echo "ok"
