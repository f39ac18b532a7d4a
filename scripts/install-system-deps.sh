#!/usr/bin/env bash
# Installs the Debian packages splitlink builds with, when they are missing.
#   core: compiler and OpenSSL 3 headers (enough to build and use the package)
#   dev:  + clang/libFuzzer, sanitizer runtimes, GoogleTest, Google Benchmark (tests, fuzzing, C++ benchmarks)
set -euo pipefail
profile="${1:-core}"

pkgs=(g++ libssl-dev)
if [ "$profile" = dev ]; then
  pkgs+=(clang libclang-rt-14-dev libgtest-dev libbenchmark-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "splitlink: installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
  else
    echo "splitlink: need root to install ${missing[*]}; run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
