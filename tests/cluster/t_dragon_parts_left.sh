#!/bin/bash
# A process of node 2 that ends in the middle of a message in parts to or from a channel of
# node 0 has what node 0's dragond kept of it dropped at once, through node 2's dragond: a
# send's first part of 2 GiB kept in dragond's memory (its pool full; a second such send then
# fits under the home's 4 GiB of kept sends), the block of the pool such a send is assembled
# in (its pool with room), and the block of a 64 MiB message it began to receive. Before, all
# stayed a minute.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon -- "$BUILD/tests/cluster/parts_probe" head 2 2>&1) || fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok parts left" <<<"$out" || fail "the probe did not pass"
wait_nothing_left
echo "ok"
