#!/usr/bin/env bash
# Installs every package Dragon needs to build, test and benchmark, from Debian 12's archive.
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  meson ninja-build pkg-config g++ gcc git # build (git: packaging/build-deb.sh lists the tree)
  libyaml-cpp-dev                          # configuration files
  libsystemd-dev                           # sd_notify, socket activation
  systemd systemd-container util-linux     # units tested under a real systemd (nspawn)
  libprotobuf-dev protobuf-compiler        # control protocol
  libgtest-dev libgmock-dev googletest     # tests (GoogleTest through pkg-config)
  clang-tidy                               # naming check (STYLE.md)
  clang libclang-rt-14-dev                 # libFuzzer targets
  gdb                                      # backtraces when a test hangs
  python3-dev pybind11-dev                 # the Python package (extension module)
  python3-numpy                            # zero-copy transfer tests, examples, benchmarks
  libpython3.11-testsuite                  # CPython's multiprocessing test suite (compatibility)
  python3-pytest                           # dragon under pytest (tests/python)
  scdoc                                    # man pages (docs/man)
  build-essential debhelper dh-python      # Debian packages (packaging/build-deb.sh;
  libpython3-dev lintian                   #   dpkg-buildpackage requires build-essential)
  rpm rpmlint file                         # RPM packages (packaging/build-rpm.sh, check-rpm.sh;
                                           #   rpm's brp-strip finds ELF files with file)
  mmdebstrap                               # a fresh Debian 12 root for the .debs (packaging/check-deb-root.sh)
  libpmix-dev libpmix2                     # multi-node wire-up (pmix_plugin/)
  libucx-dev ucx-utils                     # inter-node transport (ucx_transport/), ucx_perftest
  slurmd slurmctld slurm-client munge      # the test cluster (tests/cluster/)
  iproute2                                 #   its nodes live in network namespaces
  openmpi-bin                              # mpirun, the other PMIx server (tests/cluster/t_mpirun.sh)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
