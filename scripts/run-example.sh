#!/usr/bin/env bash
# Dragon's main job for now: `dragon examples/histogram_pipeline`. The launcher starts a private
# dragond; the pipeline gets a pool, channels and worker processes from it and hands 1 MiB
# blocks to the workers without copying; every result is verified. Installs what it needs and
# builds first. Arguments go to the example (--workers N --blocks N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build -Dtests=false -Dbench=false -Dexamples=true
# dragond refuses to run user code as root unless told to; a fresh container is often root.
if [ "$(id -u)" -eq 0 ]; then export DRAGON_ALLOW_ROOT=true; fi
exec build/daemon/dragon --label -- build/examples/histogram_pipeline "$@"
