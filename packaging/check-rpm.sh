#!/usr/bin/env bash
# Checks the RPMs of packaging/build-rpm.sh: packaging/check-rpm.sh RPMDIR
# - each package holds exactly its files (rpm -qpl against the rules below), none under
#   /usr/local, no static library;
# - its dependencies are declared (rpm -qpR): sonames found by rpm's ELF generator, and
#   requires between the packages at the exact version-release;
# - all of them install into a scratch rpm root, list, verify and erase without leftovers;
# - rpmlint finds no error (what it filters says why in packaging/rpm/dragon.rpmlintrc).
# Prints "rpm check: ok" at the end; any failure is one message and exit status 1.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: packaging/check-rpm.sh RPMDIR" >&2; exit 1; }
dir=$1
fail() { echo "rpm check: FAIL: $*" >&2; exit 1; }
oneline() { tr '\n' ' ' <<<"$1"; }
command -v rpm >/dev/null || fail "no rpm (scripts/install-deps.sh installs it)"
command -v rpmlint >/dev/null || fail "no rpmlint (scripts/install-deps.sh installs it)"
version=$(sed -n "s/^ *version : '\([^']*\)',*$/\1/p" meson.build | head -1)
[ -n "$version" ] || fail "no version in meson.build"

names=(dragon-libs dragon-devel dragon dragon-cluster python3-dragon)
declare -A file
for name in "${names[@]}"; do
  found=("$dir/$name-$version"-*.rpm)
  { [ ${#found[@]} -eq 1 ] && [ -f "${found[0]}" ]; } ||
    fail "want one $name-$version-*.rpm in $dir, found: ${found[*]}"
  file[$name]=${found[0]}
done
all=("$dir"/*.rpm)
[ ${#all[@]} -eq ${#names[@]} ] || fail "unexpected packages in $dir: ${all[*]}"
release=$(rpm -qp --qf '%{RELEASE}' "${file[dragon]}")
evr="$version-$release"
for name in "${names[@]}"; do
  [ "$(rpm -qp --qf '%{RELEASE}' "${file[$name]}")" = "$release" ] ||
    fail "$name: its release differs from dragon's ($release)"
done

# What each package holds: one regular expression per line; every file must match a rule and
# every rule must match a file, except rules marked "?". No package holds rpm's build-id links
# (dragon.spec says why), so no directory is shared between two packages.
py='/usr/(lib/python3/dist-packages|lib64/python3\.[0-9]+/site-packages)'
man='(\.gz|\.bz2|\.xz|\.zst)?'
declare -A rules
rules[dragon-libs]="^/usr/lib64/libdragon\.so\.0$
^/usr/lib64/libdragon\.so\.${version//./\\.}$
^/usr/share/licenses/dragon-libs$
^/usr/share/licenses/dragon-libs/copyright$"
rules[dragon-devel]="^/usr/include/dragon$
^/usr/include/dragon/dragon\.h$
^/usr/include/dragon/[a-z_]+\.hpp$
^/usr/lib64/libdragon\.so$
^/usr/lib64/pkgconfig/dragon\.pc$"
rules[dragon]="^/usr/bin/dragon$
^/usr/bin/dragond$
^/etc/dragon$
^/etc/dragon/dragon\.yaml$
^/usr/libexec/dragon$
^/usr/libexec/dragon/slurm-prolog$
^/usr/libexec/dragon/slurm-epilog$
^/usr/lib/systemd/system/dragond@\.service$
^/usr/lib/systemd/system/dragond@\.socket$
^/usr/share/man/man1/dragon\.1$man$
^/usr/share/man/man5/dragon\.yaml\.5$man$
^/usr/share/man/man8/dragond\.8$man$
^/usr/share/licenses/dragon$
^/usr/share/licenses/dragon/copyright$"
rules[dragon-cluster]="^/usr/lib64/dragon$
^/usr/lib64/dragon/dragon-bootstrap-pmix\.so$
^/usr/lib64/dragon/dragon-transport-ucx\.so$"
rules[python3-dragon]="^$py/dragon$
^$py/dragon/__init__\.py$
^$py/dragon/_native\.cpython-[^/]+\.so$
^$py/dragon/[a-z_]+\.py$
?^$py/dragon/__pycache__(/[^/]+\.pyc)?$"

for name in "${names[@]}"; do
  list=$(rpm -qpl "${file[$name]}")
  [ "$list" != "(contains no files)" ] || fail "$name holds no files"
  while IFS= read -r f; do
    case $f in
      /usr/local/*) fail "$name installs under /usr/local: $f" ;;
      *.a) fail "$name holds a static library: $f" ;;
    esac
    ok=0
    while IFS= read -r rule; do
      [ -n "$rule" ] && [[ $f =~ ${rule#\?} ]] && { ok=1; break; }
    done <<<"${rules[$name]}"
    [ $ok -eq 1 ] || fail "$name holds $f, which belongs to no rule of it"
  done <<<"$list"
  while IFS= read -r rule; do
    [[ -z $rule || $rule == \?* ]] && continue
    grep -Eq -- "$rule" <<<"$list" || fail "$name holds nothing matching $rule"
  done <<<"${rules[$name]}"
done

flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "${file[dragon]}" |
  sed -n 's|^/etc/dragon/dragon\.yaml ||p')
[[ $flags == *c* && $flags == *n* ]] ||
  fail "dragon: /etc/dragon/dragon.yaml is not %config(noreplace) (file flags: '$flags')"
for name in dragon-libs dragon; do
  licenses=$(rpm -qp --licensefiles "${file[$name]}")
  grep -q '^/' <<<"$licenses" || fail "$name has no %license file"
done

# Dependencies. requires NAME ERE...: each expression matches a line of rpm -qpR NAME.
requires() {
  local name=$1 reqs re
  shift
  reqs=$(rpm -qpR "${file[$name]}")
  for re in "$@"; do
    grep -Eq -- "$re" <<<"$reqs" ||
      fail "$name does not require $re; it requires: $(oneline "$reqs")"
  done
}
isa='(\([a-z0-9_-]+\))?'
exact="$isa = ${evr//./\\.}$"
requires dragon-libs '^libc\.so\.6\(\)' '^libstdc\+\+\.so\.6\(\)' '^libprotobuf\.so\.[0-9]+\(\)'
requires dragon-devel "^dragon-libs$exact" '^(/usr/bin/pkg-config|pkgconfig)'
requires dragon '^libc\.so\.6\(\)' '^libstdc\+\+\.so\.6\(\)' '^libsystemd\.so\.0\(\)' \
  '^libyaml-cpp\.so\.[0-9.]+\(\)' '^libprotobuf\.so\.[0-9]+\(\)' '^/bin/bash$'
requires dragon-cluster "^dragon$exact" '^libpmix\.so\.[0-9]+\(\)' '^libucp\.so\.[0-9]+\(\)' \
  '^libucs\.so\.[0-9]+\(\)'
requires python3-dragon "^dragon$exact" "^dragon-libs$exact" '^libdragon\.so\.0\(\)' \
  '^python\(abi\) = 3\.[0-9]+$'
# dragond and the launcher link the library's layers statically (daemon/meson.build): the
# extension module is what needs libdragon.so.0 at run time.
for name in "${names[@]}"; do
  while IFS= read -r req; do
    for other in "${names[@]}"; do
      if [[ $req == "$other" || $req == "$other "* || $req == "$other("* ]]; then
        [[ $req =~ ^$other$exact ]] || fail "$name requires '$req', not at exactly $evr"
      fi
    done
  done < <(rpm -qpR "${file[$name]}")
done
provides=$(rpm -qp --provides "${file[dragon-libs]}")
grep -q '^libdragon\.so\.0()' <<<"$provides" || fail "dragon-libs does not provide libdragon.so.0"
for name in dragon-cluster python3-dragon; do
  provides=$(rpm -qp --provides "${file[$name]}")
  ! grep -q '\.so' <<<"$provides" ||
    fail "$name provides its dlopened modules: $(oneline "$provides")"
done

# Install, query, verify and erase in a scratch rpm root. --nodeps: that root's database holds
# none of the libraries the packages require (glibc, libstdc++, protobuf, ...: Debian packages
# here), and the check is about the packages' own files and dependencies, checked above.
# --force-debian (-i, -e; Debian's rpm only): it otherwise warns that packages go on a Debian
# system through alien; this root is not the system's.
debian=()
[[ $(rpm --help 2>&1) == *--force-debian* ]] && debian=(--force-debian)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rpm --root "$scratch" --initdb
rpm --root "$scratch" -i --nodeps "${debian[@]}" "${all[@]}" || fail "rpm -i into $scratch failed"
want=$(for name in "${names[@]}"; do
  rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n' "${file[$name]}"
done | sort)
have=$(rpm --root "$scratch" -qa | sort)
[ "$want" = "$have" ] || fail "rpm -qa lists: $(oneline "$have"); want: $(oneline "$want")"
files=$(for name in "${names[@]}"; do rpm -qpl "${file[$name]}"; done | sort -u)
while IFS= read -r f; do
  [ -e "$scratch$f" ] || [ -L "$scratch$f" ] || fail "installed, but $f is missing"
done <<<"$files"
rpm --root "$scratch" -V --nodeps "${names[@]}" ||
  fail "rpm -V: installed files differ from the packages'"
# The payload runs here: dragond from the scratch root, the extension with its libdragon.
out=$("$scratch/usr/bin/dragond" --version 2>&1) || fail "dragond --version failed: $out"
[[ $out == *"$version"* ]] || fail "dragond --version says '$out', not $version"
pydir=$(dirname "$(grep -E "^$py/dragon/__init__\.py$" <<<"$files")")
LD_LIBRARY_PATH=$scratch/usr/lib64 PYTHONPATH=$scratch$(dirname "$pydir") python3 -c \
  'import sys, dragon._native as n; sys.exit(not n.__file__.startswith(sys.argv[1]))' "$scratch" ||
  fail "dragon._native does not import from $scratch$pydir"
rpm --root "$scratch" -e "${debian[@]}" "${names[@]}" || fail "rpm -e failed"
left=$(rpm --root "$scratch" -qa)
[ -z "$left" ] || fail "after rpm -e, rpm -qa lists: $left"
while IFS= read -r f; do
  { [ ! -e "$scratch$f" ] && [ ! -L "$scratch$f" ]; } ||
    fail "after rpm -e, $f is still there, holding: $(oneline "$(find "$scratch$f" -mindepth 1 | head -20)")"
done <<<"$files"

lint=$(rpmlint -r packaging/rpm/dragon.rpmlintrc "${all[@]}" 2>&1) ||
  { echo "$lint" >&2; fail "rpmlint found errors (above)"; }
grep -E '^[^ ]+: [EW]: ' <<<"$lint" || true
echo "rpm check: ok"
