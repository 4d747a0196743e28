#!/bin/bash
# Remote memory: the head gets and puts between a pool of its node and an allocation of a pool
# on another node (whole, in 16 parts in flight at once, a range past the far end refused
# there without writing), with the bytes checked on both sides; then a node's dragond is
# killed while the head gets from it: NodeLost, not a hang; and a cluster.rma typo is an
# error.
#
# The transfer the killed node initiated is carried as Dragon's own messages over tcp: before
# that (UCX 1.13 emulating RMA with its own messages), the head's dragond, its target, was
# aborted by UCX in about one run of three (docs/cluster.md, "Remote memory").
. "$(dirname "$0")/lib.sh"
for args in "1 $((16 << 20))" "2 1000003"; do
  # shellcheck disable=SC2086
  out=$(srun_dragon -- "$PROBE" memory $args 2>&1) || fail "memory $args: srun exited $?: $out"
  echo "$out"
  set -- $args
  grep -q "probe: ok memory with node $1, $2 bytes" <<<"$out" || fail "memory $args did not pass"
  wait_nothing_left
done
# How transfers travel is chosen by cluster.rma; a value that is none of its choices ends the
# job with an error that names it, before anything runs.
out=$(srun_dragon --export=ALL,DRAGON_CLUSTER_RMA=sometimes -- "$PROBE" memory 1 4096 2>&1) &&
  fail "DRAGON_CLUSTER_RMA=sometimes was accepted: $out"
grep -q "key 'cluster.rma': 'sometimes' is not one of auto|messages|native" <<<"$out" ||
  fail "no clear error for DRAGON_CLUSTER_RMA=sometimes: $out"
! grep -q "probe: ok memory" <<<"$out" || fail "the job ran with DRAGON_CLUSTER_RMA=sometimes"
wait_nothing_left
log=$(mktemp)
start_job "$log" "$PROBE" memory-lost 2
wait_for_line "$log" "probe: getting from node 2" 30
kill_dragond_of 2
set +e
wait "$SRUN_PID"
rc=$?
set -e
SRUN_RC=$rc expect_node_lost "$log" memory-lost 3
rm -f "$log"
wait_nothing_left
echo "ok"
