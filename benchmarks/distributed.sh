#!/usr/bin/env bash
# Data-parallel throughput on this machine: one epoch of `ihn train` in one process with T
# threads against --nproc 2 with T/2 threads each (the same cores, the same global batches),
# alternated round by round in fresh runs; prints global steps per second of each and the
# share of a 2-rank step spent in the gradient all-reduce (log.jsonl's dist/allreduce_seconds).
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
allreduce_mean() {  # mean dist/allreduce_seconds over the steps
  python3 -c 'import sys, json
rows = [json.loads(l) for l in open(sys.argv[1])]
v = [r["dist/allreduce_seconds"] for r in rows if r["type"] == "step"]
print(sum(v) / len(v))' "$1"
}
echo "one epoch, global batch 16; $threads threads in all; $(nproc) CPUs; $rounds rounds"
for round in $(seq 1 "$rounds"); do
  "$ihn" train "${recipe[@]}" --threads "$threads" --out "$work/one_$round"
  "$ihn" train "${recipe[@]}" --threads $((threads / 2 > 0 ? threads / 2 : 1)) --nproc 2 \
    --out "$work/two_$round"
  one=$(epoch_field "$work/one_$round/log.jsonl" it_per_s)
  two=$(epoch_field "$work/two_$round/log.jsonl" it_per_s)
  ar=$(allreduce_mean "$work/two_$round/log.jsonl")
  python3 -c "import sys
one, two, ar = map(float, sys.argv[1:])
print(f'round $round: 1 rank {one:.3f} it/s, 2 ranks {two:.3f} it/s ({two / one:.2f}x); '
      f'all-reduce {ar * 1000:.1f} ms = {100 * ar * two:.1f}% of a 2-rank step')" "$one" "$two" "$ar"
done
