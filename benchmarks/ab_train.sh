#!/usr/bin/env bash
# One training step of the official Python code and of the C++ port, alternated round by round in
# fresh processes on the same machine, with the ratio of their medians per round: the numbers
# of docs/performance.md ("Training step").
#
#   benchmarks/ab_train.sh MODEL CFG ROUNDS [WARMUP REPS THREADS]
#     MODEL    r2gen | cmn;  CFG small | paper;  defaults: WARMUP 2, REPS 5, THREADS 2
#   IHN_PY_MALLOC=tuned  runs Python with the baseline README's allocator settings
#                        (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...), the C++ side's own
#   IHN_AB_BF16=1        also times the port under bf16 autocast (`ihn train --precision bf16`)
#                        in each round, after its float32 step: bf16 against fp32 and against
#                        the official (float32-only) code in the same run
#   IHN_SHARED_DIR       ../shared beside the clone by default; PERF_SRC the exported official
#                        sources (shared/baselines/README.md), /tmp/perf_src by default
set -euo pipefail
model=${1:?usage: ab_train.sh r2gen|cmn small|paper ROUNDS [WARMUP REPS THREADS]}
cfg=${2:?config small or paper}
rounds=${3:-3}
warmup=${4:-2}
reps=${5:-5}
threads=${6:-2}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${IHN_SHARED_DIR:-$root/../shared}
export PERF_SRC=${PERF_SRC:-/tmp/perf_src}
bench=$root/build/bin/bench_$model
[[ -x $bench ]] || { echo "ab_train.sh: build $bench first (cmake --build build)" >&2; exit 2; }
[[ -d $PERF_SRC ]] || { echo "ab_train.sh: no official sources in $PERF_SRC (shared/baselines/README.md)" >&2; exit 2; }
py_env=()
if [[ ${IHN_PY_MALLOC:-default} == tuned ]]; then
  py_env=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1099511627776)
fi
median() {  # the median step time of a RESULT line, from either program
  python3 -c 'import sys, json
line = [l for l in sys.stdin if l.startswith("RESULT")][-1]
d = json.loads(line[len("RESULT "):])
print(d["step_s"]["median"] if "step_s" in d else d["seconds"]["median"])'
}
echo "model $model, config $cfg, $threads threads, $warmup warm-up + $reps timed steps per" \
     "process, Python allocator ${IHN_PY_MALLOC:-default}"
for r in $(seq "$rounds"); do
  py=$(cd "$shared/baselines" &&
       env "${py_env[@]}" /usr/bin/python3 bench_train.py "$model" "$cfg" "$threads" step \
         "$warmup" "$reps" 2>&1 | median)
  cpp=$("$bench" "$cfg" train "$warmup" "$reps" "$threads" 2>&1 | median)
  ratio=$(python3 -c "print(f'{$py / $cpp:.3f}')")
  bf16=""
  if [[ ${IHN_AB_BF16:-0} == 1 ]]; then
    half=$("$bench" "$cfg" train "$warmup" "$reps" "$threads" bf16 2>&1 | median)
    bf16=$(python3 -c "print(f', c++ bf16 $half s, fp32/bf16 {$cpp / $half:.3f}, python/bf16 {$py / $half:.3f}')")
  fi
  echo "round $r: python $py s, c++ $cpp s, python/c++ $ratio$bf16, load $(cut -d' ' -f1 /proc/loadavg)"
done
