#!/usr/bin/env bash
# Compares builds on the 3-node test cluster: acknowledged sends from the head (n1) to a
# channel on n2 (tests/cluster/cluster_probe channel-bench), one run per build in turn, ROUNDS
# times, then the median per build of the time per send and (with perf installed) of the CPU
# the three dragonds used, user and kernel, from perf samples at 1 kHz, over the whole job
# (its start and end included) divided by the messages sent: use a few hundred sends.
#   bench/cluster_ab.sh ROUNDS BYTES SENDS BUILD_DIR...
# Each BUILD_DIR holds daemon/dragon, daemon/dragond, the modules and
# tests/cluster/cluster_probe (meson -Dbench=true builds them).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
[ $# -ge 4 ] || { echo "usage: bench/cluster_ab.sh ROUNDS BYTES SENDS BUILD_DIR..." >&2; exit 2; }
rounds=$1 bytes=$2 sends=$3
shift 3
builds=()
for b in "$@"; do builds+=("$(cd "$b" && pwd)"); done
cluster=tests/cluster/cluster.sh
"$cluster" check >/dev/null || { echo "bench/cluster_ab: this machine cannot run the test cluster" >&2; exit 1; }
work=$(mktemp -d)
trap '"$cluster" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$cluster" up 3 >&2
srun3() { "$cluster" exec timeout -k 5 120 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 "$@"; }
probe() {  # probe BUILD : the probe's line
  srun3 env DRAGON_ALLOW_ROOT=true "$1/daemon/dragon" -- "$1/tests/cluster/cluster_probe" \
    channel-bench 1 "$sends" "$bytes" 2>&1 | grep '^probe: channel-bench' || true
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
for b in "${builds[@]}"; do srun3 env DRAGON_ALLOW_ROOT=true "$b/daemon/dragon" -- /bin/true >/dev/null 2>&1; done
have_perf=false
command -v perf >/dev/null && perf record -q -o "$work/t.data" -- true >/dev/null 2>&1 && have_perf=true
# channel-bench also sends max(10, SENDS / 10) to warm up, and one last message.
total=$((sends + (sends / 10 > 10 ? sends / 10 : 10) + 1))
for r in $(seq "$rounds"); do
  for i in "${!builds[@]}"; do
    b=${builds[$i]}
    if $have_perf; then
      line=$(perf record -q -a -F 1000 -o "$work/p.data" -- bash -c "$(declare -f srun3 probe); cluster=$cluster sends=$sends bytes=$bytes; probe $b" 2>/dev/null)
      ms=$(perf report -i "$work/p.data" --sort comm --stdio -F sample,comm 2>/dev/null |
        awk '$2 == "dragond" { print $1 }')
      cpu=$(awk -v ms="${ms:-0}" -v n="$total" 'BEGIN { printf "%.0f", ms * 1000 / n }')
    else
      line=$(probe "$b") cpu=
    fi
    us=$(sed -n 's/^probe: channel-bench [0-9]* B: \([0-9.]*\) us per send.*/\1/p' <<<"$line")
    [ -n "$us" ] || { echo "bench/cluster_ab: $b: no result" >&2; exit 1; }
    echo "$us ${cpu:-}" >>"$work/$i"
    echo "round $r $b: $us us per send${cpu:+, dragond CPU $cpu us per send}"
  done
done
for i in "${!builds[@]}"; do
  echo "median ${builds[$i]}: $(cut -d' ' -f1 "$work/$i" | median) us per send$($have_perf && echo ", dragond CPU $(cut -d' ' -f2 "$work/$i" | median) us per send")"
done
