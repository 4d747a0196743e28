#!/bin/bash
# SIGKILL of the dragond that is home to a channel while the head is blocked in a recv on it
# from another node: the recv ends with NodeLost within 2 s (not a hang), the job ends non-zero
# and nothing is left on any node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
srun_dragon "$PROBE" recv-lost 2 >"$log" 2>&1 &
srun_pid=$!
wait_for_line "$log" "probe: blocked on a channel of node 2" 30
victim=$(pgrep -f -- "$BUILD/daemon/dragond .*--node-id 2" | head -1)
[ -n "$victim" ] || fail "no dragond for node 2"
kill -KILL "$victim"
set +e
wait "$srun_pid"; rc=$?
set -e
cat "$log"
[ "$rc" -ne 0 ] || fail "the job succeeded after losing a node"
line=$(grep -E "probe: ok recv-lost after [0-9.]+ s: NodeLost" "$log") || fail "the recv did not end with NodeLost"
secs=$(sed -E 's/.*after ([0-9.]+) s.*/\1/' <<<"$line")
awk -v s="$secs" 'BEGIN { exit !(s < 2.0) }' || fail "NodeLost took $secs s (more than 2 s)"
wait_nothing_left "cluster_probe channel-host"
echo "ok"
