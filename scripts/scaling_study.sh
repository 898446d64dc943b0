#!/usr/bin/env bash
# Peak RSS against slide size, one fresh process per run (thin wrapper over `wsi-harness scaling`).
#
#   scripts/scaling_study.sh [OUT_DIR] [extra scaling args...]
#
# Defaults: sizes 4096,16384,65536, streaming and dense engines, passthrough model,
# 256MB budget, fail when the streaming peak grows more than 5 %. Override with
# SIZES=4096,8192 scripts/scaling_study.sh out/ --budget 128MB
set -euo pipefail
out="${1:-scaling-report}"
shift || true
python="${PYTHON:-python}"
exec "$python" -m harness scaling \
    --sizes "${SIZES:-4096,16384,65536}" \
    --engine streaming --engine dense \
    --model passthrough --budget "${BUDGET:-256MB}" \
    --max-growth "${MAX_GROWTH:-5%}" \
    --out "$out" "$@"
