#!/bin/bash
# UCX between two nodes, without Slurm: ucx_perftest server on n1, client on n2 (-t tag_lat -n 1000),
# each started with "cluster.sh node K" (the node's net+uts+mount namespaces). Checks that
#  - the 'node' subcommand lands in the right node (hostname, address, own boot_id) and refuses
#    a node that does not exist;
#  - UCX, left to choose (no UCX_TLS), uses tcp/eth0 between n1 and n2 (so it sees two hosts:
#    the per-node boot_id works), the test completes and reports a latency;
#  - inside one node (client and server both on n1) it uses shared memory instead.
# No assertion on the latency value (2 busy cores: it varies a lot).
# Run through tests/cluster/run.sh (needs $CLUSTER).
set -euo pipefail
: "${CLUSTER:?run this through tests/cluster/run.sh}"
fail() { echo "FAIL: $*"; exit 1; }
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not installed (ucx-utils)"; exit 77; }
nodes=${DRAGON_CLUSTER_NODES:-3}
[ "$nodes" -ge 2 ] || { echo "needs 2 nodes, the cluster has $nodes"; exit 77; }

node() { timeout 10 "$CLUSTER" node "$@"; }

# ---- the 'node' subcommand enters the right namespaces
[ "$(node 1 hostname)" = n1 ] || fail "node 1: hostname is not n1"
[ "$(node 2 hostname)" = n2 ] || fail "node 2: hostname is not n2"
addr1=$("$CLUSTER" addr 1)
node 1 ip -o -4 addr show dev eth0 | grep -q " $addr1/" || fail "node 1 does not have $addr1 on eth0"
b0=$(cat /proc/sys/kernel/random/boot_id)
b1=$(node 1 cat /proc/sys/kernel/random/boot_id)
b2=$(node 2 cat /proc/sys/kernel/random/boot_id)
if [ "$b1" = "$b0" ] || [ "$b2" = "$b0" ] || [ "$b1" = "$b2" ]; then
  fail "boot_ids not distinct: host $b0 n1 $b1 n2 $b2"
fi
if node $((nodes + 1)) true 2>/dev/null; then fail "'node $((nodes + 1))' did not fail"; fi

# ---- ucx_perftest
log=$(mktemp); spid=""
trap '[ -z "$spid" ] || kill $spid 2>/dev/null || true; rm -f "$log"' EXIT

perftest() {  # perftest SERVER_NODE CLIENT_NODE PORT : the client's output -> $OUT
  local srv=$1 cli=$2 port=$3 deadline=$((SECONDS + 20)) out rc=0
  timeout 60 "$CLUSTER" node "$srv" ucx_perftest -p "$port" >"$log" 2>&1 &
  spid=$!
  until node "$srv" ss -Hltn "sport = :$port" | grep -q LISTEN; do
    kill -0 $spid 2>/dev/null || { cat "$log"; fail "ucx_perftest server on n$srv exited"; }
    [ $SECONDS -lt $deadline ] || { cat "$log"; fail "ucx_perftest server on n$srv not listening after 20 s"; }
    sleep 0.1
  done
  # -I prints the endpoint configuration (lanes), i.e. the transport UCX chose
  out=$(timeout 60 "$CLUSTER" node "$cli" ucx_perftest "$addr1" -p "$port" -t tag_lat -n 1000 -w 100 -I 2>&1) || rc=$?
  [ $rc -eq 0 ] || { echo "$out"; echo "--- server:"; cat "$log"; fail "ucx_perftest client on n$cli exited with $rc"; }
  wait $spid || rc=$?
  spid=""
  [ $rc -eq 0 ] || { echo "$out"; echo "--- server:"; cat "$log"; fail "ucx_perftest server on n$srv exited with $rc"; }
  echo "$out"
  OUT=$out
}
latency() {  # latency OUTPUT : check the "Final:" line; "typical/average" latency -> $LAT
  # "Final:  <iters>  <typical lat>  <avg lat>  <overall lat>  <avg bw>  <overall bw> ..."
  local final iters typ avg
  final=$(grep -E '^Final:' <<<"$1" | tail -n 1)
  [ -n "$final" ] || fail "no 'Final:' line from ucx_perftest"
  read -r _ iters typ avg _ <<<"$final"
  [ "$iters" = 1000 ] || fail "expected 1000 iterations, got '$iters'"
  awk -v t="$typ" -v a="$avg" 'BEGIN { exit !(t > 0 && a > 0) }' || fail "no latency in: $final"
  LAT="typical ${typ} us, average ${avg} us"
}

perftest 1 2 17917
grep -qE 'lane\[0\]: +[0-9]+:tcp/eth0' <<<"$OUT" || fail "UCX did not use tcp/eth0 between n1 and n2"
latency "$OUT"
echo "ok: n1<->n2 over tcp/eth0: $LAT"

perftest 1 1 17918
grep -qE 'lane\[0\]: +[0-9]+:(sysv|posix)/' <<<"$OUT" || fail "UCX did not use shared memory inside n1"
latency "$OUT"
echo "ok: n1<->n1 over shared memory: $LAT"
