#!/usr/bin/env bash
# Installs Dragon's .debs into a fresh Debian 12 root, as a cluster admin would, and takes them
# out again:   packaging/check-deb-root.sh DEBDIR     (DEBDIR: what packaging/build-deb.sh wrote)
#  1. mmdebstrap a bookworm root (minbase + systemd for the units) from the host's Debian
#     sources, the security and updates suites included: the debs were built on this host, so
#     their shlibs dependencies are satisfiable from the same suites;
#  2. `apt-get install ./*.deb` of the five packages pulls every dependency from the archive;
#  3. as an ordinary user: `dragon monte_carlo_pi.py` (a private dragond; no process, nothing in
#     /dev/shm and no socket may outlive it), a C program built against libdragon-dev through
#     pkg-config;
#     dragon-cluster's modules load (the launcher's own dlopen, and every library resolves);
#  4. the units under systemd-nspawn (tests/systemd/nspawn_test.sh --root);
#  5. `apt-get purge` + `autoremove --purge`: the root's file list is the one from before (a path
#     left that names dragon or that the packages shipped fails; any other left is listed).
# Needs root (mmdebstrap, chroot, mounts) and deb.debian.org. Prints "deb root check: ok".
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "deb root check: FAILED: $*" >&2
  exit 1
}
if [ $# -ne 1 ] || [ ! -d "$1" ]; then echo "usage: $0 DEBDIR" >&2; exit 2; fi
debdir=$(realpath "$1")
[ "$(id -u)" -eq 0 ] || fail "needs root (mmdebstrap, chroot and mounts)"
for c in mmdebstrap chroot findmnt gcc pkg-config timeout; do
  command -v "$c" >/dev/null || fail "$c is missing (scripts/install-deps.sh installs it)"
done

packages=(libdragon0 libdragon-dev dragon dragon-cluster python3-dragon)
# Dependencies the root must not have before and must have after: apt got them from the archive.
pulled=(libyaml-cpp0.7 libprotobuf32 libpmix2 libucx0 python3)
debs=()
shopt -s nullglob
for p in "${packages[@]}"; do
  # NAME_*.deb: dragon_ matches neither dragon-cluster_ nor the -dbgsym packages.
  found=("$debdir/${p}"_*.deb)
  [ ${#found[@]} -eq 1 ] || fail "want exactly one ${p}_*.deb in $debdir, found ${#found[@]}: ${found[*]}"
  debs+=("${found[0]}")
done
shopt -u nullglob

# The host's Debian sources (deb.debian.org: bookworm, bookworm-updates, bookworm-security);
# other repositories the host may have (their keys are not in the root) are left out.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && grep -qE '^[^#]*debian\.org/debian' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || fail "no Debian archive in the host's apt sources"
for suite in bookworm-updates bookworm-security; do
  grep -hv '^ *#' "${sources[@]}" | grep -cw -- "$suite" >/dev/null ||
    echo "deb root: warning: the host's sources have no $suite; libraries may not match the debs'"
done

work=$(mktemp -d /tmp/dragon-debroot.XXXXXX)
root=$work/root
user=alice  # not "dragon...": the last step fails any leftover path naming dragon

# Processes whose root is our root: only ones this script started (chroot, the example).
root_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}
mounted_under() { findmnt -rn -o TARGET | grep -E "^$1(/|$)" | sort -r || true; }
mount_root() {
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
  # A private /dev/shm and /run: what the example leaves there is its own, and the host's stay
  # untouched. The root's /dev holds the device nodes mmdebstrap made.
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
  mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
  install -d -m 1777 "$root/run/lock"
}
umount_root() {
  local m
  for m in $(mounted_under "$root"); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}
cleanup() {
  set +e
  local pids
  pids=$(root_pids)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
  umount_root
  if [ -n "$(mounted_under "$work")" ]; then
    echo "deb root check: $work is still mounted; left in place" >&2
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

in_root() {  # in_root SECONDS COMMAND...: as root in the root, bounded
  local t=$1
  shift
  timeout -k 10 "$t" chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
as_user() {  # as_user SECONDS COMMAND: a shell command as the ordinary user, in their home
  local t=$1
  shift
  in_root "$t" setpriv --reuid="$uid" --regid="$gid" --init-groups env -i PATH=/usr/bin:/bin \
    HOME="/home/$user" USER="$user" LOGNAME="$user" XDG_RUNTIME_DIR="/run/user/$uid" \
    LC_ALL=C.UTF-8 sh -c "cd && $1"
}
# shellcheck disable=SC2016
installed() { [ "$(in_root 30 dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }
# shellcheck disable=SC2016
package_list() { in_root 30 dpkg-query -W -f='${Package}\n' | LC_ALL=C sort; }
snapshot() {  # snapshot FILE: every path of the root but the kernel's, the tmpfs's and apt's own
  (cd "$root" && find . -xdev -mindepth 1 \( -path ./proc -o -path ./sys -o -path ./dev \
    -o -path ./run -o -path ./tmp -o -path ./var/lib/apt -o -path ./var/lib/dpkg \
    -o -path ./var/cache -o -path ./var/log \) -prune -o -print) | sed 's|^\.||' | LC_ALL=C sort >"$1"
}
now() { date +%s; }
t_all=$(now)

# 1. The root.
t=$(now)
echo "deb root: mmdebstrap bookworm (minbase, systemd, systemd-sysv, dbus, procps) from ${sources[*]}"
timeout -k 10 900 mmdebstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps \
  bookworm "$root" "${sources[@]}" >"$work/mmdebstrap.log" 2>&1 ||
  { tail -30 "$work/mmdebstrap.log"; fail "mmdebstrap could not make a bookworm root"; }
echo "deb root: the root is made ($(($(now) - t)) s)"
mount_root
in_root 300 apt-get update -q >"$work/update.log" 2>&1 ||
  { cat "$work/update.log"; fail "apt-get update in the root failed"; }
# The user exists before the first file list: what useradd writes is not the packages'.
in_root 30 useradd -m -s /bin/sh "$user" || fail "useradd $user failed"
uid=$(in_root 10 id -u "$user")
gid=$(in_root 10 id -g "$user")
for d in "${pulled[@]}"; do
  ! installed "$d" || fail "$d is in the fresh root already: the check would prove nothing"
done
snapshot "$work/before"
package_list >"$work/packages-before"

# 2. Install, dependencies from the archive.
t=$(now)
mkdir "$root/tmp/debs"
cp "${debs[@]}" "$root/tmp/debs/"
chmod -R a+rX "$root/tmp/debs"
# shellcheck disable=SC2046
in_root 900 apt-get install -y -o Dpkg::Use-Pty=0 $(printf '/tmp/debs/%s ' "${debs[@]##*/}") \
  >"$work/install.log" 2>&1 || { tail -40 "$work/install.log"; fail "apt-get install of the debs failed"; }
rm -rf "$root/tmp/debs"
for p in "${packages[@]}"; do installed "$p" || fail "$p is not installed after apt-get install"; done
for d in "${pulled[@]}"; do
  installed "$d" || fail "apt-get install did not pull $d"
  grep -qE "^Get:[0-9]+ https?://[^ ]+ bookworm[^ ]* ([a-z0-9]+ )?$d " "$work/install.log" ||
    { grep '^Get:' "$work/install.log" | head; fail "$d was not fetched from the archive"; }
done
echo "deb root: installed ${packages[*]}; apt pulled $(grep -c '^Get:[0-9]* http' "$work/install.log") packages from the archive, ${pulled[*]} among them ($(($(now) - t)) s)"
# The five packages' own paths, for the last step.
in_root 30 dpkg -L "${packages[@]}" | LC_ALL=C sort -u >"$work/owned"

# 3a. An unchanged multiprocessing program as an ordinary user: `dragon app.py`.
t=$(now)
install -d -m 0700 -o "$uid" -g "$gid" "$root/run/user/$uid"
install -m 0644 -o "$uid" -g "$gid" examples/monte_carlo_pi.py "$root/home/$user/"
out=$(as_user 300 'dragon monte_carlo_pi.py --tasks 32 --workers 2' 2>&1) ||
  { echo "$out"; fail "dragon monte_carlo_pi.py failed as $user"; }
echo "  | $out"
[[ $out =~ ^pi\ ~\ 3\.[0-9]+\ from\ 1600000\ darts\ in\ 32\ tasks\ on\ 2\ workers\ \(dragon\ start\ method\) ]] ||
  fail "dragon monte_carlo_pi.py said something else: $out"
rm "$root/home/$user/monte_carlo_pi.py"
# When the launcher returns, dragond and the workers are gone (their memory with them) and
# nothing is left in /dev/shm.
for _ in $(seq 50); do [ -z "$(root_pids)" ] && break; sleep 0.1; done
pids=$(root_pids)
if [ -n "$pids" ]; then
  # shellcheck disable=SC2086
  ps -o pid,user,args -p $pids >&2 || true
  fail "processes outlived the example"
fi
left=$(find "$root/dev/shm" "$root/tmp" -mindepth 1; find "$root/run/user/$uid" ! -type d)
[ -z "$left" ] || fail "the example left: $left"
echo "deb root: dragon monte_carlo_pi.py ran as $user (uid $uid); no process, nothing in /dev/shm, /tmp or its runtime dir left ($(($(now) - t)) s)"

# 3b. A C program against libdragon-dev, found through pkg-config. gcc and pkg-config are the
# host's (no dependency of the packages brings pkg-config, and gcc comes into the root only
# through dragon-cluster's Recommends, libpmix-dev); the headers, dragon.pc and libdragon.so are the root's, and
# the program runs in the root.
pc=$(find "$root/usr/lib" -name dragon.pc -path '*/pkgconfig/*' | head -1)
[ -n "$pc" ] || fail "libdragon-dev installed no dragon.pc"
libdir=$(dirname "$(dirname "$pc")")
flags=$(PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR=$libdir/pkgconfig pkg-config --cflags --libs dragon) ||
  fail "pkg-config dragon failed on the root's dragon.pc"
# shellcheck disable=SC2086
timeout 120 gcc -std=c11 -Wall -Werror tests/capi/capi_test.c -o "$root/tmp/capi_test" $flags \
  -Wl,-rpath-link,"$libdir" || fail "a C program does not build against libdragon-dev"
as_user 60 /tmp/capi_test >/dev/null || fail "the C program built against libdragon-dev failed in the root"
rm -f "$root/tmp/capi_test"
echo "deb root: tests/capi/capi_test.c built with pkg-config dragon (${flags//$root/}) and ran as $user"

# 3c. dragon-cluster's modules: where dragon looks (DRAGON_MODULE_DIR, built in), every library
# they need resolves, and they load (RTLD_NOW) with their versioned info symbol.
moddir=${libdir#"$root"}/dragon
for m in dragon-bootstrap-pmix.so:dragon_bootstrap_module_v1 dragon-transport-ucx.so:dragon_transport_module_v1; do
  f=$moddir/${m%%:*}
  [ -f "$root$f" ] || fail "dragon-cluster did not install $f"
  lddout=$(in_root 30 ldd "$f") || fail "ldd $f failed"
  ! grep -q 'not found' <<<"$lddout" || fail "$f: $(grep 'not found' <<<"$lddout" | tr -s ' \t' ' ')"
  in_root 30 python3 -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]).${m#*:}" "$f" ||
    fail "$f does not load"
done
# The launcher's own path: PMIx variables make it dlopen the bootstrap, which then finds no
# PMIx server. A module it cannot find says "is not available".
out=$(as_user 30 'PMIX_NAMESPACE=deb-root PMIX_RANK=0 dragon -- /bin/true' 2>&1) &&
  fail "dragon under fake PMIx variables succeeded: $out"
if grep -q 'is not available' <<<"$out" || ! grep -q 'PMIx' <<<"$out"; then
  fail "the launcher did not load the PMIx module from $moddir: $out"
fi
echo "deb root: $moddir/dragon-{bootstrap-pmix,transport-ucx}.so resolve and load; the launcher loads the PMIx one"

# 4. The units as installed, under a real systemd booted on this root. nspawn mounts its own
# /proc, /sys, /dev and /run, so ours come off meanwhile.
nspawn=tests/systemd/nspawn_test.sh
t=$(now)
umount_root
timeout -k 10 300 "$nspawn" --root "$root" >"$work/nspawn.log" 2>&1 ||
  { cat "$work/nspawn.log"; fail "$nspawn --root failed on the installed packages"; }
mount_root
echo "deb root: the installed units under systemd-nspawn: $(tail -1 "$work/nspawn.log") ($(($(now) - t)) s)"

# 5. Purge: the file list is the one from before the install. An instance enabled by the
# administrator (its link in sockets.target.wants) and the Slurm scripts' log go with it.
t=$(now)
in_root 30 systemctl enable "dragond@$uid.socket" >"$work/enable.log" 2>&1 ||
  { cat "$work/enable.log"; fail "systemctl enable dragond@$uid.socket failed in the root"; }
links=$(find "$root/etc/systemd" -name 'dragond@*')
[ -n "$links" ] || fail "systemctl enable dragond@$uid.socket made no link"
install -d "$root/var/log/dragon"
echo "prolog job 1 on n1: a line of the Slurm scripts' log" >"$root/var/log/dragon/slurm.log"
{ in_root 600 apt-get purge -y -o Dpkg::Use-Pty=0 "${packages[@]}" &&
  in_root 600 apt-get autoremove --purge -y -o Dpkg::Use-Pty=0; } >"$work/purge.log" 2>&1 ||
  { tail -40 "$work/purge.log"; fail "apt-get purge failed"; }
for p in "${packages[@]}"; do
  ! in_root 30 dpkg-query -W "$p" >/dev/null 2>&1 || fail "$p is still known to dpkg after the purge"
done
# autoremove keeps what the install brought in that a package of the base root recommends or
# suggests (apt's default; e.g. apt recommends ca-certificates): not Dragon's, so purged too.
package_list >"$work/packages-after"
mapfile -t kept < <(LC_ALL=C comm -13 "$work/packages-before" "$work/packages-after")
if [ ${#kept[@]} -gt 0 ]; then
  echo "deb root: autoremove kept ${kept[*]} (recommended or suggested by the base root); purged"
  in_root 600 apt-get purge -y -o Dpkg::Use-Pty=0 "${kept[@]}" >>"$work/purge.log" 2>&1 ||
    { tail -40 "$work/purge.log"; fail "apt-get purge ${kept[*]} failed"; }
fi
snapshot "$work/after"
LC_ALL=C comm -13 "$work/before" "$work/after" >"$work/added"
LC_ALL=C comm -23 "$work/before" "$work/after" >"$work/removed"
bad=0
while read -r f; do
  if grep -qi dragon <<<"$f" || grep -qxF "$f" "$work/owned"; then
    echo "deb root: left behind after purge: $f" >&2
    bad=1
  else
    echo "deb root: left behind, not by Dragon's packages (a dependency's): $f"
  fi
done <"$work/added"
while read -r f; do
  echo "deb root: gone after purge, but there before the install: $f" >&2
  bad=1
done <"$work/removed"
[ "$bad" -eq 0 ] || fail "apt-get purge did not restore the root's file list"
links=$(find "$root/etc/systemd" -name 'dragond@*')
[ -z "$links" ] || fail "the purge left the enabled instance's links: $links"
[ ! -e "$root/var/log/dragon" ] || fail "the purge left /var/log/dragon"
echo "deb root: purged; $(wc -l <"$work/after") paths, $(wc -l <"$work/added") more than before the install, none Dragon's ($(($(now) - t)) s)"

echo "deb root: $(($(now) - t_all)) s in all"
echo "deb root check: ok"
