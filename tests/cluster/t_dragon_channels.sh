#!/bin/bash
# Channels across nodes: the head (node 0) and a process on node 2 each use the other's channels
# as remote ones, through their dragonds' gateways: 1000 messages in order and exactly once
# through a 4-slot channel (the sends wait on the home node), try / deadline / poll / close /
# MessageTooLarge with the local codes, 1, 8 and 40 MiB messages (40 MiB in parts), messages filled in place (staged, inline, in parts), and a blocking remote recv.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon -- "$PROBE" channels 2 2>&1) || fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok channels with node 2: 1000 messages in order.*1, 8 and 40 MiB, filled in place" <<<"$out" || fail "the probe did not pass"
wait_nothing_left
echo "ok"
