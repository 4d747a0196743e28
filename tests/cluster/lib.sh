# Shared by the dragon tests of the cluster (sourced by t_dragon_*.sh; run.sh sets CLUSTER and
# DRAGON_BUILD_DIR). Every wait is bounded.
set -euo pipefail
: "${CLUSTER:?run this through tests/cluster/run.sh}"
: "${DRAGON_BUILD_DIR:?}"
BUILD=$(cd "$DRAGON_BUILD_DIR" && pwd)
DRAGON=$BUILD/daemon/dragon
PROBE=$BUILD/tests/cluster/cluster_probe
NODES=${DRAGON_CLUSTER_NODES:-3}
[ "$NODES" -ge 3 ] || { echo "needs 3 nodes, the cluster has $NODES"; exit 77; }
[ -x "$DRAGON" ] || { echo "no dragon at $DRAGON (build first)"; exit 1; }

fail() { echo "FAIL: $*"; exit 1; }

# srun of the launcher on every node, one task each. The tests run as root, which dragond
# refuses unless told.
srun_dragon() {  # srun_dragon [SRUN OPTIONS... --] DRAGON ARGS...
  local sopts=()
  if [[ " $* " == *" -- "* ]]; then
    while [ "$1" != "--" ]; do sopts+=("$1"); shift; done
    shift
  fi
  "$CLUSTER" exec timeout -k 5 90 srun -I30 --mpi=pmix -N3 --ntasks-per-node=1 "${sopts[@]}" \
    env -u DRAGON_BUILD_DIR -u DRAGON_CLUSTER_DIR -u DRAGON_CLUSTER_NODES DRAGON_ALLOW_ROOT=true \
    "$DRAGON" "$@"
}

# Nothing of a job may be left on any node once srun has returned: no dragond, no process of
# the job, no socket of the job in the runtime directory.
wait_nothing_left() {  # wait_nothing_left PATTERN... (extra process patterns of the job)
  local deadline=$((SECONDS + 15)) left pattern="$BUILD/daemon/dragond|cluster_probe"
  local p
  for p in "$@"; do pattern+="|$p"; done
  while :; do
    left=$(pgrep -af "$pattern" | grep -v "pgrep" || true)
    local socks
    socks=$(find /tmp/dragon-0 -maxdepth 1 -name 'job-slurm*' 2>/dev/null || true)
    [ -z "$left" ] && [ -z "$socks" ] && return 0
    [ $SECONDS -lt $deadline ] || fail "left behind after the job: $left $socks"
    sleep 0.1
  done
}

# Waits until FILE contains a line matching REGEX.
wait_for_line() {  # wait_for_line FILE REGEX SECONDS
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { cat "$1"; fail "no line matching '$2' within $3 s"; }
    sleep 0.05
  done
}

# The lost-node tests: srun_dragon ARGS... in the background, its output in $LOG (a file the
# caller made); returns at once with $SRUN_PID set.
start_job() {  # start_job LOG DRAGON ARGS...
  local log=$1
  shift
  srun_dragon "$@" >"$log" 2>&1 &
  SRUN_PID=$!
}

# SIGKILL of the dragond of node NODE (its dragon node id).
kill_dragond_of() {  # kill_dragond_of NODE
  local victim
  victim=$(pgrep -f -- "$BUILD/daemon/dragond .*--node-id $1" | head -1)
  [ -n "$victim" ] || fail "no dragond for node $1"
  kill -KILL "$victim"
}

# Waits for the job started by start_job to end with a failure, and checks that the probe
# reported "probe: ok WHAT after S s: NodeLost..." with S below LIMIT seconds.
expect_node_lost() {  # expect_node_lost LOG WHAT LIMIT  (SRUN_RC: the job's code, if waited for)
  local rc line secs
  if [ -n "${SRUN_RC:-}" ]; then
    rc=$SRUN_RC
  else
    set +e
    wait "$SRUN_PID"; rc=$?
    set -e
  fi
  cat "$1"
  [ "$rc" -ne 0 ] || fail "the job succeeded after losing a node"
  line=$(grep -E "probe: ok $2 after [0-9.]+ s: NodeLost" "$1") || fail "no NodeLost for $2"
  secs=$(sed -E 's/.*after ([0-9.]+) s.*/\1/' <<<"$line")
  awk -v s="$secs" -v l="$3" 'BEGIN { exit !(s < l) }' || fail "NodeLost took $secs s (limit $3 s)"
}
