#!/usr/bin/env bash
# The cluster group of bench/run: brings up the 3-node test cluster (tests/cluster/cluster.sh),
# measures against baselines taken the same way in the same run, prints metric lines, and
# always tears the cluster down.
#   cluster_bringup_bare    srun --mpi=pmix -N3 of a minimal PMIx program (init, put, fence, get)
#   cluster_bringup_dragon  srun --mpi=pmix -N3 dragon -- /bin/true (wire-up, 3 dragonds, job end)
#   cluster_spawn_local_rate / cluster_spawn_remote_rate
#                           spawn + reap of /bin/true from the head, on its node / on another
#   cluster_ucx_tag_rtt / cluster_ucx_tag_bw_1MiB
#                           ucx_perftest n1<->n2 (tcp over the veths): 2 x tag_lat, and tag_bw
#                           of 1 MiB messages
#   cluster_channel_send_8B / cluster_channel_bw_1MiB / cluster_channel_bw_64MiB
#                           acknowledged sends from the head (n1) to a channel on n2, 8 B,
#                           1 MiB and 64 MiB (in parts) (tests/cluster/cluster_probe channel-bench)
#   cluster_control_rtt     a request the head's own dragond answers (the control-plane floor)
#   cluster_py_queue_rtt_8B 8 B through a Python Queue to a process on n2 and back through
#                           another (bench/cluster_py_queue.py): one remote get and one remote
#                           put of the far process per round trip
#   cluster_py_queue_bw_1MiB
#                           1 MiB numpy arrays put by a process on n2 into a Queue of the head's
#                           node, got there as views of its pool (cluster_py_queue.py bw)
#   cluster_py_pool_map_10ms_1node / cluster_py_pool_map_10ms_3nodes
#                           Pool.map(chunksize=1) of 10 ms tasks (a sleep: the nodes share
#                           this machine's cores), Pool() under Policy local (a worker per CPU
#                           of the head's node) and roundrobin (per CPU of the job)
#   cluster_py_start_join_local / cluster_py_start_join_remote
#                           Process.start() + join() of a process that does nothing, on the
#                           head's node and on n2 (there forked by the head's template of n2)
#   cluster_py_pipe_rtt_idle_recv / cluster_py_pipe_rtt_idle_wait_mixed
#                           8 B through a Pipe to a process on n2 and back, 5 ms apart: received
#                           there with recv(), and with connection.wait over its end and a Pipe
#                           of n2 first (cluster_py_queue.py wait; info)
#   cluster_channel_send_8B_poll / cluster_channel_bw_1MiB_poll / cluster_py_queue_rtt_8B_poll
#                           the three above with cluster.poll=100us (info)
#   cluster_ucx_put_bw_16MiB / cluster_ucx_get_bw_16MiB
#                           ucx_perftest n1<->n2: ucp_put_bw and ucp_get of 16 MiB
#   cluster_memory_put_16MiB / cluster_memory_get_16MiB
#                           Client::put / get of 16 MiB between a pool on n1 and one on n2, one
#                           at a time, waited for (tests/cluster/cluster_probe memory-bench)
#   cluster_bringup_{dragon,bare}_N{2,4,8,16}
#                           bring-up as above on a 16-node cluster, at 2, 4, 8 and 16 nodes
#                           (info: how it grows)
# Medians of 7 runs (bring-up) and of 3 runs (the rest).
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

# UCX alone between the same two nodes: ucx_perftest's server on n1, its client on n2.
perftest() {  # perftest PORT ARGS... : the client's "Final:" line
  local port=$1 deadline=$((SECONDS + 20)) spid
  shift
  timeout 60 "$cluster" node 1 ucx_perftest -p "$port" >/dev/null 2>&1 &
  spid=$!
  until "$cluster" node 1 ss -Hltn "sport = :$port" | grep -q LISTEN; do
    [ $SECONDS -lt $deadline ] || { echo "bench/cluster: ucx_perftest server not listening" >&2; exit 1; }
    sleep 0.05
  done
  timeout 60 "$cluster" node 2 ucx_perftest "$("$cluster" addr 1)" -p "$port" "$@" 2>&1 | grep '^Final:'
  wait "$spid" || true
}
# "Final: iters typical_lat avg_lat overall_lat avg_bw overall_bw ..." (us, MB/s)
tag_rtt=$(for p in 18101 18102 18103; do perftest "$p" -t tag_lat -n 10000 -w 500; done |
  awk '{ printf "%.3f\n", 2 * $4 }' | median)
tag_bw=$(for p in 18104 18105 18106; do perftest "$p" -t tag_bw -s 1048576 -n 300 -w 20; done |
  awk '{ print $7 }' | median)
[ -n "$tag_rtt" ] && [ -n "$tag_bw" ] || { echo "bench/cluster: no ucx_perftest result" >&2; exit 1; }
echo "metric cluster_ucx_tag_rtt $tag_rtt us"
echo "metric cluster_ucx_tag_bw_1MiB $tag_bw MB/s"

probe() { srun3 "${dragon[@]}" -- "$build/tests/cluster/cluster_probe" "$@" 2>&1; }
send8=$(for _ in 1 2 3; do probe channel-bench 1 5000 8; done |
  sed -n 's/^probe: channel-bench 8 B: \([0-9.]*\) us per send.*/\1/p' | median)
bw=$(for _ in 1 2 3; do probe channel-bench 1 300 1048576; done |
  sed -n 's/^probe: channel-bench 1048576 B: .* \([0-9.]*\) MB\/s$/\1/p' | median)
bw64=$(for _ in 1 2 3; do probe channel-bench 1 16 67108864; done |
  sed -n 's/^probe: channel-bench 67108864 B: .* \([0-9.]*\) MB\/s$/\1/p' | median)
ctl=$(for _ in 1 2 3; do probe control-rtt 5000; done |
  sed -n 's/^probe: control-rtt \([0-9.]*\) us$/\1/p' | median)
[ -n "$send8" ] && [ -n "$bw" ] && [ -n "$bw64" ] && [ -n "$ctl" ] || { echo "bench/cluster: no channel result" >&2; exit 1; }
echo "metric cluster_channel_send_8B $send8 us"
echo "metric cluster_channel_bw_1MiB $bw MB/s"
echo "metric cluster_channel_bw_64MiB $bw64 MB/s"
echo "metric cluster_control_rtt $ctl us"
pyq=$(for _ in 1 2 3; do srun3 "${dragon[@]}" "$PWD/bench/cluster_py_queue.py" rtt 2000 2>&1; done |
  sed -n 's/^py-queue-rtt 8B: \([0-9.]*\) us$/\1/p' | median)
[ -n "$pyq" ] || { echo "bench/cluster: no Python queue result" >&2; exit 1; }
echo "metric cluster_py_queue_rtt_8B $pyq us"
pybw=$(for _ in 1 2 3; do srun3 "${dragon[@]}" "$PWD/bench/cluster_py_queue.py" bw 300 2>&1; done |
  sed -n 's/^py-queue-bw 1MiB: \([0-9.]*\) MB\/s$/\1/p' | median)
pool=$(for _ in 1 2 3; do srun3 "${dragon[@]}" "$PWD/bench/cluster_py_queue.py" poolmap 300 2>&1; done)
pool1=$(sed -n 's/^py-pool-map 10ms local: \([0-9.]*\) tasks\/s.*/\1/p' <<<"$pool" | median)
pool3=$(sed -n 's/^py-pool-map 10ms roundrobin: \([0-9.]*\) tasks\/s.*/\1/p' <<<"$pool" | median)
[ -n "$pybw" ] && [ -n "$pool1" ] && [ -n "$pool3" ] || { echo "bench/cluster: no Python bw or pool result" >&2; exit 1; }
echo "metric cluster_py_queue_bw_1MiB $pybw MB/s"
echo "metric cluster_py_pool_map_10ms_1node $pool1 tasks/s"
echo "metric cluster_py_pool_map_10ms_3nodes $pool3 tasks/s"
sj=$(for _ in 1 2 3; do srun3 "${dragon[@]}" "$PWD/bench/cluster_py_queue.py" startjoin 50 2>&1; done)
sjl=$(sed -n 's/^py-start-join local: \([0-9.]*\) ms$/\1/p' <<<"$sj" | median)
sjr=$(sed -n 's/^py-start-join remote: \([0-9.]*\) ms$/\1/p' <<<"$sj" | median)
[ -n "$sjl" ] && [ -n "$sjr" ] || { echo "bench/cluster: no Python start result: $sj" >&2; exit 1; }
echo "metric cluster_py_start_join_local $sjl ms"
echo "metric cluster_py_start_join_remote $sjr ms"
pw=$(for _ in 1 2 3; do srun3 "${dragon[@]}" "$PWD/bench/cluster_py_queue.py" wait 200 2>&1; done)
pwr=$(sed -n 's/^py-pipe-rtt recv: \([0-9.]*\) us$/\1/p' <<<"$pw" | median)
pww=$(sed -n 's/^py-pipe-rtt wait-mixed: \([0-9.]*\) us$/\1/p' <<<"$pw" | median)
[ -n "$pwr" ] && [ -n "$pww" ] || { echo "bench/cluster: no Python wait result: $pw" >&2; exit 1; }
echo "metric cluster_py_pipe_rtt_idle_recv $pwr us"
echo "metric cluster_py_pipe_rtt_idle_wait_mixed $pww us"
# The same with cluster.poll=100us (dragond polls between events; off by default).
polled=(env DRAGON_CLUSTER_POLL=100us "${dragon[@]}")
send8p=$(for _ in 1 2 3; do srun3 "${polled[@]}" -- "$build/tests/cluster/cluster_probe" channel-bench 1 5000 8 2>&1; done |
  sed -n 's/^probe: channel-bench 8 B: \([0-9.]*\) us per send.*/\1/p' | median)
bwp=$(for _ in 1 2 3; do srun3 "${polled[@]}" -- "$build/tests/cluster/cluster_probe" channel-bench 1 300 1048576 2>&1; done |
  sed -n 's/^probe: channel-bench 1048576 B: .* \([0-9.]*\) MB\/s$/\1/p' | median)
pyqp=$(for _ in 1 2 3; do srun3 "${polled[@]}" "$PWD/bench/cluster_py_queue.py" rtt 2000 2>&1; done |
  sed -n 's/^py-queue-rtt 8B: \([0-9.]*\) us$/\1/p' | median)
[ -n "$send8p" ] && [ -n "$bwp" ] && [ -n "$pyqp" ] || { echo "bench/cluster: no polled result" >&2; exit 1; }
echo "metric cluster_channel_send_8B_poll $send8p us"
echo "metric cluster_channel_bw_1MiB_poll $bwp MB/s"
echo "metric cluster_py_queue_rtt_8B_poll $pyqp us"

# Remote memory against UCX's own one-sided transfers between the same two nodes.
put_bw=$(for p in 18107 18108 18109; do perftest "$p" -t ucp_put_bw -s 16777216 -n 100 -w 5; done |
  awk '{ print $7 }' | median)
get_bw=$(for p in 18110 18111 18112; do perftest "$p" -t ucp_get -s 16777216 -n 100 -w 5; done |
  awk '{ print $7 }' | median)
mem=$(for _ in 1 2 3; do probe memory-bench 1 16777216 30; done |
  sed -n 's/^probe: memory-bench 16777216 B: put \([0-9.]*\) MB\/s, get \([0-9.]*\) MB\/s$/\1 \2/p')
mem_put=$(awk '{ print $1 }' <<<"$mem" | median)
mem_get=$(awk '{ print $2 }' <<<"$mem" | median)
[ -n "$put_bw" ] && [ -n "$get_bw" ] && [ -n "$mem_put" ] && [ -n "$mem_get" ] ||
  { echo "bench/cluster: no remote memory result" >&2; exit 1; }
echo "metric cluster_ucx_put_bw_16MiB $put_bw MB/s"
echo "metric cluster_ucx_get_bw_16MiB $get_bw MB/s"
echo "metric cluster_memory_put_16MiB $mem_put MB/s"
echo "metric cluster_memory_get_16MiB $mem_get MB/s"

# How bring-up grows: a 16-node cluster (16 slurmd namespaces on this machine), median of 3.
"$cluster" up 16 >&2
srunN() { local n=$1; shift; "$cluster" exec timeout -k 5 60 srun -I30 --mpi=pmix -N"$n" --ntasks-per-node=1 "$@"; }
srunN 16 "$build/tests/cluster/pmix_minimal" >/dev/null 2>&1
for n in 2 4 8 16; do
  b=$(for _ in 1 2 3; do timed srunN "$n" "$build/tests/cluster/pmix_minimal"; done | median)
  d=$(for _ in 1 2 3; do timed srunN "$n" "${dragon[@]}" -- /bin/true; done | median)
  echo "metric cluster_bringup_bare_N$n $b s"
  echo "metric cluster_bringup_dragon_N$n $d s"
done
