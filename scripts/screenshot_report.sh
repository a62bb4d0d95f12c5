#!/usr/bin/env bash
# Render an experiment's HTML report in headless Chromium and save a screenshot.
#
# usage: scripts/screenshot_report.sh EXPERIMENT_DIR OUT.png [WIDTH,HEIGHT]
#
# Writes the report first (cerebro report EXPERIMENT_DIR, through the project's virtualenv when
# there is one), then screenshots EXPERIMENT_DIR/report.html at WIDTH,HEIGHT (default 1400,2400).
# Needs /usr/bin/chromium (Debian: apt-get install -y chromium) or $CHROMIUM.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 EXPERIMENT_DIR OUT.png [WIDTH,HEIGHT]" >&2
    exit 2
fi
exp_dir=$1
out=$2
size=${3:-1400,2400}
chromium=${CHROMIUM:-/usr/bin/chromium}

if [[ ! -d $exp_dir ]]; then
    echo "$0: experiment directory '$exp_dir' does not exist" >&2
    exit 2
fi
if [[ ! -x $chromium ]]; then
    echo "$0: no Chromium at '$chromium' (install it: apt-get install -y chromium, or set CHROMIUM=...)" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $here/.venv/bin/cerebro ]]; then
    cerebro=("$here/.venv/bin/cerebro")
elif command -v cerebro >/dev/null 2>&1; then
    cerebro=(cerebro)
else
    cerebro=(python3 -m cerebro)
fi
"${cerebro[@]}" report "$exp_dir" >/dev/null

html=$(cd "$exp_dir" && pwd)/report.html
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="$size" \
    --screenshot="$out_abs" "file://${html// /%20}" >/dev/null 2>&1 || true

if [[ ! -s $out_abs ]]; then
    echo "$0: Chromium did not write $out_abs" >&2
    exit 1
fi
echo "$out_abs"
