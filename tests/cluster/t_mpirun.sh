#!/bin/bash
# The same dragon under another PMIx server: Open MPI's mpirun (Debian's uses the system PMIx),
# one task per node of the test cluster, its daemons started through mpirun_agent.sh (in place
# of ssh). The head starts a process on every node by id and gets their exit codes and output,
# as under srun; then nothing of the job is left.
. "$(dirname "$0")/lib.sh"
command -v mpirun >/dev/null || { echo "mpirun not installed (openmpi-bin)"; exit 77; }
here=$(cd "$(dirname "$0")" && pwd)
hosts=$(for k in 1 2 3; do "$CLUSTER" addr "$k"; done | paste -sd, -)
set +e
out=$(timeout -k 5 90 "$CLUSTER" node 1 env TEST_CLUSTER_SH="$CLUSTER" \
  mpirun --allow-run-as-root --host "$hosts" --map-by ppr:1:node \
    --mca plm_rsh_agent "$here/mpirun_agent.sh" --mca btl self,tcp \
    env -u DRAGON_BUILD_DIR -u DRAGON_CLUSTER_DIR -u DRAGON_CLUSTER_NODES DRAGON_ALLOW_ROOT=true \
    "$DRAGON" -- "$PROBE" spawn-all 2>&1)
rc=$?
set -e
echo "$out"
[ "$rc" -eq 0 ] || fail "mpirun exited $rc"
grep -q "probe: ok spawn-all 3 nodes" <<<"$out" || fail "the probe did not pass under mpirun"
grep -q "probe: 3 nodes: 0=n1(.*) 1=n2(.*) 2=n3(" <<<"$out" || fail "the nodes are not named by their hostnames"
for k in 1 2 3; do
  grep -qE "^hello from n$k node $((k - 1)) socket job-.*-node$((k - 1))\.sock$" <<<"$out" ||
    fail "no output from node $((k - 1))"
done
wait_nothing_left
left=$(find /tmp/dragon-0 -maxdepth 1 -name 'job-*' 2>/dev/null || true)
[ -z "$left" ] || fail "sockets left behind: $left"
echo "ok"
