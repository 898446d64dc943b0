"""GeoJSON export wall time and peak RSS at large sizes, each export in a fresh measured process.

The sources are labels-only outputs of a synthetic slide's ground truth
(``SyntheticSlide.labels``), written chunk row by chunk row through
``ZarrStore.create`` by :func:`harness.testing.labelmaps.write_label_output`:
every chunk is written (no tissue mask), so the glass around the tissue is one
region spanning the slide, open until the last tile, holding every tissue
piece as a hole -- the frontier's worst case.

    python scripts/geojson_bench.py build OUT.zarr --size 16384
    python scripts/geojson_bench.py measure OUT.zarr DEST.geojson.gz [--limit 4GiB]
    python scripts/geojson_bench.py export OUT.zarr DEST.geojson.gz   (what measure runs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CLASSES = ("background", "stroma", "nuclei", "ink")


def build(out: Path, size: int, seed: int = 1, chunk: int = 256) -> None:
    """Write the ground truth of ``synthetic:SIZE,seed=SEED`` as a complete labels-only output."""
    from harness.slides import parse_synthetic
    from harness.testing.labelmaps import synthetic_labels, write_label_output

    spec = f"synthetic:{size},seed={seed}"
    slide = parse_synthetic(spec)
    t0 = time.perf_counter()
    meta = {"slide": {"shape": [size, size], "mpp": slide.mpp, "type": "SyntheticSlide",
                      "source": spec}, "plan": {"chunk": [chunk, chunk]}}  # fmt: skip
    write_label_output(out, synthetic_labels(slide), shape=(size, size), chunk=chunk,
                       classes=CLASSES, mpp=slide.mpp, meta=meta)  # fmt: skip
    print(json.dumps({"built": str(out), "s": round(time.perf_counter() - t0, 1)}))


def export(src: Path, dest: Path) -> None:
    """Export in this process (default tile, as the CLI); print the exporter's record."""
    from harness.measure import write_baseline
    from harness.output.geojson import export_geojson

    write_baseline()  # after the imports: what the export itself adds is above this
    stats = export_geojson(src, dest, overwrite=True)
    print(json.dumps(stats.to_dict()))


def measure(src: Path, dest: Path, limit: str) -> dict[str, object]:
    """Run :func:`export` under ``prlimit --as=LIMIT`` in a fresh measured process."""
    from harness.measure import run_command
    from harness.units import parse_bytes

    # prlimit wants bytes: it reads "4G" as 4 (and the child then dies at once).
    cap = f"--as={parse_bytes(limit)}"
    argv = ["prlimit", cap, sys.executable, __file__, "export", str(src), str(dest)]
    m = run_command(argv).check()
    stats = m.stdout_json()
    above = m.peak_above_baseline_bytes
    return {
        "source": str(src), "limit": limit, "wall_s": round(m.wall_s, 1),
        "peak_rss_mib": round(m.peak_rss_bytes / 2**20, 1),
        "ru_maxrss_mib": round(m.ru_maxrss_bytes / 2**20, 1),
        "above_baseline_mib": None if above is None else round(above / 2**20, 1),
        "file_mb": round(dest.stat().st_size / 1e6, 1), "export": stats,
    }  # fmt: skip


def main() -> None:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--size", type=int, required=True)
    for name in ("measure", "export"):
        m = sub.add_parser(name)
        m.add_argument("src", type=Path)
        m.add_argument("dest", type=Path)
        m.add_argument("--limit", default="4GiB", help="address-space limit (prlimit --as)")
    args = p.parse_args()
    if args.cmd == "build":
        build(args.out, args.size)
    elif args.cmd == "export":
        export(args.src, args.dest)
    else:
        print(json.dumps(measure(args.src, args.dest, args.limit)))


if __name__ == "__main__":
    main()
