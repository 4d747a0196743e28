#!/bin/bash
# run.sh [TESTS...] - bring up the local Slurm cluster (cluster.sh up), run the multi-node tests
# tests/cluster/t_*.sh (all executable ones, or only those named: t_foo, t_foo.sh or a path),
# each under 'timeout 120', then tear the cluster down (always, also on failure or Ctrl-C).
#
# Each test gets in its environment:
#   CLUSTER               path of cluster.sh (use "$CLUSTER exec srun ...", "$CLUSTER node K cmd")
#   DRAGON_BUILD_DIR      the build directory (default: <repo>/build; set it to override)
#   DRAGON_CLUSTER_DIR    the cluster's state dir, SLURM_CONF its slurm.conf
#   DRAGON_CLUSTER_NODES  number of nodes (default 3; set it to override)
# A test passes with exit 0, is skipped with exit 77 (reason = its last output line), else fails.
# Output: one line per test (PASS/FAIL/SKIP name (Xs)), a passing test's lines that begin with
# "note: ", failing tests' output, and last exactly
#   cluster tests: N passed, N failed, N skipped
# Exit status: 0 if nothing failed (and teardown worked), else 1; 2 for a usage error.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export CLUSTER=$HERE/cluster.sh
export DRAGON_BUILD_DIR=${DRAGON_BUILD_DIR:-$REPO/build}
export DRAGON_CLUSTER_DIR=${DRAGON_CLUSTER_DIR:-/tmp/dragon-cluster}
export DRAGON_CLUSTER_NODES=${DRAGON_CLUSTER_NODES:-3}
export SLURM_CONF=$DRAGON_CLUSTER_DIR/etc/slurm.conf
TEST_TIMEOUT=${DRAGON_CLUSTER_TEST_TIMEOUT:-120}

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
summary() { echo "cluster tests: $1 passed, $2 failed, $3 skipped"; }

# ---- which tests
tests=()
if [ $# -eq 0 ]; then
  for f in "$HERE"/t_*.sh; do [ -f "$f" ] && [ -x "$f" ] && tests+=("$f"); done
else
  for a in "$@"; do
    found=""
    for c in "$a" "$HERE/$a" "$HERE/$a.sh" "$HERE/t_$a.sh" "$HERE/t_$a"; do
      if [ -f "$c" ] && [ -x "$c" ]; then found=$(cd "$(dirname "$c")" && pwd)/$(basename "$c"); break; fi
    done
    [ -n "$found" ] || { echo "run.sh: no executable test '$a' in $HERE" >&2; exit 2; }
    tests+=("$found")
  done
fi
if [ ${#tests[@]} -eq 0 ]; then echo "run.sh: no tests found"; summary 0 0 0; exit 0; fi

# ---- can this machine run the cluster at all? (root, slurm, munge, ...) If not: skip everything.
if ! why=$("$CLUSTER" check); then
  for t in "${tests[@]}"; do echo "SKIP $(basename "$t" .sh) (0.0s): $why"; done
  summary 0 0 ${#tests[@]}
  exit 0
fi

# ---- one cluster per machine: serialize concurrent runs (lock on cluster.sh itself, leaves no file)
exec 9<"$CLUSTER"
if ! flock -n 9; then
  echo "run.sh: another cluster run is in progress; waiting (up to 10 min)" >&2
  flock -w 600 9 || { echo "run.sh: could not get the cluster lock" >&2; exit 1; }
fi

WORK=$(mktemp -d /tmp/dragon-cluster-run.XXXXXX)
CHILD=""        # pid of the command we are waiting for (killed on Ctrl-C)
CLUSTER_UP=0
DOWN_RC=0

teardown() {
  if [ "$CLUSTER_UP" = 1 ]; then
    CLUSTER_UP=0
    "$CLUSTER" down 9<&- || DOWN_RC=$?
  fi
  rm -rf "$WORK"
}
on_signal() {
  trap '' INT TERM
  echo "run.sh: interrupted, tearing the cluster down" >&2
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
  exit 130
}
trap teardown EXIT
trap on_signal INT TERM

# run_bg CMD... : run in the background and wait, so that Ctrl-C is handled at once
# (a trap does not run while bash waits for a foreground command)
run_bg() {
  "$@" 9<&- &
  CHILD=$!
  wait "$CHILD"
  local rc=$?
  CHILD=""
  return $rc
}

# ---- bring-up ('up' tears down a leftover cluster first)
CLUSTER_UP=1
if ! run_bg "$CLUSTER" up "$DRAGON_CLUSTER_NODES"; then
  echo "run.sh: cluster bring-up failed" >&2
  for t in "${tests[@]}"; do echo "FAIL $(basename "$t" .sh) (0.0s): cluster did not come up"; done
  teardown
  trap - EXIT
  summary 0 ${#tests[@]} 0
  exit 1
fi

# ---- tests
pass=0 fail=0 skip=0
for t in "${tests[@]}"; do
  name=$(basename "$t" .sh)
  out=$WORK/$name.out
  t0=$(now)
  # A test that needs longer says so in a line "# cluster-test-timeout: SECONDS".
  limit=$(sed -n 's/^# cluster-test-timeout: \([0-9][0-9]*\)$/\1/p' "$t" | head -n 1)
  limit=${limit:-$TEST_TIMEOUT}
  (cd "$REPO" && exec timeout -k 5 "$limit" "$t") </dev/null >"$out" 2>&1 9<&- &
  CHILD=$!
  wait "$CHILD"; rc=$?
  CHILD=""
  dt=$(since "$t0")
  case $rc in
    0)  pass=$((pass + 1)); echo "PASS $name (${dt}s)"
        grep '^note: ' "$out" | sed 's/^/    | /' || true ;;
    77) skip=$((skip + 1)); echo "SKIP $name (${dt}s): $(grep -v '^[[:space:]]*$' "$out" | tail -n 1)" ;;
    *)  fail=$((fail + 1))
        note="exit $rc"; [ $rc -eq 124 ] && note="timed out after ${limit}s"
        echo "FAIL $name (${dt}s): $note"
        sed 's/^/    | /' "$out" ;;
  esac
done

# ---- teardown before the summary, so that the summary is the last line
teardown
trap - EXIT
if [ "$DOWN_RC" -ne 0 ]; then echo "run.sh: cluster teardown failed (exit $DOWN_RC)" >&2; fi
summary "$pass" "$fail" "$skip"
[ "$fail" -eq 0 ] && [ "$DOWN_RC" -eq 0 ]
