"""Export wall time and peak RSS at large sizes, each export in a fresh measured process.

Segmenting a 64k x 64k slide takes 10+ minutes, so the source outputs are
built another way: the synthetic slide's ground-truth label map
(``SyntheticSlide.labels``) written chunk by chunk into the output layout
(256 px chunks, chunks of pure background left unwritten as a tissue mask
would), with optional one-hot float32 probabilities. The slide source is
recorded, so a labels-only export re-reads the slide as its parent image.

    python scripts/export_bench.py build OUT.zarr --size 16384 [--probabilities]
    python scripts/export_bench.py measure OUT.zarr DEST.ome.zarr [--ome-version 0.4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from harness import __version__
from harness.slides import open_slide

CLASSES = ["background", "stroma", "nuclei", "ink"]


def build(out: Path, size: int, probabilities: bool, chunk: int = 256, seed: int = 1) -> None:
    """Write the ground truth of ``synthetic:SIZE,seed=SEED`` as a complete output."""
    spec = f"synthetic:{size},seed={seed}"
    slide = open_slide(spec)
    group = zarr.open_group(out, mode="w-", zarr_format=3)
    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    labels = group.create_array("labels", shape=(size, size), chunks=(chunk, chunk),
                                dtype="uint8", fill_value=255, compressors=codec)  # fmt: skip
    probs = None
    if probabilities:
        probs = group.create_array(
            "probabilities", shape=(size, size, len(CLASSES)), chunks=(chunk, chunk, 4),
            dtype="float32", fill_value=float("nan"), compressors=codec,
        )  # fmt: skip
    eye = np.eye(len(CLASSES), dtype=np.float32)
    t0, written = time.perf_counter(), 0
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            lab = slide.labels((x, y, chunk, chunk))
            if not lab.any():
                continue  # all background: a tissue mask would have skipped it
            labels[y : y + chunk, x : x + chunk] = lab
            if probs is not None:
                probs[y : y + chunk, x : x + chunk] = eye[lab]
            written += 1
    slide_meta = {"shape": [size, size], "mpp": slide.mpp, "type": "SyntheticSlide", "source": spec}
    group.attrs["wsi_harness"] = {
        "mpp": slide.mpp, "classes": CLASSES, "model": "ground-truth", "engine": "none",
        "plan": {"chunk": [chunk, chunk]}, "slide": slide_meta, "version": __version__,
        "complete": True, "chunks_written": written,
    }  # fmt: skip
    print(json.dumps({"built": str(out), "chunks": written, "s": time.perf_counter() - t0}))


def measure(src: Path, dest: Path, version: str, parent: str) -> dict[str, object]:
    """Run ``wsi-harness export --ome-zarr`` in a fresh process; wall time and peak RSS."""
    from harness.measure import run_command

    argv = [sys.executable, "-m", "harness", "export", str(src), "--ome-zarr", str(dest),
            "--ome-version", version, "--parent-image", parent,
            "--overwrite", "--no-progress"]  # fmt: skip
    m = run_command(argv).check()
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    return {
        "source": str(src), "ome_version": version, "parent": parent, "wall_s": round(m.wall_s, 1),
        "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1),
        "ru_maxrss_mib": round(m.ru_maxrss_bytes / 2**20, 1), "files": files,
    }  # fmt: skip


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--probabilities", action="store_true")
    m = sub.add_parser("measure")
    m.add_argument("src", type=Path)
    m.add_argument("dest", type=Path)
    m.add_argument("--ome-version", default="0.5")
    m.add_argument("--parent-image", default="auto")
    args = p.parse_args()
    if args.cmd == "build":
        build(args.out, args.size, args.probabilities)
    else:
        print(json.dumps(measure(args.src, args.dest, args.ome_version, args.parent_image)))


if __name__ == "__main__":
    main()
