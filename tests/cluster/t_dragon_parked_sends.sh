#!/bin/bash
# Waiting sends past a home's cluster.parked_send_bytes: 8 processes of node 2 send 100 KB
# each (staged) to a full 1-slot channel of node 0, whose dragond may hold 64 KiB of them; the
# rest wait on node 2 and are sent again. A latecomer with a deadline times out naming the
# key, and every message then arrives exactly once, intact.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon --export=ALL,DRAGON_CLUSTER_PARKED_SEND_BYTES=64KiB -- "$PROBE" crowd 2 8 100000 2>&1) ||
  fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok crowd: 8 sends of 100000 B .*cluster.parked_send_bytes" <<<"$out" || fail "the probe did not pass"
wait_nothing_left
echo "ok"
