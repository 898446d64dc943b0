#!/usr/bin/env bash
# The README's main job: segment a built-in synthetic slide with the built-in H&E colour
# model, render what it found (labels, and labels over the slide), export it as OME-Zarr for
# napari / QuPath, then a short streaming-vs-dense scaling study.
set -euo pipefail
OUT=${1:-out/demo}
BIN=${BIN:-.venv/bin}
SLIDE="synthetic:6144,seed=1"
mkdir -p "$OUT"

echo "== 1. the slide (virtual: generated on demand, nothing on disk)"
"$BIN/wsi-harness" info "$SLIDE" --thumbnail "$OUT/thumbnail.png"

echo "== 2. streaming segmentation, tissue mask auto, 128MB for the whole run above its baseline"
"$BIN/wsi-harness" segment "$SLIDE" --model hne-colour --mask auto --budget 128MB \
    --out "$OUT/segmentation.zarr" --overwrite
"$BIN/wsi-harness" render "$OUT/segmentation.zarr" --png "$OUT/labels.png"
"$BIN/wsi-harness" render "$OUT/segmentation.zarr" --png "$OUT/overlay.png" --overlay

echo "== 3. export for viewers: OME-Zarr (napari: napari --plugin napari-ome-zarr DIR)"
"$BIN/wsi-harness" export "$OUT/segmentation.zarr" --ome-zarr "$OUT/segmentation.ome.zarr" \
    --overwrite --no-progress

echo "== 4. scaling study: peak RSS of the whole process vs slide area, streaming vs dense"
# 8 MB of merge buffers: every size's raster band fills them, so the verdict compares runs
# that all use their merge budget. What still grows is the read cache, which holds one band of
# the slide's width up to its share of the 128 MB (measured: +4.4 % from 2048 to 8192 px,
# +5.4 % from 1024), so the limit on the streaming engine is 10 %; dense, plotted beside it,
# grows +276 % over the same sizes.
"$BIN/wsi-harness" scaling --sizes 2048,4096,8192 --engine streaming --engine dense \
    --model passthrough --budget 128MB --merge-budget 8MB --max-growth 10% --out "$OUT/scaling"

echo
echo "Look at: $OUT/thumbnail.png (slide), $OUT/labels.png (classes), $OUT/overlay.png"
echo "(classes over the slide), $OUT/segmentation.ome.zarr (napari, QuPath: docs/viewers.md),"
echo "$OUT/scaling/scaling.png"
