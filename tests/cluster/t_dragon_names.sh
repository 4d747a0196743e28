#!/bin/bash
# Names across nodes: a process on node 2 names a channel of its node; the head on node 0
# finds it by name, attaches it (remote) and talks through it; the process finds the head's
# name; a name is unique job-wide (taken on another node is AlreadyExists, scoped or not); a
# scoped name goes everywhere when its owner exits, a plain one stays.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon -- "$PROBE" names 2 2>&1) || fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok names across nodes with node 2" <<<"$out" || fail "the probe did not pass"
wait_nothing_left
echo "ok"
