#!/bin/bash
# The head program (on rank 0's node) starts a process on every node by node id, gets each one's
# exit code back, and every process's output reaches srun; then nothing of the job is left.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon --label -- "$PROBE" spawn-all 2>&1) || fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok spawn-all 3 nodes" <<<"$out" || fail "the probe did not pass"
# A node's CPUs are those Slurm granted the job there (one per task by default), not the node's
# two (task/none binds nothing, so the affinity mask alone would say two).
grep -qF "probe: 3 nodes: 0=n1(1 cpus) 1=n2(1 cpus) 2=n3(1 cpus)" <<<"$out" ||
  fail "the nodes' CPUs are not what Slurm granted"
for k in 1 2 3; do
  # Each line comes from the launcher of the node the process ran on (srun labels it with the
  # rank), and the process talked to that node's dragond.
  grep -qE "^$((k - 1)): hello from n$k node $((k - 1)) socket job-.*-node$((k - 1))\.sock$" <<<"$out" ||
    fail "no output from node $((k - 1)) through rank $((k - 1))"
done
wait_nothing_left
out=$(srun_dragon --cpus-per-task=2 -- "$PROBE" spawn-all 2>&1) || fail "srun -c2 exited $?: $out"
grep -qF "probe: 3 nodes: 0=n1(2 cpus) 1=n2(2 cpus) 2=n3(2 cpus)" <<<"$out" ||
  { echo "$out"; fail "with --cpus-per-task=2 the nodes do not have 2 CPUs each"; }
wait_nothing_left
# dragon --label: every line of the job, from any node, says which node and process it came from.
out=$(srun_dragon -- --label -- "$PROBE" spawn-all 2>&1) || fail "srun exited $?: $out"
for k in 1 2 3; do
  grep -qE "^\[$((k - 1)):[0-9]+\] hello from n$k node $((k - 1)) " <<<"$out" ||
    { echo "$out"; fail "no labelled line from node $((k - 1))"; }
done
grep -qE "^\[0:[0-9]+\] probe: ok spawn-all 3 nodes" <<<"$out" || fail "the head's own lines are not labelled"
wait_nothing_left
# The same from C.
out=$(srun_dragon "$BUILD/tests/cluster/capi_probe" 2>&1) || fail "capi_probe: srun exited $?: $out"
echo "$out"
grep -q "capi-probe: ok 3 nodes, channels with node 1" <<<"$out" || fail "the C probe did not pass"
wait_nothing_left
echo "ok"
