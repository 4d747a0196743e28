#!/usr/bin/env bash
# Dragon's main job for now: a pipeline of worker processes fed 1 MiB blocks over channels,
# zero copy, with every result verified. Installs what it needs and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build -Dtests=false -Dbench=false -Dexamples=true
exec build/examples/histogram_pipeline "$@"
