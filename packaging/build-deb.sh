#!/usr/bin/env bash
# Builds Dragon's .debs from this tree: packaging/build-deb.sh [OUTDIR]   (default packaging/out)
# The tree's tracked files are copied, packaging/debian becomes debian/, and the changelog is
# written with the version from meson.build (its one home), then `dpkg-buildpackage -us -uc -b`.
# Packages: libdragon0, libdragon-dev, dragon (dragond, the launcher, the systemd units, the man
# pages, /etc/dragon/dragon.yaml), dragon-cluster (the PMIx and UCX modules) and python3-dragon.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-packaging/out}")
version=$(sed -n "s/^ *version : '\([^']*\)',*$/\1/p" meson.build | head -1)
[ -n "$version" ] || { echo "build-deb: no version in meson.build" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/dragon-$version
mkdir -p "$src"
git ls-files -z | xargs -0 cp --parents -t "$src"
cp -r packaging/debian "$src/debian"
cat > "$src/debian/changelog" <<CHANGES
dragon ($version) unstable; urgency=medium

  * Built from the Dragon source tree; the version is meson.build's.

 -- Dragon maintainers <maintainers@dragon-runtime.org>  $(date -R)
CHANGES
(cd "$src" && DEB_BUILD_OPTIONS="parallel=2 ${DEB_BUILD_OPTIONS:-}" dpkg-buildpackage -us -uc -b)
mkdir -p "$out"
rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
mv "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out"/
ls "$out"/*.deb
