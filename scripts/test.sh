#!/usr/bin/env bash
# The README's test command: install packages, build, run every test with ctest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure --no-tests=error -j "${IHN_TEST_JOBS:-2}" "$@"
