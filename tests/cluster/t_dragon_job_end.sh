#!/bin/bash
# The job's exit code is the head's, on every rank; several tasks per node start one dragond per
# node; srun without --mpi=pmix is a clear error, not three separate jobs.
. "$(dirname "$0")/lib.sh"
set +e
out=$(srun_dragon -- sh -c 'echo head on $(hostname); exit 7' 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" -eq 7 ] || fail "srun exited $rc, not the head's 7"
grep -q "^head on n1$" <<<"$out" || fail "the head did not run on n1"
wait_nothing_left

set +e
out=$(srun_dragon --ntasks-per-node=2 -- "$PROBE" spawn-all 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" -eq 0 ] || fail "with 2 tasks per node srun exited $rc"
grep -q "probe: ok spawn-all 3 nodes" <<<"$out" || fail "the probe did not pass with 2 tasks per node"
wait_nothing_left

# The shortest job with 2 tasks per node: the other launchers of each node must still find
# its dragond to learn the job's end (it waits for them), 10 times over.
for i in 1 2 3 4 5 6 7 8 9 10; do
  set +e
  out=$(srun_dragon --ntasks-per-node=2 -- sh -c 'exit 5' 2>&1); rc=$?
  set -e
  [ "$rc" -eq 5 ] || { echo "$out"; fail "run $i of a short job with 2 tasks per node exited $rc"; }
done
wait_nothing_left

# A launcher that takes no part (the second task of a node) ends of SIGTERM as a process
# without a handler would, at once; the job goes on and ends with its head.
log=$(mktemp)
go=$(mktemp -u /tmp/dragon-job-end-go.XXXXXX)
start_job "$log" --ntasks-per-node=2 -- -- sh -c "echo running; while [ ! -e $go ]; do sleep 0.05; done; echo head done"
wait_for_line "$log" "^running$" 30
second=
for pid in $(pgrep -f -- "^$DRAGON -- sh -c echo running" || true); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_LOCALID=1"; then
    second=$pid
    break
  fi
done
[ -n "$second" ] || fail "no second launcher of a node found"
kill -TERM "$second"
deadline=$((SECONDS + 15))
while kill -0 "$second" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the second launcher of a node ignored SIGTERM"
  sleep 0.05
done
grep -q "^head done$" "$log" && fail "the job ended with the second launcher"
touch "$go"
set +e
wait "$SRUN_PID"
set -e
rm -f "$go"
grep -q "^head done$" "$log" || { cat "$log"; fail "the head did not finish"; }
rm -f "$log"
wait_nothing_left

set +e
out=$("$CLUSTER" exec timeout -k 5 60 srun -I30 --mpi=none -N3 --ntasks-per-node=1 \
        env DRAGON_ALLOW_ROOT=true "$DRAGON" -- /bin/true 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" -ne 0 ] || fail "srun without PMIx succeeded"
grep -q "srun --mpi=pmix" <<<"$out" || fail "the error does not name the fix"
wait_nothing_left

# A process of a 3-node job that runs `dragon` (a pipeline script's step): a job of its own on
# its node's dragond, not an unwired step (it inherits the step's SLURM_*), whose end leaves
# the enclosing job running.
set +e
# shellcheck disable=SC2016 # expanded by the head's shell
out=$(srun_dragon -- sh -c '"'"$DRAGON"'" -- sh -c "echo inner on \$(hostname); exit 3"; echo "inner exited $?"; echo outer still here' 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" -eq 0 ] || fail "the enclosing job exited $rc"
grep -q "^inner on n1$" <<<"$out" || fail "the inner job did not run"
grep -q "^inner exited 3$" <<<"$out" || fail "the inner job's code did not come back"
grep -q "^outer still here$" <<<"$out" || fail "the inner job's end ended the enclosing job"
wait_nothing_left
echo "ok"
