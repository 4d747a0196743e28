#!/usr/bin/env bash
# Installs Dragon into a fresh prefix and builds and runs a C program and a C++ program against
# what was installed, found only through pkg-config: proves `meson install` gives a user
# everything they need. Prints "install check: ok" on success.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
# A release build (-O3), which no other CI step makes: what users install gets compiled too.
meson setup "$work/build" --prefix="$prefix" --buildtype=release -Dtests=false -Dbench=false \
  -Dexamples=false >/dev/null
ninja -C "$work/build" -j2 >/dev/null
meson install -C "$work/build" >/dev/null
pcdir=$(dirname "$(find "$prefix" -name dragon.pc | head -1)")
export PKG_CONFIG_PATH=$pcdir
libdir=$(pkg-config --variable=libdir dragon)
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Werror tests/capi/capi_test.c -o "$work/capi" $(pkg-config --cflags --libs dragon)
# shellcheck disable=SC2046
g++ -std=c++20 -Wall -Werror tests/public_headers_test.cpp -o "$work/cxx" $(pkg-config --cflags --libs dragon)
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Werror -DDRAGOND_PATH="\"$prefix/bin/dragond\"" tests/capi/capi_client_test.c \
  -o "$work/capi_client" $(pkg-config --cflags --libs dragon)
LD_LIBRARY_PATH=$libdir "$work/capi" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cxx"
# The installed dragond serves the installed client library.
LD_LIBRARY_PATH=$libdir "$work/capi_client" >/dev/null
# The installed launcher runs a job (with a private dragond it finds beside itself).
out=$(XDG_RUNTIME_DIR=$work DRAGON_ALLOW_ROOT=true "$prefix/bin/dragon" -- /bin/echo installed-ok)
[ "$out" = "installed-ok" ] || { echo "install check: the installed launcher said '$out'" >&2; exit 1; }
# The installed Python package, through the installed launcher: `dragon app.py`.
cat > "$work/app.py" <<'PY'
import multiprocessing as mp
def square(q, x):
    q.put(x * x)
if __name__ == "__main__":
    q = mp.Queue()
    p = mp.Process(target=square, args=(q, 12))
    p.start()
    print(mp.get_start_method(), q.get(timeout=60))
    p.join()
PY
out=$(cd "$work" && XDG_RUNTIME_DIR=$work DRAGON_ALLOW_ROOT=true "$prefix/bin/dragon" app.py)
[ "$out" = "dragon 144" ] || { echo "install check: the installed Python package said '$out'" >&2; exit 1; }
for f in bin/dragon bin/dragond lib/systemd/system/dragond@.service lib/systemd/system/dragond@.socket \
  include/dragon/channel.hpp include/dragon/client.hpp include/dragon/dragon.h \
  share/man/man1/dragon.1 share/man/man8/dragond.8 share/man/man5/dragon.yaml.5 etc/dragon/dragon.yaml \
  libexec/dragon/slurm-prolog libexec/dragon/slurm-epilog; do
  [ -f "$prefix/$f" ] || { echo "install check: $f was not installed" >&2; exit 1; }
done
# The installed dragond reads the configuration file the install put in PREFIX/etc.
echo "log_level: error" >>"$prefix/etc/dragon/dragon.yaml"
config=$(env -i PATH=/usr/bin:/bin HOME="$work" XDG_CONFIG_HOME="$work" "$prefix/bin/dragond" --print-config |
  grep '^log_level:')
case $config in
  *"$prefix/etc/dragon/dragon.yaml:"*) ;;
  *) echo "install check: dragond does not read $prefix/etc/dragon/dragon.yaml: $config" >&2; exit 1 ;;
esac
if find "$prefix/include" -name 'private.hpp' | grep -q .; then
  echo "install check: an internal header was installed" >&2
  exit 1
fi
echo "install check: ok"
