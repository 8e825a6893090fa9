#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build/fuzz and runs each for SECONDS
# (default 60) over its seeds (fuzz/corpus/<target>) and regression inputs (fuzz/regressions/
# <target>). New inputs go to build/fuzz/corpus/<target>, crashes to build/fuzz/artifacts/<target>;
# the last lines of each log (execs/s, cov:, ft:) are printed. A crash exits non-zero: minimise it
# (fuzz_<target> -minimize_crash=1 FILE), fix the reader and add the file to fuzz/regressions.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
shift || true
out=${IHN_FUZZ_BUILD_DIR:-$root/build/fuzz}
bash "$root/scripts/install-deps.sh"
cmake -S "$root" -B "$out" -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DIHN_FUZZ=ON -DIHN_SANITIZE=ON -DIHN_BUILD_TESTS=OFF -DIHN_BUILD_EXAMPLES=OFF \
  -DIHN_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$out" -j "${IHN_BUILD_JOBS:-$(nproc)}"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  # shellcheck disable=SC2207
  targets=($(sed -n 's/^set(IHN_FUZZ_TARGETS \(.*\))$/\1/p' "$root/fuzz/targets.cmake"))
fi
status=0
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  echo "== fuzz_$t, ${seconds} s"
  if ! "$out/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 \
      -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "$out/corpus/$t" \
      "$root/fuzz/corpus/$t" "$root/fuzz/regressions/$t" >"$out/fuzz_$t.log" 2>&1; then
    status=1
    echo "fuzz_$t FAILED: see $out/fuzz_$t.log and $out/artifacts/$t/"
  fi
  grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)|stat::number_of_executed_units|stat::average_exec_per_sec' \
    "$out/fuzz_$t.log" | tail -4
done
exit $status
