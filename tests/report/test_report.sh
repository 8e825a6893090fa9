#!/bin/sh
# report.html end to end on tiny runs: `ihn compare` (two seeds, two arms), `ihn train` and
# `ihn evaluate` each write one, check_report.py checks it against the files it came from,
# `ihn report` rebuilds the same bytes, and a folder without results is refused.
#   test_report.sh IHN OUT_DIR TINY_ARGS...
set -eu
ihn=$1 out=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out"
mkdir -p "$out"
"$ihn" compare --preset cpu-small --seeds 2 --resamples 50 --out "$out/cmp" "$@" > "$out/compare.txt"
grep -q "report: $out/cmp/report.html" "$out/compare.txt"
python3 "$here/check_report.py" "$out/cmp" compare
"$ihn" train --preset cpu-small --data synth --out "$out/run" --threads 1 --bootstrap 20 "$@" > "$out/train.txt"
python3 "$here/check_report.py" "$out/run" run
"$ihn" evaluate --checkpoint "$out/run/best.pt" --bootstrap 20 > "$out/evaluate.txt"
python3 "$here/check_report.py" "$out/run/evaluate_test" evaluate
cp "$out/cmp/report.html" "$out/first.html"
"$ihn" report "$out/cmp" > /dev/null
cmp "$out/first.html" "$out/cmp/report.html"
mkdir -p "$out/empty"
if "$ihn" report "$out/empty" 2> "$out/refused.txt"; then exit 1; fi
grep -q "holds no compare.json" "$out/refused.txt"
find "$out" -name "*.pt" -delete  # ~180 MB each; the browser test reads only the pages
echo "report tests passed"
