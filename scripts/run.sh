#!/usr/bin/env bash
# The README's main job: install packages, build, and run the main job on the embedded
# default (until `ihn compare` lands: the minimal example, with and without ihn).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/build.sh" --target ihn_minimal
"$root/build/bin/ihn_minimal" "$@"
