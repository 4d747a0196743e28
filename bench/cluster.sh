#!/usr/bin/env bash
# The cluster group of bench/run: brings up the 3-node test cluster (tests/cluster/cluster.sh),
# measures against baselines taken the same way in the same run, prints metric lines, and
# always tears the cluster down.
#   cluster_bringup_bare    srun --mpi=pmix -N3 of a minimal PMIx program (init, put, fence, get)
#   cluster_bringup_dragon  srun --mpi=pmix -N3 dragon -- /bin/true (wire-up, 3 dragonds, job end)
#   cluster_spawn_local_rate / cluster_spawn_remote_rate
#                           spawn + reap of /bin/true from the head, on its node / on another
# Medians of 7 runs (bring-up) and of 3 runs of 2 s (spawn rates).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
build=$(cd "${1:-build-bench}" && pwd)
cluster=tests/cluster/cluster.sh
"$cluster" check >/dev/null || { echo "bench/cluster: this machine cannot run the test cluster" >&2; exit 1; }
trap '"$cluster" down >/dev/null 2>&1 || true' EXIT
"$cluster" up 3 >&2

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
now() { echo "${EPOCHREALTIME/,/.}"; }
srun3() { "$cluster" exec timeout -k 5 60 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 "$@"; }
dragon=(env DRAGON_ALLOW_ROOT=true "$build/daemon/dragon")

timed() {  # timed CMD... : seconds one run takes
  local t0 t1
  t0=$(now)
  "$@" >/dev/null 2>&1 || { echo "bench/cluster: failed: $*" >&2; return 1; }
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

srun3 "$build/tests/cluster/pmix_minimal" >/dev/null 2>&1  # warm: slurmd caches, page cache
srun3 "${dragon[@]}" -- /bin/true >/dev/null 2>&1
runs() {  # runs CMD... : seven timings, one per line; fails if any run failed
  local i
  for i in 1 2 3 4 5 6 7; do timed "$@" || return 1; done
}
bare=$(runs srun3 "$build/tests/cluster/pmix_minimal" | median)
mine=$(runs srun3 "${dragon[@]}" -- /bin/true | median)
echo "metric cluster_bringup_bare $bare s"
echo "metric cluster_bringup_dragon $mine s"

rate() {  # rate NODE : spawn+reap per second from the head on node 0 to NODE
  srun3 "${dragon[@]}" -- "$build/tests/cluster/cluster_probe" spawn-rate "$1" 2 2>&1 |
    sed -n 's/^probe: spawn-rate node [0-9]* \([0-9.]*\) per s$/\1/p'
}
local_rate=$(for _ in 1 2 3; do rate 0; done | median)
remote_rate=$(for _ in 1 2 3; do rate 1; done | median)
[ -n "$local_rate" ] && [ -n "$remote_rate" ] || { echo "bench/cluster: no spawn rate" >&2; exit 1; }
echo "metric cluster_spawn_local_rate $local_rate /s"
echo "metric cluster_spawn_remote_rate $remote_rate /s"
