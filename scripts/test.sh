#!/usr/bin/env bash
# The README's test command: install packages, build, run every test with ctest.
set -euo pipefail
# Some tests read checkpoints written by Python's torch.save and compare against Pillow: install
# them, and fail (not skip) those tests if they are missing.
export IHN_WITH_PYTHON=${IHN_WITH_PYTHON:-1} IHN_REQUIRE_PYTHON=${IHN_REQUIRE_PYTHON:-1}
# The HTML report is tested in headless Chromium: install it, and fail (not skip) without it.
export IHN_WITH_BROWSER=${IHN_WITH_BROWSER:-1} IHN_REQUIRE_BROWSER=${IHN_REQUIRE_BROWSER:-1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh"
cd "$root/build"
# The tests need about 5 GB at their peak (README): say what was free.
echo "ihn: $(df -h --output=avail . | tail -1 | tr -d ' ') free on the build disk before the tests"
trap 'echo "ihn: $(df -h --output=avail . | tail -1 | tr -d " ") free after the tests"' EXIT
ctest --output-on-failure --no-tests=error -j "${IHN_TEST_JOBS:-2}" "$@"
