#!/usr/bin/env bash
# Data-parallel throughput on this machine: one epoch of `ihn train` in one process with T
# threads against --nproc 2 with T/2 threads each (the same cores, the same global batches),
# the 2-rank run with the gradient all-reduce overlapped with backward (the default) and after
# it (IHN_DIST_OVERLAP=0), alternated round by round in fresh runs. Prints global steps per
# second of each and the share of a 2-rank step spent waiting for the all-reduce
# (log.jsonl's dist/allreduce_wait_seconds).
# The numbers of docs/performance.md ("Data-parallel training").
#
#   benchmarks/distributed.sh [ROUNDS] [THREADS] [-- extra ihn train options]
#     defaults: 2 rounds, 2 threads; the recipe: cpu-small on 300 synthetic studies, --ihn paper
set -euo pipefail
rounds=${1:-2}
threads=${2:-2}
shift $(($# > 2 ? 2 : $#)) || true
[[ ${1:-} == -- ]] && shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ihn=$root/build/bin/ihn
[[ -x $ihn ]] || { echo "distributed.sh: build $ihn first (bash scripts/build.sh)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
recipe=(--data synth --preset cpu-small --epochs 1 --ihn paper --beam-size 1 --bootstrap 0
        --no-plots --quiet "$@")
epoch_field() {  # FIELD of log.jsonl's epoch row
  python3 -c 'import sys, json
rows = [json.loads(l) for l in open(sys.argv[1])]
print(next(r for r in rows if r["type"] == "epoch")[sys.argv[2]])' "$1" "$2"
}
allreduce_mean() {  # mean dist/allreduce_wait_seconds over the steps
  python3 -c 'import sys, json
rows = [json.loads(l) for l in open(sys.argv[1])]
v = [r["dist/allreduce_wait_seconds"] for r in rows if r["type"] == "step"]
print(sum(v) / len(v))' "$1"
}
echo "one epoch, global batch 16; $threads threads in all; $(nproc) CPUs; $rounds rounds"
for round in $(seq 1 "$rounds"); do
  "$ihn" train "${recipe[@]}" --threads "$threads" --out "$work/one_$round"
  half=$((threads / 2 > 0 ? threads / 2 : 1))
  "$ihn" train "${recipe[@]}" --threads $half --nproc 2 --out "$work/two_$round"
  IHN_DIST_OVERLAP=0 "$ihn" train "${recipe[@]}" --threads $half --nproc 2 \
    --out "$work/after_$round"
  python3 -c "import sys
one, two, after, w2, wa = map(float, sys.argv[1:])
print(f'round $round: 1 rank {one:.3f} it/s; 2 ranks overlapped {two:.3f} it/s ({two / one:.2f}x), '
      f'waiting {w2 * 1000:.1f} ms = {100 * w2 * two:.1f}% of a step; after backward '
      f'{after:.3f} it/s ({after / one:.2f}x), {wa * 1000:.1f} ms = {100 * wa * after:.1f}%')" \
    "$(epoch_field "$work/one_$round/log.jsonl" it_per_s)" \
    "$(epoch_field "$work/two_$round/log.jsonl" it_per_s)" \
    "$(epoch_field "$work/after_$round/log.jsonl" it_per_s)" \
    "$(allreduce_mean "$work/two_$round/log.jsonl")" "$(allreduce_mean "$work/after_$round/log.jsonl")"
done
