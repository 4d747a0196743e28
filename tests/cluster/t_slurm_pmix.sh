#!/bin/bash
# Smoke test of the cluster: one task on each of 3 nodes under srun --mpi=pmix.
# Each task prints its hostname, SLURM_NODEID and PMIX_RANK (set by Slurm's pmix plugin);
# we expect the hostnames n1, n2, n3 (one per node, each with the matching node id) and ranks 0, 1, 2.
# Run through tests/cluster/run.sh (needs $CLUSTER).
set -euo pipefail
: "${CLUSTER:?run this through tests/cluster/run.sh}"
fail() { echo "FAIL: $*"; exit 1; }

nodes=${DRAGON_CLUSTER_NODES:-3}
[ "$nodes" -ge 3 ] || { echo "needs 3 nodes, the cluster has $nodes"; exit 77; }

# -I30: fail instead of queueing forever if the allocation cannot be met
# shellcheck disable=SC2016 # expanded by the task's shell
out=$(timeout 60 "$CLUSTER" exec timeout 50 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 \
        sh -c 'echo "task host=$(hostname) nodeid=${SLURM_NODEID:-unset} rank=${PMIX_RANK:-unset} ns=${PMIX_NAMESPACE:-unset}"' 2>&1) \
  || fail "srun exited with $?: $out"
echo "$out"

lines=$(grep -c '^task ' <<<"$out" || true)
[ "$lines" -eq 3 ] || fail "expected 3 task lines, got $lines"
hosts=$(sed -n 's/^task host=\([^ ]*\) .*/\1/p' <<<"$out" | sort | tr '\n' ' ')
[ "$hosts" = "n1 n2 n3 " ] || fail "expected hostnames 'n1 n2 n3', got '$hosts'"
ranks=$(sed -n 's/^task .* rank=\([^ ]*\) .*/\1/p' <<<"$out" | sort -n | tr '\n' ' ')
[ "$ranks" = "0 1 2 " ] || fail "expected PMIx ranks '0 1 2', got '$ranks'"
for k in 1 2 3; do
  grep -q "^task host=n$k nodeid=$((k - 1)) " <<<"$out" || fail "n$k does not have SLURM_NODEID=$((k - 1))"
done
nss=$(sed -n 's/.* ns=\(.*\)$/\1/p' <<<"$out" | sort -u | wc -l)
[ "$nss" -eq 1 ] || fail "tasks do not share one PMIx namespace"
echo "ok: 3 nodes n1..n3, PMIx ranks 0..2"
