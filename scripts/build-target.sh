#!/usr/bin/env bash
# Configures (once) DIR and builds one TARGET in it: scripts/build-target.sh DIR TARGET [options]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
target=$2
shift 2
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "$@" >/dev/null
else
  meson configure "$dir" "$@" >/dev/null
fi
ninja -C "$dir" -j2 "$target" >/dev/null
