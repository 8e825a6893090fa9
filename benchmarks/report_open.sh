#!/bin/sh
# How long report.html takes to open in headless Chromium: navigation start to the page's load
# event (HTML parsed, styles applied, first layout, the gallery script run), measured by the
# page itself through the Navigation Timing API, RUNS fresh browser processes.
#   benchmarks/report_open.sh REPORT_HTML [RUNS]
# e.g. ihn evaluate --checkpoint runs/compare/seed_1/with_ihn/best.pt --split train --out /tmp/big
#      benchmarks/report_open.sh /tmp/big/report.html 5
set -eu
page=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
runs=${2:-5}
harness=$(cd "$(dirname "$0")/../tests/report" && pwd)/harness.html
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
i=0
while [ "$i" -lt "$runs" ]; do
  timeout 120 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$profile" \
    --allow-file-access-from-files --dump-dom "file://$harness?report=file://$page" 2>/dev/null |
    grep -o '"load_ms":[0-9.]*,"total":[0-9]*' | tr -d '"' | sed 's/load_ms:/load /; s/,total:/ ms, studies /'
  i=$((i + 1))
done
