#!/usr/bin/env bash
# Configures (once) and builds one build directory: scripts/build.sh DIR [meson options...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
shift
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "$@" >/dev/null
else
  meson configure "$dir" "$@" >/dev/null
fi
ninja -C "$dir" -j2 >/dev/null
