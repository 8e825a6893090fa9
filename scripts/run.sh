#!/usr/bin/env bash
# The README's main job: install packages, build the `ihn` tool, and run `ihn compare` on the
# embedded synthetic data set with the calibrated benchmark (preset cpu-bench, docs/results.md):
# a visual extractor pretrained once on a disjoint synthetic set (cached in runs/pretrain), then
# 3 seeds x {without, with ihn} on 1,500 studies (300 test), two runs at a time — about 11
# minutes on 2 cores after the build — ending with the side-by-side table (also in
# runs/compare/compare.md and compare.json), examples.md and report.html (open it in a
# browser: table, charts, every test study with each arm's report). Extra arguments go to
# `ihn compare` (e.g. `scripts/run.sh --seeds 1 --out runs/quick`).
#
# `scripts/run.sh minimal [ARGS]` runs the minimal plug-in example instead (two toy encoders,
# with and without ihn; seconds).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ "${1:-}" == minimal ]]; then
  shift
  bash "$root/scripts/build.sh" --target ihn_minimal
  exec "$root/build/bin/ihn_minimal" "$@"
fi
bash "$root/scripts/build.sh" --target ihn_tool
cd "$root"
# runs/compare unless the arguments name another --out (ihn takes one).
out=(--out runs/compare)
for arg in "$@"; do
  [[ "$arg" == --out || "$arg" == --out=* ]] && out=()
done
exec "$root/build/bin/ihn" compare --preset cpu-bench "${out[@]}" "$@"
