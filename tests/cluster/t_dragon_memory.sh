#!/bin/bash
# Remote memory: the head gets and puts between a pool of its node and an allocation of a pool
# on another node (whole, in 16 parts in flight at once, a range past the far end refused
# there without writing), with the bytes checked on both sides; then a node's dragond is
# killed while the head gets from it: NodeLost, not a hang.
#
# Known failure, not ours to fix here: UCX 1.13 (Debian 12) emulates RMA over tcp with active
# messages, and the target of an emulated put answers each one with a completion message; when
# the initiator (here node 2's dragond, putting what the head gets) is killed with such an
# answer due, the send fails and UCX aborts the target's process (ucp_request.inl: "Fatal:
# unexpected error" in ucp_put_handler), so the head's dragond dies with it and the probe gets
# PeerLost, not NodeLost. The test then says so in a note and still requires the job to end
# non-zero and nothing to be left (docs/cluster.md, "Failures").
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
set +e
wait "$SRUN_PID"
rc=$?
set -e
if grep -q "Fatal: unexpected error" "$log" && grep -q "ucp_put_handler" "$log"; then
  cat "$log"
  [ "$rc" -ne 0 ] || fail "the job succeeded after losing a node"
  echo "note: KNOWN UCX 1.13 BUG: the head's dragond was aborted by UCX (emulated put over tcp" \
    "whose initiator died): PeerLost, not NodeLost (docs/cluster.md)"
else
  SRUN_RC=$rc expect_node_lost "$log" memory-lost 3
fi
rm -f "$log"
wait_nothing_left
echo "ok"
