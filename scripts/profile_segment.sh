#!/usr/bin/env bash
# One segmentation under memray + the RSS sampler (thin wrapper over `wsi-harness profile`).
#
#   scripts/profile_segment.sh [SLIDE] [REPORT_DIR] [segment args...]
#
# Writes REPORT_DIR/capture.bin, flamegraph.html, rss.png (phases shaded), summary.json.
set -euo pipefail
slide="${1:-synthetic:4096x4096}"
report="${2:-profile-report}"
shift 2 || shift $#
python="${PYTHON:-python}"
exec "$python" -m harness profile "$slide" --report "$report" \
    --model passthrough --budget "${BUDGET:-256MB}" "$@"
