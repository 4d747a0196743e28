#!/bin/bash
# Processes on every node: listed with their nodes, signalled, waited for across nodes; a
# process group over three nodes, signalled as one; then
# round-robin placement spreads 30 processes over the 3 nodes, weighted by the CPUs Slurm granted
# the job on each.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon "$PROBE" ps-signal 2>&1) || fail "ps-signal: srun exited $?: $out"
echo "$out"
grep -q "probe: ok ps-signal 3 nodes" <<<"$out" || fail "ps-signal did not pass"
out=$(srun_dragon "$PROBE" groups 2>&1) || fail "groups: srun exited $?: $out"
echo "$out"
grep -q "probe: ok a group over 3 nodes" <<<"$out" || fail "groups did not pass"
out=$(srun_dragon "$PROBE" round-robin 30 2>&1) || fail "round-robin: srun exited $?: $out"
echo "$out"
grep -q "probe: ok round-robin 30 over 3 nodes, 0:10 1:10 2:10" <<<"$out" || fail "round-robin did not pass"
# 4 tasks on 3 nodes: two on n1 (block distribution), so the job has 2 CPUs there and 1 on the
# others, and n1 takes half of the processes.
out=$("$CLUSTER" exec timeout -k 5 90 srun -I30 --mpi=pmix -N3 -n4 \
  env -u DRAGON_BUILD_DIR -u DRAGON_CLUSTER_DIR -u DRAGON_CLUSTER_NODES DRAGON_ALLOW_ROOT=true \
  "$DRAGON" "$PROBE" round-robin 40 2>&1) || fail "weighted round-robin: srun exited $?: $out"
echo "$out"
grep -q "probe: ok round-robin 40 over 3 nodes, 0:20 1:10 2:10" <<<"$out" ||
  fail "round-robin is not weighted by the nodes' CPUs"
wait_nothing_left "sleep 600"
echo "ok"
