#!/bin/bash
# SIGKILL of the dragond that is home to a channel while the head is blocked in a recv on it
# from another node: the recv ends with NodeLost within 2 s (not a hang), the job ends non-zero
# and nothing is left on any node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start_job "$log" "$PROBE" recv-lost 2
wait_for_line "$log" "probe: blocked on a channel of node 2" 30
kill_dragond_of 2
expect_node_lost "$log" recv-lost 2.0
wait_nothing_left "cluster_probe channel-host"
echo "ok"
