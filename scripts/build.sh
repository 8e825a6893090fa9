#!/usr/bin/env bash
# Installs the Debian packages (scripts/install-deps.sh) and builds ihn into ./build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/install-deps.sh"
jobs=${IHN_BUILD_JOBS:-$(nproc)}
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release ${IHN_CMAKE_ARGS:-} >/dev/null
cmake --build "$root/build" -j "$jobs" "$@"
