#!/bin/bash
# A network partition: node 2's link goes down mid-job. Its dragond does not die, nothing
# resets a connection: only silence tells. The head's wait on a process there ends with
# NodeLost within cluster.node_timeout (1.5 s) plus a heartbeat, never a hang; the job ends
# non-zero naming the node; once the link is back, nothing is left anywhere.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
link_up() { ip -n dc-n3 link set eth0 up 2>/dev/null || true; }
trap 'link_up; rm -f "$log"' EXIT
start_job "$log" "$PROBE" wait-lost 2
wait_for_line "$log" "probe: sleeper .* running on node 2" 30
ip -n dc-n3 link set eth0 down
wait_for_line "$log" "probe: ok wait-lost after" 10
link_up
expect_node_lost "$log" wait-lost 2.5
grep -q "node 2 (n3) was lost" "$log" || fail "nobody said which node was lost"
wait_nothing_left "sleep 600"
echo "ok"
