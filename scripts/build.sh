#!/usr/bin/env bash
# Configures (once) a build directory and builds it, or one target in it:
#   scripts/build.sh DIR [--target TARGET] [meson options...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
shift
target=()
if [ "${1:-}" = "--target" ]; then
  target=("$2")
  shift 2
fi
if [ ! -f "$dir/build.ninja" ]; then
  meson setup "$dir" "$@" >/dev/null
else
  # --reconfigure (not `meson configure`): it also learns options added since the setup.
  meson setup --reconfigure "$dir" "$@" >/dev/null
fi
ninja -C "$dir" -j2 "${target[@]}" >/dev/null
