#!/usr/bin/env bash
# Dragon's main job: unchanged Python multiprocessing programs run under `dragon`. The launcher
# starts a private dragond; each program's processes are dragond processes and its queues,
# pools, locks and shared arrays are Dragon channels and pool memory; every program checks its
# own result and exits non-zero if it is wrong. Installs what it needs and builds first.
#   scripts/run-example.sh            the three Python examples, then the C++ pipeline
#   scripts/run-example.sh NAME ARGS  one of them (numpy_pipeline, queue_pipeline,
#                                     monte_carlo_pi, histogram_pipeline) with its arguments
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build -Dtests=false -Dbench=false -Dexamples=true
# dragond refuses to run user code as root unless told to; a fresh container is often root.
if [ "$(id -u)" -eq 0 ]; then export DRAGON_ALLOW_ROOT=true; fi
run() {
  local name=$1
  shift
  echo "== dragon examples/$name $*"
  if [ "$name" = histogram_pipeline ]; then
    build/daemon/dragon --label -- build/examples/histogram_pipeline "$@"
  else
    build/daemon/dragon "examples/$name.py" "$@"
  fi
}
if [ $# -gt 0 ]; then
  run "$@"
  exit
fi
run numpy_pipeline
run queue_pipeline
run monte_carlo_pi
run histogram_pipeline
