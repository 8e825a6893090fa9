#!/bin/bash
# The ports against the official Python code on one device, unattended (issue 17): the training
# step in float32 and in bf16 (forward pass and loss under autocast) and the beam-3 decode, of
# R2Gen and R2GenCMN at the paper configuration (ResNet-101 224², batch 16, two views,
# vocabulary 760, max length 60, random weights), official and port processes alternated, then a
# markdown table of the medians with the ratios (goals: port step >= 1.5x the official fp32
# step, beam search >= 10x).
#
#   benchmarks/gpu/compare.sh [--cpu-small] [--rounds N] [--arch r2gen,cmn] [--budget-s S]
#                             [--src DIR] [--build-dir DIR] [--skip-build]
#   benchmarks/gpu/compare.sh --export MIRROR     # prepare .official/ (needs the git mirrors)
#
#   (default)    CUDA, paper configuration: builds bench_r2gen and bench_cmn against the LibTorch
#                of `python3`'s torch (torch.utils.cmake_prefix_path) into build-gpucmp/, then
#                2 rounds (each: every measurement of both programs, the order flipped every
#                round); train 2 warm-up + 5 timed steps, beam 1 + 3 decodes; threads = nproc
#                (at most 16). A round that could overrun the budget (--budget-s, default 540 s
#                from the start, build included; judged by the longest round so far) is not
#                started.
#   --cpu-small  the same on the CPU with the small configuration (ResNet-18 128², d_model 256),
#                1 round, train 1 + 2 steps, beam 0 + 1 decode, 2 threads, build-gpucmp-cpu/;
#                a test of this script on a machine without a GPU (a few minutes on 2 cores).
#   --src DIR    the exported official code (default .official/ in the repository, git-ignored):
#                DIR/r2gen and DIR/r2gencmn, each with main.py, models/, modules/.
#   --export M   writes .official/ from bare clones M/cuhksz-nlp+R2Gen/repo and
#                M/cuhksz-nlp+R2GenCMN/repo (git archive of main.py, models, modules), and exits.
#                The device machine has no network: run this first where the mirrors are, then
#                hand .official/ to the device run with the tree (the run tool: carry
#                [".official"]).
# Environment: PYTHON (default python3; in --cpu-small mode /usr/bin/python3 when python3 has no
# torch), OUT (when set, results.jsonl, table.md and the logs are written there too), JOBS (build
# parallelism, default nproc).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/benchmarks/gpu
MODE=cuda
ROUNDS="" ARCHS=r2gen,cmn BUDGET=540 SRC=$REPO/.official BUILD="" SKIP_BUILD=0 EXPORT=""
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu-small) MODE=cpu ;;
    --rounds) ROUNDS=$2; shift ;;
    --arch) ARCHS=$2; shift ;;
    --budget-s) BUDGET=$2; shift ;;
    --src) SRC=$2; shift ;;
    --build-dir) BUILD=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --export) EXPORT=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n $EXPORT ]]; then
  for pair in "R2Gen r2gen" "R2GenCMN r2gencmn"; do
    read -r upstream sub <<< "$pair"
    git_dir=$EXPORT/cuhksz-nlp+$upstream/repo dst=$REPO/.official/$sub
    [[ -d $git_dir ]] || { echo "compare.sh: no bare clone at $git_dir" >&2; exit 2; }
    rm -rf "$dst" && mkdir -p "$dst"
    git --git-dir="$git_dir" rev-parse HEAD > "$dst/.exported_commit"
    # Only the Python code the benchmark imports, blob by blob (the R2Gen repository also holds
    # jars and data that a snapshot may lack, and git archive would stop at them).
    git --git-dir="$git_dir" ls-tree -r HEAD -- main.py models modules |
      while read -r _ type sha path; do
        [[ $type == blob ]] || continue
        mkdir -p "$dst/$(dirname "$path")"
        git --git-dir="$git_dir" cat-file blob "$sha" > "$dst/$path" || exit 1
      done || { echo "compare.sh: export of $upstream failed" >&2; exit 2; }
    [[ -f $dst/main.py ]] || { echo "compare.sh: export of $upstream has no main.py" >&2; exit 2; }
    echo "exported $upstream @ $(cat "$dst/.exported_commit") to $dst"
  done
  git -C "$REPO" check-ignore -q .official/ || echo "warning: .official/ is not git-ignored" >&2
  exit 0
fi

T_START=$(date +%s)
elapsed() { echo $(($(date +%s) - T_START)); }
NPROC=$(nproc)
if [[ $MODE == cuda ]]; then
  CFG=paper DEVICE=cuda THREADS=$((NPROC < 16 ? NPROC : 16))
  TW=2 TR=5 BW=1 BR=3 ROUNDS=${ROUNDS:-2} BUILD=${BUILD:-$REPO/build-gpucmp} TIMEOUT=240
else
  CFG=small DEVICE=cpu THREADS=2
  TW=1 TR=2 BW=0 BR=1 ROUNDS=${ROUNDS:-1} BUILD=${BUILD:-$REPO/build-gpucmp-cpu} TIMEOUT=600
fi
[[ $BUILD = /* ]] || BUILD=$REPO/$BUILD
JOBS=${JOBS:-$NPROC}
WORK=$(mktemp -d /tmp/ihn-gpucmp.XXXXXX)
RESULTS=$WORK/results.jsonl LOG=$WORK/log.txt
: > "$RESULTS"
say() { echo "[compare $(elapsed)s] $*" | tee -a "$LOG"; }
finish() {  # copies what there is to $OUT, also after a failure
  if [[ -n ${OUT:-} ]]; then mkdir -p "$OUT" && cp -f "$WORK"/* "$OUT"/ 2>/dev/null; fi
}
trap finish EXIT

# --- what the run needs -----------------------------------------------------------------------
for sub in r2gen r2gencmn; do
  if [[ ! -f $SRC/$sub/main.py ]]; then
    cat >&2 << EOF
compare.sh: the official code is not at $SRC/$sub (main.py, models/, modules/).
Prepare it where the git mirrors are (the device machine has no network), e.g.
  benchmarks/gpu/compare.sh --export /work/.mirror        # writes .official/ (git-ignored)
or by hand, for each of R2Gen -> r2gen and R2GenCMN -> r2gencmn:
  G=<mirror>/cuhksz-nlp+R2Gen/repo; D=.official/r2gen; mkdir -p \$D
  git --git-dir=\$G rev-parse HEAD > \$D/.exported_commit
  git --git-dir=\$G archive HEAD main.py models modules | tar -x -C \$D   # (or ls-tree + cat-file)
then pass .official with the tree to the device run (carry [".official"]).
EOF
    exit 2
  fi
done
PY=${PYTHON:-python3}
if ! "$PY" -c 'import torch' 2> /dev/null; then
  if [[ $MODE == cpu && -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2> /dev/null; then
    PY=/usr/bin/python3
  else
    echo "compare.sh: $PY cannot import torch" >&2
    exit 2
  fi
fi
"$PY" -c 'import numpy' 2> /dev/null ||
  { echo "compare.sh: $PY has no numpy (the official code needs it)" >&2; exit 2; }
if [[ $MODE == cuda ]]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    { echo "compare.sh: torch.cuda.is_available() is False in $PY (--cpu-small for a CPU test)" >&2; exit 2; }
fi
say "mode $MODE, config $CFG, rounds $ROUNDS, archs $ARCHS, threads $THREADS, budget ${BUDGET}s"
say "python $PY: torch $("$PY" -c 'import torch; print(torch.__version__)')"
command -v nvidia-smi > /dev/null && [[ $MODE == cuda ]] &&
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"

# --- build ------------------------------------------------------------------------------------
if [[ $SKIP_BUILD == 0 ]]; then
  prefix=()
  if [[ $MODE == cuda ]]; then
    TORCH_CMAKE=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
    prefix=(-DCMAKE_PREFIX_PATH="$TORCH_CMAKE")
    if [[ -d $REPO/.gpu-deps ]]; then  # Debian's headers carried along (deps.sh fetch)
      eval "$("$HERE/deps.sh" env)"
      # shellcheck disable=SC2206  # the arguments are meant to split
      prefix=(-DCMAKE_PREFIX_PATH="$IHN_DEPS_PREFIX;$TORCH_CMAKE" $IHN_DEPS_CMAKE_ARGS)
      say "build dependencies from .gpu-deps (unpacked in $IHN_DEPS)"
    fi
    say "LibTorch from $TORCH_CMAKE"
  fi  # the CPU test builds against the system's LibTorch (Debian's)
  gen=()
  command -v ninja > /dev/null && [[ ! -f $BUILD/CMakeCache.txt || -f $BUILD/build.ninja ]] && gen=(-G Ninja)
  say "configure + build bench_r2gen bench_cmn in $BUILD (-j $JOBS)"
  if ! cmake -S "$REPO" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DIHN_BUILD_TESTS=OFF \
    "${prefix[@]}" > "$WORK/build.log" 2>&1 ||
    ! cmake --build "$BUILD" -j "$JOBS" --target bench_r2gen bench_cmn >> "$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    say "build FAILED (full log: build.log)"
    exit 1
  fi
  say "built"
fi
if [[ $MODE == cuda ]]; then
  PORT_LIBTORCH="LibTorch $("$PY" -c 'import torch; print(torch.__version__)') (the same wheel)"
else
  PORT_LIBTORCH="the system's LibTorch (Debian's when built by this script)"
fi
# The kit's shared libraries (libstemmer) for the programs, also when the build was skipped.
if [[ $MODE == cuda && -d $REPO/.gpu-deps && -z ${IHN_DEPS:-} ]]; then
  eval "$("$HERE/deps.sh" env)"
fi
BIN=$BUILD/bin
[[ -x $BIN/bench_r2gen && -x $BIN/bench_cmn ]] || { say "no $BIN/bench_r2gen or bench_cmn"; exit 1; }

# --- measurements -----------------------------------------------------------------------------
# Every line RESULT {...} of a program goes to results.jsonl with the round added.
record() {  # ROUND NAME COMMAND...
  local round=$1 name=$2
  shift 2
  say "round $round: $name"
  local out
  out=$(timeout "$TIMEOUT" "$@" 2>> "$WORK/stderr.txt")
  local rc=$?
  echo "$out" >> "$LOG"
  if [[ $rc != 0 ]]; then
    say "  $name FAILED (exit $rc; stderr.txt)"
    echo "{\"failed\": \"$name\", \"round\": $round, \"rc\": $rc}" >> "$RESULTS"
    return
  fi
  echo "$out" | sed -n 's/^RESULT //p' |
    "$PY" -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line); r["round"] = int(sys.argv[1]); print(json.dumps(r))' "$round" >> "$RESULTS"
}
official() {  # ROUND ARCH
  record "$1" "official $2" "$PY" "$HERE/official_bench.py" --arch "$2" --device "$DEVICE" \
    --config "$CFG" --src "$SRC" --threads "$THREADS" --warmup "$TW" --reps "$TR" \
    --beam-warmup "$BW" --beam-reps "$BR"
}
port() {  # ROUND ARCH
  local bench=bench_r2gen
  [[ $2 == cmn ]] && bench=bench_cmn
  for precision in fp32 bf16; do
    record "$1" "port $2 train $precision" "$BIN/$bench" "$CFG" train "$TW" "$TR" "$THREADS" \
      "$precision" "$DEVICE"
  done
  record "$1" "port $2 beam" "$BIN/$bench" "$CFG" beam "$BW" "$BR" "$THREADS" "$DEVICE"
}
IFS=, read -r -a arch_list <<< "$ARCHS"
longest=0  # the longest round so far: what the next one may take
for ((round = 1; round <= ROUNDS; round++)); do
  t0=$(elapsed)
  if ((round > 1 && t0 + longest > BUDGET)); then
    say "round $round not started: a round took up to ${longest}s, ${t0}s of ${BUDGET}s used"
    break
  fi
  for arch in "${arch_list[@]}"; do
    if ((round % 2)); then official $round "$arch"; port $round "$arch"
    else port $round "$arch"; official $round "$arch"; fi
  done
  took=$(($(elapsed) - t0))
  ((took > longest)) && longest=$took
done

# --- table ------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$PORT_LIBTORCH" > "$WORK/table.md" << 'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
failed = [r['failed'] for r in rows if 'failed' in r]
rows = [r for r in rows if 'failed' not in r]
def key(r):
    impl = 'official' if r.get('impl') == 'official' else 'port'
    return (impl, r['arch'], r['bench'], r.get('precision', 'fp32'))
per = {}
for r in rows:
    per.setdefault(key(r), []).append(r['seconds']['median'])
def med(k):
    v = per.get(k)
    return statistics.median(v) if v else None
def fmt(x):
    return '–' if x is None else ('%.3f' % x if x < 100 else '%.1f' % x)
def ratio(a, b):
    return None if a is None or b is None else a / b
def fmt_ratio(x):
    return '–' if x is None else '%.2f×' % x
info = next((r for r in rows if r.get('impl') == 'official'), {})
rounds = sorted({r['round'] for r in rows})
print('Device: %s; official code on torch %s (%s), cuDNN deterministic %s (as its main()); '
      'ports on %s; config %s; %d round(s); seconds are medians over the rounds of each '
      'process\'s median.\n'
      % (info.get('gpu') or info.get('device', '?'), info.get('torch', '?'), info.get('vision', '?'),
         info.get('cudnn_deterministic', '?'), sys.argv[2], info.get('cfg', '?'), len(rounds)))
print('| model | measurement | official s | port s | official / port | goal |')
print('|---|---|---|---|---|---|')
for arch, name in (('r2gen', 'R2Gen'), ('cmn', 'R2GenCMN')):
    if not any(k[1] == arch for k in per):
        continue
    o32, o16 = med(('official', arch, 'train', 'fp32')), med(('official', arch, 'train', 'bf16'))
    p32, p16 = med(('port', arch, 'train', 'fp32')), med(('port', arch, 'train', 'bf16'))
    ob, pb = med(('official', arch, 'beam', 'fp32')), med(('port', arch, 'beam', 'fp32'))
    def goal(x, target):
        return '–' if x is None else ('≥ %g×: %s' % (target, 'met' if x >= target else 'not met'))
    r1, r2, r3, r4 = ratio(o32, p32), ratio(o32, p16), ratio(o16, p16), ratio(ob, pb)
    print('| %s | train step, fp32 | %s | %s | %s | %s |' % (name, fmt(o32), fmt(p32), fmt_ratio(r1), goal(r1, 1.5)))
    print('| %s | train step, port bf16 vs official fp32 | %s | %s | %s | %s |' % (name, fmt(o32), fmt(p16), fmt_ratio(r2), goal(r2, 1.5)))
    print('| %s | train step, bf16 both | %s | %s | %s | |' % (name, fmt(o16), fmt(p16), fmt_ratio(r3)))
    print('| %s | beam-3 decode, fp32 | %s | %s | %s | %s |' % (name, fmt(ob), fmt(pb), fmt_ratio(r4), goal(r4, 10)))
print()
for arch in ('r2gen', 'cmn'):
    for k in sorted(per):
        if k[1] == arch:
            print('- %s %s %s %s: per-round medians %s' % (k[0], k[1], k[2], k[3],
                  ', '.join('%.4f' % v for v in per[k])))
if failed:
    print('\nFailed: ' + '; '.join(failed))
EOF
cat "$WORK/table.md"
say "done in $(elapsed)s; results in $WORK${OUT:+ and $OUT}"
