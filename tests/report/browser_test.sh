#!/bin/sh
# Opens report.html in headless Chromium: the page logs nothing to the console (no script
# error), every filter shows exactly the studies it names and changes what is shown, the
# keyboard moves between studies, and a screenshot is written beside the report.
#   browser_test.sh REPORT_DIR HARNESS_HTML
# Without Chromium the test is skipped (exit 77) unless IHN_REQUIRE_BROWSER=1 (CI).
set -eu
dir=$(cd "$1" && pwd)
harness=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "chromium is not installed (apt-get install chromium)"
  [ "${IHN_REQUIRE_BROWSER:-0}" = 1 ] && exit 1
  exit 77
fi
flags="--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --user-data-dir=$dir/.chromium"
# shellcheck disable=SC2086
timeout 120 "$browser" $flags --allow-file-access-from-files --enable-logging=stderr --v=0 \
  --virtual-time-budget=30000 --dump-dom "file://$harness?report=file://$dir/report.html" \
  > "$dir/browser_dom.html" 2> "$dir/browser_log.txt"
# shellcheck disable=SC2086
timeout 120 "$browser" $flags --window-size=1280,2200 --screenshot="$dir/report_screenshot.png" \
  "file://$dir/report.html" > /dev/null 2>> "$dir/browser_log.txt"
rm -rf "$dir/.chromium"
python3 - "$dir" <<'PY'
import html, json, os, re, sys
d = sys.argv[1]
dom = open(os.path.join(d, "browser_dom.html"), encoding="utf-8").read()
m = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
fails = []
r = json.loads(html.unescape(m.group(1))) if m and m.group(1).strip().startswith("{") else None
if r is None:
    print("the harness wrote no result:", m.group(1)[:200] if m else "no #result")
    sys.exit(1)
fails += ["script error in the harness: " + e for e in r["errors"]]
log = open(os.path.join(d, "browser_log.txt"), encoding="utf-8", errors="replace").read()
console = [l for l in log.splitlines() if "CONSOLE" in l and "report.html" in l]
fails += ["console: " + l for l in console]
total = r["total"]
if total < 2: fails.append("only %d studies" % total)
if r["shown_text"] != "%d of %d studies" % (total, total): fails.append("counter: " + r["shown_text"])
changed = False
for mode, f in r["filters"].items():
    if f["shown"] != f["expected"]:
        fails.append("filter %s shows %d studies, expected %d" % (mode, len(f["shown"]), len(f["expected"])))
    if f["shown_text"] != "%d of %d studies" % (len(f["shown"]), total):
        fails.append("filter %s: counter says %r" % (mode, f["shown_text"]))
    changed = changed or len(f["shown"]) != total
for need in ("all", "abnormal", "errors"):
    if need not in r["filters"]: fails.append("no filter " + need)
if not changed: fails.append("no filter changed what is shown")
for obs, o in r["observations"].items():
    if o["shown"] != o["expected"]: fails.append("observation %s shows %d, expected %d" % (obs, o["shown"], o["expected"]))
ids, k = r["card_ids"], r["keys"]
want = {"start": ids[0], "j": ids[1], "j2": ids[min(2, total - 1)], "k": ids[1], "end": ids[-1], "home": ids[0]}
if k != want: fails.append("keyboard: got %s, expected %s" % (k, want))
if r["images"] < total: fails.append("%d images for %d studies" % (r["images"], total))
if r["charts"] != 3: fails.append("%d charts" % r["charts"])
if not os.path.getsize(os.path.join(d, "report_screenshot.png")) > 10000: fails.append("screenshot empty")
for f in fails: print("FAIL:", f)
print("browser: %d studies, filters %s, loaded in %.0f ms (virtual time), %d failure(s)" % (
    total, {m: len(f["shown"]) for m, f in r["filters"].items()}, r["load_ms"], len(fails)))
sys.exit(1 if fails else 0)
PY
