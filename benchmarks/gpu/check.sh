#!/usr/bin/env bash
# The GPU checks of issues 15 and 17, unattended on one CUDA machine in a few minutes: ihn built
# against that machine's LibTorch 2.x, then the tool and the augmenter on the GPU. Each check is
# timed out on its own and the script goes on after a failure; a table of what passed ends it.
#
#   benchmarks/gpu/check.sh [--cpu] [--build-dir DIR] [--skip-build]
#
#   1. build     ihn, bench_augmenter, bench_r2gen, bench_cmn against python3's torch
#                (torch.utils.cmake_prefix_path), with Debian's headers from .gpu-deps/ when the
#                machine has none (benchmarks/gpu/deps.sh; the device machines have no network)
#   2. version   `ihn version`: LibTorch, CUDA and the precisions the device runs
#   3. fp32 / bf16 / fp16   a small `ihn train --device cuda` in each precision (fp16 with loss
#                scaling), then `ihn evaluate` of its best.pt; all must finish with test.json
#   4. resume    the bf16 run stopped after 3 steps and resumed: the same final losses as the
#                uninterrupted run, to 1e-5 (GPU kernels need not be bit-deterministic)
#   5. nproc 2   `ihn train --nproc 2 --device cuda --ihn paper`: c10d Gloo with CUDA tensors (two
#                ranks share the GPU when there is one), the augmenter's bank gathered across ranks
#      nccl      with NCCL in the build: test_train "[nccl]" (a 1-rank NCCL group carries CUDA
#                tensors; the tests are configured and built only for it, so a failure there
#                leaves the other checks alone), then `--nproc 2 --dist-backend nccl`: trains
#                with 2+ GPUs, and with one is refused naming the rank without a GPU of its own
#   6. augmenter `bench_augmenter 16 10 mimic cuda`: loss() at MIMIC-CXR scale (270,000 reports),
#                float32 against compact storage, on the GPU
# Then, in a second call on the same warm machine, the ports against the official code:
#   benchmarks/gpu/compare.sh --build-dir build-gpu --skip-build   (carry .official and .gpu-deps)
#
#   --cpu        the same on the CPU (fp16 left out), against the system's LibTorch: a test of this
#                script on a machine without a GPU
# Environment: OUT (when set, check.log and the table are written there too), JOBS (build
# parallelism, default nproc).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/benchmarks/gpu
DEVICE=cuda BUILD=$REPO/build-gpu SKIP_BUILD=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu) DEVICE=cpu ;;
    --build-dir) BUILD=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $BUILD = /* ]] || BUILD=$REPO/$BUILD
WORK=$(mktemp -d /tmp/ihn-gpu-check.XXXXXX)
LOG=$WORK/check.log
JOBS=${JOBS:-$(nproc)}
PY=python3
say() { echo "[check $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
declare -a RESULTS=()
# check NAME SECONDS COMMAND...: runs it with a time limit, logs it, records pass or fail.
check() {
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  say "$name: $*"
  timeout "$limit" "$@" >> "$WORK/$name.log" 2>&1
  rc=$?
  RESULTS+=("| $name | $([[ $rc == 0 ]] && echo pass || echo "FAIL (rc $rc)") | $(($(date +%s) - t0)) s |")
  [[ $rc == 0 ]] || { tail -15 "$WORK/$name.log" | tee -a "$LOG"; }
  return $rc
}
finish() {
  {
    echo
    echo "| check | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${RESULTS[@]}"
  } | tee -a "$LOG"
  if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    cp "$LOG" "$OUT/check.log"
    tail -n $((${#RESULTS[@]} + 2)) "$LOG" > "$OUT/table.md"
  fi
}
trap finish EXIT

say "device $DEVICE, build $BUILD, work $WORK"
if [[ $DEVICE == cuda ]]; then
  command -v nvidia-smi > /dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    { say "torch.cuda.is_available() is False in $PY (--cpu for a CPU test)"; exit 2; }
fi

# --- 1. build ---------------------------------------------------------------------------------
if [[ $SKIP_BUILD == 0 ]]; then
  args=(-DCMAKE_BUILD_TYPE=Release -DIHN_BUILD_TESTS=OFF)
  if [[ $DEVICE == cuda ]]; then
    TORCH_CMAKE=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
    say "LibTorch $("$PY" -c 'import torch; print(torch.__version__)') from $TORCH_CMAKE"
    prefix=$TORCH_CMAKE
    if [[ -d $REPO/.gpu-deps ]]; then
      eval "$("$HERE/deps.sh" env)"
      prefix="$IHN_DEPS_PREFIX;$TORCH_CMAKE"
      # shellcheck disable=SC2206  # the arguments are meant to split
      args+=($IHN_DEPS_CMAKE_ARGS)
    fi
    args+=(-DCMAKE_PREFIX_PATH="$prefix")
  fi
  command -v ninja > /dev/null && [[ ! -f $BUILD/CMakeCache.txt || -f $BUILD/build.ninja ]] &&
    args+=(-G Ninja)
  check build 480 bash -c "cmake -S '$REPO' -B '$BUILD' ${args[*]@Q} &&
    cmake --build '$BUILD' -j $JOBS --target ihn_tool bench_augmenter bench_r2gen bench_cmn" ||
    exit 1
fi
[[ -n ${IHN_DEPS:-} ]] || { [[ -d $REPO/.gpu-deps && $DEVICE == cuda ]] && eval "$("$HERE/deps.sh" env)"; }
IHN=$BUILD/bin/ihn

# --- 2.-6. the checks ---------------------------------------------------------------------------
check version 60 "$IHN" version
cat "$WORK/version.log" >> "$LOG"

# A small run: CMN-sized, 2 epochs of 60 synthetic studies, so that each takes seconds.
small=(--synth-studies 60 --epochs 2 --d-model 64 --d-ff 64 --num-heads 4 --rm-d-model 64
       --image-size 64 --resize 72 --beam-size 2 --threads 4 --quiet --no-plots --device "$DEVICE")
precisions=(fp32 bf16)
[[ $DEVICE == cuda ]] && precisions+=(fp16)
for p in "${precisions[@]}"; do
  check "train_$p" 240 "$IHN" train "${small[@]}" --ihn paper --precision "$p" --out "$WORK/$p" &&
    check "evaluate_$p" 120 "$IHN" evaluate --checkpoint "$WORK/$p/best.pt" --device "$DEVICE" \
      --out "$WORK/$p/evaluation"
done
check resume 300 bash -c "'$IHN' train ${small[*]@Q} --ihn paper --precision bf16 --stop-after 3 \
    --out '$WORK/resumed' && '$IHN' train ${small[*]@Q} --ihn paper --precision bf16 --resume \
    --out '$WORK/resumed' && '$PY' - '$WORK/bf16/log.jsonl' '$WORK/resumed/log.jsonl' <<'EOF'
import json, sys
def losses(path):
    return [row['train_loss'] for row in map(json.loads, open(path)) if 'train_loss' in row]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print('uninterrupted', a, 'resumed', b)
sys.exit(0 if a and len(a) == len(b) and all(abs(x - y) <= 1e-5 * max(1, abs(x)) for x, y in zip(a, b)) else 1)
EOF"
check nproc2 300 "$IHN" train "${small[@]}" --ihn paper --nproc 2 --out "$WORK/nproc2"
if grep -q "Gloo and NCCL" "$WORK/version.log"; then
  check build_tests 480 bash -c "cmake -S '$REPO' -B '$BUILD' -DIHN_BUILD_TESTS=ON \
      -DIHN_TEST_FUZZ=OFF && cmake --build '$BUILD' -j $JOBS --target test_train" &&
    check nccl_group 120 env IHN_TEST_DEVICE="$DEVICE" "$BUILD/tests/test_train" "[nccl]"
  gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  if [[ $gpus -ge 2 ]]; then
    check nccl_nproc2 300 "$IHN" train "${small[@]}" --ihn paper --nproc 2 --dist-backend nccl \
      --out "$WORK/nccl"
  else
    check nccl_refused 120 bash -c "'$IHN' train ${small[*]@Q} --nproc 2 --dist-backend nccl \
      --out '$WORK/nccl' > '$WORK/nccl.txt' 2>&1; rc=\$?; cat '$WORK/nccl.txt'; \
      [[ \$rc != 0 ]] && grep -q 'no GPU of its own' '$WORK/nccl.txt'"
  fi
fi
check augmenter 240 "$BUILD/bin/bench_augmenter" 16 10 mimic "$DEVICE"
cat "$WORK/augmenter.log" >> "$LOG"
