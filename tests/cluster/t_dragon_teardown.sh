#!/bin/bash
# scancel of a running job, and SIGKILL of rank 0's launcher: everything of the job goes on
# every node.
. "$(dirname "$0")/lib.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for how in scancel kill-launcher; do
  : >"$log"
  srun_dragon -- sh -c 'echo running; exec sleep 600' >"$log" 2>&1 &
  srun_pid=$!
  wait_for_line "$log" "^running$" 30
  # The other nodes' dragonds are up too (they joined before the head started).
  [ "$(pgrep -fc -- "$BUILD/daemon/dragond .*--node-id")" -eq 3 ] || fail "not 3 dragonds"
  if [ "$how" = scancel ]; then
    jid=$("$CLUSTER" exec squeue -h -o %i | head -1)
    [ -n "$jid" ] || fail "no job in squeue"
    "$CLUSTER" exec scancel "$jid"
  else
    launcher=$(pgrep -f -- "^$DRAGON sh -c echo running" | while read -r p; do
      if grep -q "PMIX_RANK=0" "/proc/$p/environ" 2>/dev/null; then echo "$p"; fi; done | head -1)
    [ -n "$launcher" ] || fail "no rank-0 launcher"
    kill -KILL "$launcher"
  fi
  set +e
  wait "$srun_pid"; rc=$?
  set -e
  cat "$log"
  [ "$rc" -ne 0 ] || fail "$how: srun exited 0"
  wait_nothing_left "sleep 600"
  echo "ok: $how"
done

# srun itself stopped (here by timeout's SIGTERM) while the launchers wait in the PMIx fence for
# a rank that never comes: Slurm ends the step with SIGKILL, so the dragonds cannot remove
# their sockets. The next job's dragonds remove them (once they are a minute old: backdated
# here), and nothing else.
"$CLUSTER" exec timeout -k 2 4 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 \
  env DRAGON_ALLOW_ROOT=true sh -c 'if [ "$SLURM_PROCID" = 2 ]; then exec sleep 30; fi; exec '"$DRAGON"' -- true' \
  >"$log" 2>&1 || true
cat "$log"
deadline=$((SECONDS + 15))
while pgrep -f "$BUILD/daemon/dragond .*--node-id|sleep 30" >/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the forced-down step's processes stayed"
  sleep 0.1
done
mapfile -t killed < <(find /tmp/dragon-0 -maxdepth 1 -name 'job-slurm*' 2>/dev/null)
echo "note: left by the SIGKILLed dragonds: ${killed[*]:-none}"
for s in "${killed[@]}"; do touch -h -d '-2 min' "$s"; done
out=$(srun_dragon -- true 2>&1) || fail "the next job failed: $out"
wait_nothing_left
echo "ok: SIGKILLed dragonds' sockets removed by the next job"

# A rank whose task fails before the PMIx fence: the others do not wait for ever there (Slurm's
# server keeps a fence for its PMIxTimeout, 300 s), but for cluster.connect_timeout, and say why.
: >"$log"
t0=$SECONDS
set +e
"$CLUSTER" exec timeout -k 5 60 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 \
  env DRAGON_ALLOW_ROOT=true DRAGON_CLUSTER_CONNECT_TIMEOUT=3s \
  sh -c 'if [ "$SLURM_PROCID" = 2 ]; then exit 3; fi; exec '"$DRAGON"' -- true' >"$log" 2>&1
rc=$?
set -e
cat "$log"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "srun exited $rc (124: the ranks waited in the fence)"
for r in 0 1; do
  grep -q "rank $r on n$((r + 1)): the PMIx exchange failed: Timeout: the PMIx fence did not complete within 3 s" "$log" ||
    fail "rank $r did not report the fence's timeout"
done
wait_nothing_left
echo "note: a rank that never reached the fence: the job ended after $((SECONDS - t0)) s"
