#!/usr/bin/env bash
# Builds Dragon's RPMs from this tree: packaging/build-rpm.sh [OUTDIR]   (default packaging/out-rpm)
# The tree's tracked files become dragon-VERSION.tar.gz, and `rpmbuild -bb` of
# packaging/rpm/dragon.spec builds it in a private %_topdir, with the version from meson.build
# (its one home) and at most two jobs. Packages: dragon-libs, dragon-devel, dragon (dragond, the
# launcher, the systemd units, the man pages, /etc/dragon/dragon.yaml), dragon-cluster (the PMIx
# and UCX modules) and python3-dragon. packaging/check-rpm.sh OUTDIR checks them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-packaging/out-rpm}")
version=$(sed -n "s/^ *version : '\([^']*\)',*$/\1/p" meson.build | head -1)
[ -n "$version" ] || { echo "build-rpm: no version in meson.build" >&2; exit 1; }
command -v rpmbuild >/dev/null ||
  { echo "build-rpm: no rpmbuild (scripts/install-deps.sh installs rpm)" >&2; exit 1; }
# The changelog's date is the last commit's, so that two builds of one commit are the same.
date=$(LC_ALL=C git log -1 --format=%cd --date=format:'%a %b %d %Y')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
top=$work/rpmbuild
mkdir -p "$top"/{SOURCES,BUILD,RPMS,SRPMS} "$work/src/dragon-$version"
git ls-files -z | xargs -0 cp --parents -t "$work/src/dragon-$version"
tar -C "$work/src" -czf "$top/SOURCES/dragon-$version.tar.gz" "dragon-$version"
# --nodeps where rpm is not the system's package manager (Debian: `rpm -q rpm` finds nothing):
# rpmbuild checks BuildRequires against the rpm database, which there is empty; the build
# dependencies are Debian packages, which scripts/install-deps.sh installs. On Fedora or RHEL
# the BuildRequires are checked.
nodeps=()
rpm -q rpm >/dev/null 2>&1 || nodeps=(--nodeps)
rpmbuild -bb "${nodeps[@]}" \
  --define "_topdir $top" \
  --define "_smp_mflags -j2" \
  --define "dragon_version $version" \
  --define "dragon_date $date" \
  packaging/rpm/dragon.spec
mkdir -p "$out"
rm -f "$out"/*.rpm
find "$top/RPMS" -name '*.rpm' -exec mv -t "$out" {} +
ls "$out"/*.rpm
