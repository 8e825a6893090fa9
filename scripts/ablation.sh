#!/usr/bin/env bash
# The ablation of docs/results.md: variants of the ihn arm on the main job's benchmark and seeds,
# each against the same runs without ihn. Run the main job first (scripts/run.sh): its runs
# without ihn (runs/compare/seed_S/without) are copied into every variant's folder and reused
# (`ihn compare --reuse`), so each variant trains only its ihn runs. Two variants at a time, one
# run each. Tables: runs/ablation/NAME/compare.md.
#
#   bash scripts/ablation.sh                 # every variant below
#   bash scripts/ablation.sh weight_0.5 k_8  # some of them
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
declare -A variants=(
  [weight_0.5]="--ihn-weight 0.5"
  [weight_0.02]="--ihn-weight 0.02"
  [no_hardening]="--schedule const:1"
  [hinge]="--alignment hinge"
  [k_8]="--negatives 8"
  [official]="--arms off,official --views 2"
  [text_features]="--report-features text"
)
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(weight_0.02 no_hardening hinge weight_0.5 text_features k_8 official)
for name in "${names[@]}"; do
  [[ -n "${variants[$name]+x}" ]] || { echo "unknown variant $name (${!variants[*]})" >&2; exit 2; }
  [[ -d runs/compare/seed_1/without ]] || { echo "run scripts/run.sh first" >&2; exit 2; }
done
bash scripts/build.sh --target ihn_tool
run_variant() {
  local name=$1
  local out=runs/ablation/$name
  for seed_dir in runs/compare/seed_*; do
    mkdir -p "$out/$(basename "$seed_dir")"
    rm -rf "$out/$(basename "$seed_dir")/without"
    cp -r "$seed_dir/without" "$out/$(basename "$seed_dir")/without"
  done
  # shellcheck disable=SC2086  # the variant's flags are words
  build/bin/ihn compare --reuse --jobs 1 --out "$out" ${variants[$name]} > "$out.log" 2>&1
  echo "$name: $(grep -c . "$out/compare.md") rows in $out/compare.md"
}
mkdir -p runs/ablation
running=0
for name in "${names[@]}"; do
  run_variant "$name" &
  running=$((running + 1))
  if [[ $running -ge 2 ]]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
