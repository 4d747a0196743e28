#!/bin/bash
# Remote memory: the head gets and puts between a pool of its node and an allocation of a pool
# on another node (whole, in 16 parts in flight at once, a range past the far end refused
# there without writing), with the bytes checked on both sides; then a node's dragond is
# killed while the head gets from it: NodeLost, not a hang.
. "$(dirname "$0")/lib.sh"
for args in "1 $((16 << 20))" "2 1000003"; do
  # shellcheck disable=SC2086
  out=$(srun_dragon -- "$PROBE" memory $args 2>&1) || fail "memory $args: srun exited $?: $out"
  echo "$out"
  set -- $args
  grep -q "probe: ok memory with node $1, $2 bytes" <<<"$out" || fail "memory $args did not pass"
  wait_nothing_left
done
log=$(mktemp)
start_job "$log" "$PROBE" memory-lost 2
wait_for_line "$log" "probe: getting from node 2" 30
kill_dragond_of 2
expect_node_lost "$log" memory-lost 3
rm -f "$log"
wait_nothing_left
echo "ok"
