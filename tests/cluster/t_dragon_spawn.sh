#!/bin/bash
# The head program (on rank 0's node) starts a process on every node by node id, gets each one's
# exit code back, and every process's output reaches srun; then nothing of the job is left.
. "$(dirname "$0")/lib.sh"
out=$(srun_dragon --label -- "$PROBE" spawn-all 2>&1) || fail "srun exited $?: $out"
echo "$out"
grep -q "probe: ok spawn-all 3 nodes" <<<"$out" || fail "the probe did not pass"
# A node's CPUs are those Slurm granted the job there (one per task by default), not the node's
# two (task/none binds nothing, so the affinity mask alone would say two).
grep -qF "probe: 3 nodes: 0=n1(1 cpus) 1=n2(1 cpus) 2=n3(1 cpus)" <<<"$out" ||
  fail "the nodes' CPUs are not what Slurm granted"
for k in 1 2 3; do
  # Each line comes from the launcher of the node the process ran on (srun labels it with the
  # rank), and the process talked to that node's dragond.
  grep -qE "^$((k - 1)): hello from n$k node $((k - 1)) socket job-.*-node$((k - 1))\.sock$" <<<"$out" ||
    fail "no output from node $((k - 1)) through rank $((k - 1))"
done
wait_nothing_left
out=$(srun_dragon --cpus-per-task=2 -- "$PROBE" spawn-all 2>&1) || fail "srun -c2 exited $?: $out"
grep -qF "probe: 3 nodes: 0=n1(2 cpus) 1=n2(2 cpus) 2=n3(2 cpus)" <<<"$out" ||
  { echo "$out"; fail "with --cpus-per-task=2 the nodes do not have 2 CPUs each"; }
wait_nothing_left
# dragon --label: every line of the job, from any node, says which node and process it came from.
out=$(srun_dragon -- --label -- "$PROBE" spawn-all 2>&1) || fail "srun exited $?: $out"
for k in 1 2 3; do
  grep -qE "^\[$((k - 1)):[0-9]+\] hello from n$k node $((k - 1)) " <<<"$out" ||
    { echo "$out"; fail "no labelled line from node $((k - 1))"; }
done
grep -qE "^\[0:[0-9]+\] probe: ok spawn-all 3 nodes" <<<"$out" || fail "the head's own lines are not labelled"
wait_nothing_left
# Python processes, two on each node (the second forked by the parent's template there, once
# it is ready): each one's lines carry its own node and puid, whole though written in pieces.
script=$(mktemp /tmp/label-XXXXXX.py)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'PY'
import multiprocessing as mp, socket, sys, time
from dragon import process as dp
def child(i):
    for n in range(50):
        sys.stdout.write("py-child %d " % i); sys.stdout.flush()
        sys.stdout.write("on %s line %d\n" % (socket.gethostname(), n)); sys.stdout.flush()
if __name__ == "__main__":
    ps = [mp.Process(target=child, args=(i,)) for i in range(6)]
    for p in ps[:3]: p.start()  # one per node: these start the templates
    for p in ps[:3]: p.join()
    templates = [dp._template] + list(dp._remote_templates.values())
    deadline = time.monotonic() + 60
    while not all(t.ready() for t in templates) and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in ps[3:]: p.start()
    for p in ps[3:]: p.join()
    forked = [type(p._popen).__name__ == "_TemplatePopen" or
              (type(p._popen).__name__ == "_RemotePopen" and p._popen._channel is None)
              for p in ps]
    print("py-parent done", [p.exitcode for p in ps], "templates", len(templates), forked)
PY
out=$(srun_dragon -- --label "$script" 2>&1) || fail "srun exited $?: $out"
grep -qE "^\[0:[0-9]+\] py-parent done \[0, 0, 0, 0, 0, 0\] templates 3 \[False, (True|False), (True|False), True, True, True\]$" <<<"$out" || { echo "$out"; fail "the Python parent did not end well"; }
lines=$(grep -E "py-child" <<<"$out")
[ "$(wc -l <<<"$lines")" = 300 ] || { echo "$out"; fail "not 300 lines of the children"; }
bad=$(grep -vE "^\[([0-2]):[0-9]+\] py-child [0-5] on n[1-3] line [0-9]+$" <<<"$lines" || true)
[ -z "$bad" ] || fail "torn or unlabelled lines: $(head -3 <<<"$bad")"
# The label's node is the host's, and each child has a label of its own (6, none the parent's).
while read -r node host; do
  [ "n$((node + 1))" = "$host" ] || fail "a line labelled node $node came from $host"
done < <(sed -E 's/^\[([0-2]):[0-9]+\] py-child [0-5] on (n[1-3]) .*/\1 \2/' <<<"$lines" | sort -u)
pairs=$(sed -E 's/^(\[[0-9]+:[0-9]+\]) py-child ([0-5]) .*/\1 \2/' <<<"$lines" | sort -u)
[ "$(wc -l <<<"$pairs")" = 6 ] && [ "$(cut -d' ' -f1 <<<"$pairs" | sort -u | wc -l)" = 6 ] ||
  fail "the children do not have a label each: $pairs"
parent=$(grep -oE "^\[0:[0-9]+\] py-parent" <<<"$out" | cut -d' ' -f1)
! grep -qF "$parent py-child" <<<"$lines" || fail "a child's lines carry the parent's label"
[ "$(cut -c2 <<<"$pairs" | sort -u | tr -d '\n')" = 012 ] || fail "the children did not run on the 3 nodes: $pairs"
wait_nothing_left "dragon._child" "dragon._template"
# The same from C.
out=$(srun_dragon "$BUILD/tests/cluster/capi_probe" 2>&1) || fail "capi_probe: srun exited $?: $out"
echo "$out"
grep -q "capi-probe: ok 3 nodes, channels with node 1" <<<"$out" || fail "the C probe did not pass"
wait_nothing_left
echo "ok"
