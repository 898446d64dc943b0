#!/usr/bin/env python
"""MONAI's two mergers and our engine on the same synthetic slides, one fresh process each.

Usage::

    .venv/bin/python scripts/monai_versus.py --sizes 4096 8192 16384 --out reports/monai

A thin stand-in until ``wsi-harness versus`` takes MONAI as an engine: it
reuses :mod:`harness.peers.versus` (slides, :func:`measure_engine`, the skip
rule) and :func:`harness.peers.compare.compare_outputs`, and writes
``OUT/monai.json`` and a markdown table on stdout. Per size it runs MONAI's
``AvgMerger`` (skipped where its predicted peak does not fit), MONAI's
``ZarrAvgMerger`` (only up to ``--zarr-max``: 27 minutes at 16k² in a trial)
and ours (streaming, labels only, no mask), in that order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.peers.compare import compare_outputs, open_output
from harness.peers.versus import (
    GB,
    REPO_ROOT,
    EngineRun,
    PeakModel,
    VersusConfig,
    decide_peer,
    measure_engine,
    ours_argv,
    synthetic_job,
)

MONAI_PYTHON = REPO_ROOT / "peer" / "monai" / "bin" / "python"
RUNNER = REPO_ROOT / "harness" / "peers" / "monai_runner.py"
# AvgMerger holds float32 values and uint8 counts per class and pixel, and its in-place
# division promotes the counts: 27 B/px at 16k² in the trial (7.6 GB); erring high.
ENGINES = ("monai-avg", "monai-zarr")
"""MONAI engines the study can run; ours always runs, as the reference for agreement."""
AVG_PEAK = PeakModel(base_bytes=0.6 * GB, bytes_per_px=28.0)


def monai_argv(cfg: VersusConfig, slide: Path, out: Path, merger: str) -> list[str]:
    """Command line of the MONAI runner on ``slide`` with ``merger`` (``avg`` or ``zarr``)."""
    argv = [str(MONAI_PYTHON), str(RUNNER), str(slide), "--out", str(out)]
    argv += ["--model", cfg.model, "--patch", str(cfg.patch), "--stride", str(cfg.stride)]
    return [*argv, "--mpp", str(cfg.mpp), "--merger", merger, "--batch-size", str(cfg.batch_size)]


def _agreement(ours: EngineRun, peer: EngineRun, cfg: VersusConfig) -> dict[str, Any] | None:
    if not (ours.ok and peer.ok and ours.output and peer.output):
        return None
    mine, theirs = (
        open_output(Path(ours.output), "labels"),
        open_output(Path(peer.output), "labels"),
    )
    return compare_outputs(mine, theirs, out=cfg.patch, stride=cfg.stride).to_dict()


def run_size(
    cfg: VersusConfig, size: int, out: Path, engines: tuple[str, ...], limits: tuple[int, PeakModel]
) -> dict[str, Any]:
    """MONAI's runs and ours on one ``size`` x ``size`` slide, then label agreement with ours."""
    import psutil

    zarr_max, avg_peak = limits
    job = synthetic_job(size, out / "slides", cfg.mpp)
    runs: dict[str, EngineRun] = {}
    for merger in ("avg", "zarr"):
        name, dest = f"monai-{merger}", out / "outputs" / f"monai-{merger}-{size}.zarr"
        vm = psutil.virtual_memory()
        decision = decide_peer(job.area_px, avg_peak, vm.total, vm.available, cfg.ram_share)
        if name not in engines:
            runs[name] = EngineRun(name, size, job.area_px, skipped="skipped: not requested")
        elif merger == "avg" and not decision.run:
            runs[name] = EngineRun(name, size, job.area_px, skipped=decision.reason)
        elif merger == "zarr" and size > zarr_max:
            why = f"skipped: over --zarr-max {zarr_max}"
            runs[name] = EngineRun(name, size, job.area_px, skipped=why)
        else:
            argv = monai_argv(cfg, job.path, dest, merger)
            runs[name] = measure_engine(name, size, job.area_px, argv, cfg.timeout_s, dest)
    dest = out / "outputs" / f"ours-{size}.zarr"
    argv = ours_argv(cfg, job.path, dest)
    runs["ours"] = measure_engine("ours", size, job.area_px, argv, cfg.timeout_s, dest)
    agreement = {k: _agreement(runs["ours"], r, cfg) for k, r in runs.items() if k != "ours"}
    if not cfg.keep_outputs:
        shutil.rmtree(out / "outputs", ignore_errors=True)
    return {"size": size, "slide": str(job.path), "runs": {k: r.to_dict() for k, r in runs.items()},
            "agreement": agreement}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per engine per size."""
    head = (
        "| size | engine | peak RSS (GB) | wall (s) | CPU (s) | labels agree (common / overall) |"
    )
    lines = [f"{head} left in temp (MB) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for name, run in row["runs"].items():
            lines.append(_line(row, name, run))
    return "\n".join(lines)


def _line(row: dict[str, Any], name: str, run: dict[str, Any]) -> str:
    head = f"| {row['size']} | {name} |"
    if run["skipped"] or run["returncode"] != 0:
        why = run["skipped"] or f"failed (status {run['returncode']})"
        return f"{head} {why} | | | | |"
    agree = row["agreement"].get(name)
    ag = "" if agree is None else (
        f"{agree['common']['label_agreement']:.4%} / {agree['overall']['label_agreement']:.4%}"
    )  # fmt: skip
    left = run["detail"].get("leftover", {}).get("temp_bytes")
    left_mb = "" if left is None else f"{left / 1e6:.0f}"
    rss = run["peak_rss_bytes"] / GB
    return f"{head} {rss:.2f} | {run['wall_s']:.1f} | {run['cpu_s']:.1f} | {ag} | {left_mb} |"


def main(argv: list[str] | None = None) -> int:
    """Run the study and write ``OUT/monai.json``."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--zarr-max", type=int, default=8192, help="largest size for ZarrAvgMerger")
    p.add_argument("--ram-share", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=None, help="seconds per run")
    p.add_argument("--keep-outputs", action="store_true")
    args = p.parse_args(argv)
    if not MONAI_PYTHON.is_file():
        sys.exit(f"error: no MONAI peer python at {MONAI_PYTHON}; run scripts/peer_env.sh monai")
    cfg = VersusConfig(
        ram_share=args.ram_share, timeout_s=args.timeout, keep_outputs=args.keep_outputs
    )
    out = args.out.resolve()
    rows: list[dict[str, Any]] = []
    avg_peak = AVG_PEAK
    for size in sorted(args.sizes):
        limits = (args.zarr_max, avg_peak)
        rows.append(run_size(cfg, size, out, tuple(args.engines), limits))
        run = rows[-1]["runs"]["monai-avg"]
        if (
            run["returncode"] == 0 and run["peak_rss_bytes"]
        ):  # raise the prediction's base if it was under
            avg_peak = avg_peak.calibrated([(run["area_px"], run["peak_rss_bytes"])])
        (out / "monai.json").write_text(json.dumps(rows, indent=2))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
