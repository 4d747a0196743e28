#!/usr/bin/env bash
# Every test: installs what it needs, builds, and runs all suites three ways: a normal
# optimised build, AddressSanitizer + UndefinedBehaviorSanitizer, and ThreadSanitizer on the
# threaded suite (TSan cannot follow memory shared between processes). Ends with one line
# "tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh || exit 1

passed=0
failed=0
run() {  # run NAME DIR [meson test args...]
  local name=$1 dir=$2
  shift 2
  echo "== $name"
  local log
  log=$(mktemp)
  meson test -C "$dir" --print-errorlogs --num-processes 1 "$@" 2>&1 | tee "$log" | grep -E '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):'
  local ok fail timeout
  ok=$(awk '/^Ok:/ {print $2}' "$log")
  fail=$(awk '/^Fail:/ {print $2}' "$log")
  timeout=$(awk '/^Timeout:/ {print $2}' "$log")
  if [ -z "$ok" ]; then  # meson itself failed
    tail -30 "$log"
    fail=1
  fi
  if [ "${fail:-0}" != 0 ] || [ "${timeout:-0}" != 0 ]; then
    # What a failed test printed (meson's --print-errorlogs), so CI's output says why.
    echo "-- the output of the failed tests (last 200 lines):"
    grep -vE '^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout|Expected Fail|Unexpected Pass|Skipped):' "$log" |
      tail -200 | sed 's/^/  | /'
  fi
  passed=$((passed + ${ok:-0}))
  failed=$((failed + ${fail:-0} + ${timeout:-0}))
  rm -f "$log"
  report_skips "$dir/meson-logs/testlog.txt"
}

skipped=0
# Tests that skip themselves (a GoogleTest GTEST_SKIP, a unittest skip, a script's exit 77) are
# named with their reason, and counted in the closing line: a skip is never silent.
report_skips() {  # report_skips TESTLOG
  [ -f "$1" ] || return 0
  local lines
  lines=$(grep -hE '^\[  SKIPPED \] [A-Za-z_0-9/]+\.[A-Za-z_0-9/]+ \([0-9]+ ms\)|\.\.\. skipped |^skipped: ' "$1" || true)
  [ -n "$lines" ] || return 0
  echo "$lines" | sed 's/^/  SKIPPED: /'
  # A GoogleTest skip gives its reason on the line after "FILE:LINE: Skipped".
  grep -hA1 -E '^[^ ]+:[0-9]+: Skipped$' "$1" | grep -vE 'Skipped$|^--$' | sed 's/^/    reason: /' || true
  skipped=$((skipped + $(echo "$lines" | wc -l)))
}

build() {  # build DIR [meson options...]
  echo "== build $1"
  if ! scripts/build.sh "$@"; then
    echo "build of $1 failed" >&2
    failed=$((failed + 1))
    return 1
  fi
}

build build -Dtests=true -Dbench=true -Dexamples=true && run "tests" build
# The Python extension is left out of the sanitizer builds: Debian's python3 is not built with
# them, so a sanitized extension cannot load into it.
build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbench=false \
  -Dexamples=false -Dpython=false -Dkill_loop_iterations=300 &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    run "tests under ASan+UBSan" build-asan
build build-tsan -Db_sanitize=thread -Db_lundef=false -Dbench=false -Dexamples=false -Dpython=false \
  -Dcpp_args=-Wno-tsan && TSAN_OPTIONS=halt_on_error=1 run "threaded tests under TSan" build-tsan threads

echo "== fuzzing the control-frame decoder (30 s, libFuzzer + ASan + UBSan)"
if CC=clang CXX=clang++ scripts/build.sh build-fuzz --target tests/fuzz/protocol_fuzz \
     -Dfuzz=true -Dtests=false -Dbench=false -Dexamples=false -Dpython=false \
     -Db_sanitize=address,undefined -Db_lundef=false; then
  corpus=$(mktemp -d)
  cp tests/protocol/corpus/* "$corpus"/
  if build-fuzz/tests/fuzz/protocol_fuzz -max_total_time=30 -rss_limit_mb=2048 \
       -print_final_stats=1 "$corpus" >"$corpus.log" 2>&1; then
    grep -E "^Done|stat::number_of_executed_units" "$corpus.log" | head -2
    passed=$((passed + 1))
  else
    tail -40 "$corpus.log"
    failed=$((failed + 1))
  fi
  rm -rf "$corpus" "$corpus.log"
else
  echo "fuzz build failed" >&2
  failed=$((failed + 1))
fi

echo "== naming check (clang-tidy, .clang-tidy)"
if clang-tidy -p build --quiet --extra-arg=-Wno-unknown-warning-option libdragon/*/*.cpp config/*.cpp daemon/*.cpp >/tmp/dragon-tidy.$$ 2>&1; then
  passed=$((passed + 1))
else
  grep -E "error:" /tmp/dragon-tidy.$$ | sort -u
  failed=$((failed + 1))
fi
rm -f /tmp/dragon-tidy.$$

echo "== CPython's multiprocessing test suite, processes flavour, dragon start method"
# The team's harness (../shared/mp-suite, beside the repository in CI) runs one test class per
# subprocess with a watchdog per test; every test counts here.
suite=../shared/mp-suite/run_cpython_mp_suite.sh
if [ -x "$suite" ] || [ -f "$suite" ]; then
  out=$(mktemp -d)
  DRAGON_ALLOW_ROOT=true bash "$suite" dragon "$PWD/build/python" --out "$out" >"$out/run.log" 2>&1
  line=$(grep -E '^mp-suite: ' "$out/run.log" | tail -1)
  if [[ $line =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped,\ ([0-9]+)\ errors ]]; then
    echo "$line"
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2] + BASH_REMATCH[4]))
    grep -E '^ +(FAIL|ERROR) ' "$out/run.log" || true
  else
    tail -30 "$out/run.log"
    failed=$((failed + 1))
  fi
  rm -rf "$out"
elif [ "${CI:-}" = "true" ]; then
  echo "FAILED: $suite is not beside this repository: CI must run CPython's suite"
  failed=$((failed + 1))
else
  echo "NOT RUN: $suite is not beside this repository (it is in the team's shared folder, which CI has)"
fi

echo "== Debian packages (packaging/build-deb.sh), checked by lintian"
debs=$(mktemp -d)
if packaging/build-deb.sh "$debs" >"$debs/build.log" 2>&1; then
  # Errors and warnings fail; what is overridden says why in packaging/debian/*lintian-overrides.
  if lintian --fail-on error,warning --display-info "$debs"/*.changes >"$debs/lintian.log" 2>&1; then
    ls "$debs"/*.deb | xargs -n1 basename
    passed=$((passed + 1))
  else
    cat "$debs/lintian.log"
    failed=$((failed + 1))
  fi
else
  tail -40 "$debs/build.log"
  failed=$((failed + 1))
fi

echo "== Debian packages on a clean Debian 12 root (packaging/check-deb-root.sh)"
# The debs just built: apt-get install into a fresh mmdebstrap root, an example as a user, the
# units under systemd-nspawn, apt-get purge leaving no file behind.
if ls "$debs"/*.deb >/dev/null 2>&1 && packaging/check-deb-root.sh "$debs" >"$debs/root.log" 2>&1; then
  cat "$debs/root.log"
  passed=$((passed + 1))
else
  cat "$debs/root.log" 2>/dev/null || echo "no debs were built"
  failed=$((failed + 1))
fi
rm -rf "$debs"

echo "== RPM packages (packaging/build-rpm.sh), checked by packaging/check-rpm.sh and rpmlint"
rpms=$(mktemp -d)
if packaging/build-rpm.sh "$rpms" >"$rpms/build.log" 2>&1; then
  # check-rpm.sh runs rpmlint; what it filters says why in packaging/rpm/dragon.rpmlintrc.
  if packaging/check-rpm.sh "$rpms" >"$rpms/check.log" 2>&1; then
    ls "$rpms"/*.rpm | xargs -n1 basename
    passed=$((passed + 1))
  else
    cat "$rpms/check.log"
    failed=$((failed + 1))
  fi
else
  tail -40 "$rpms/build.log"
  failed=$((failed + 1))
fi
rm -rf "$rpms"

echo "== install check"
if scripts/check-install.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

echo "== multi-node tests: a 3-node Slurm cluster in network namespaces (tests/cluster/run.sh)"
clog=$(mktemp)
DRAGON_BUILD_DIR=$PWD/build tests/cluster/run.sh >"$clog" 2>&1
grep -E '^(PASS|FAIL|SKIP) |^    \| ' "$clog" || true
line=$(grep -E '^cluster tests: ' "$clog" | tail -1)
if [[ $line =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped ]]; then
  echo "$line"
  passed=$((passed + BASH_REMATCH[1]))
  failed=$((failed + BASH_REMATCH[2]))
  skipped=$((skipped + BASH_REMATCH[3]))
  grep -E '^SKIP ' "$clog" | sed 's/^/  SKIPPED: /' || true
else
  tail -30 "$clog"
  failed=$((failed + 1))
fi
rm -f "$clog"

echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
