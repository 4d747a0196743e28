#!/bin/bash
# Processes on every node: listed with their nodes, signalled, waited for across nodes; then
# round-robin placement spreads 30 processes over the 3 nodes.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon "$PROBE" ps-signal 2>&1) || fail "ps-signal: srun exited $?: $out"
echo "$out"
grep -q "probe: ok ps-signal 3 nodes" <<<"$out" || fail "ps-signal did not pass"
out=$(srun_dragon "$PROBE" round-robin 30 2>&1) || fail "round-robin: srun exited $?: $out"
echo "$out"
grep -q "probe: ok round-robin 30 over 3 nodes" <<<"$out" || fail "round-robin did not pass"
wait_nothing_left "sleep 600"
echo "ok"
