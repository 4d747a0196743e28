#!/bin/bash
# The remote shell Open MPI's mpirun starts its daemons with on the test cluster (as ssh would):
#   mpirun_agent.sh HOST COMMAND...
# runs COMMAND (a shell command line, as ssh takes it) in the namespaces of the node whose
# address is HOST (10.98.0.(10+K) is node nK; see cluster.sh). TEST_CLUSTER_SH names cluster.sh.
set -euo pipefail
host=$1
shift
case "$host" in
  10.98.0.*) k=$((${host##*.} - 10)) ;;
  n[0-9]*) k=${host#n} ;;
  *) echo "mpirun_agent: not a node of the test cluster: $host" >&2; exit 1 ;;
esac
exec "${TEST_CLUSTER_SH:?}" node "$k" /bin/sh -c "$*"
