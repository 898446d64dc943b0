#!/usr/bin/env python3
"""--cluster local:N against the best single-process configuration, measured in one run.

Usage: scripts/cluster_speedup.py [SLIDE] [N] [ROUNDS]
Each configuration runs ``segment --labels-only`` in a fresh process under
``harness.measure`` (tree peak RSS, wall), rounds interleaved so drift hits every
configuration alike. Prints a table and one JSON line: the best single-process wall,
the cluster wall, their ratio, and each cluster worker's peak RSS against the
single-process peak at the same budget.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from harness.config import RunConfig
from harness.measure import run_command
from harness.measure.scaling import segment_argv

SINGLE = {  # name -> (torch threads, loader workers)
    "1 process, 2 threads": (2, 0),
    "1 process, 1 thread, 1 reader": (1, 1),
    "1 process, 2 threads, 1 reader": (2, 1),
}


def _measure(slide: str, out: Path, run: RunConfig, extra: list[str]) -> dict[str, float]:
    m = run_command(segment_argv(slide, out, run, extra=extra)).check()
    record = m.stdout_json()
    peaks = record.get("workers", {}).get("peak_rss_bytes", {})
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": float(record["wall_s"]), "tree_peak": float(m.peak_rss_bytes),
            "process_peak": float(m.ru_maxrss_bytes),
            "worker_peak": float(max(peaks.values())) if peaks else 0.0}  # fmt: skip


def main(argv: list[str]) -> int:
    """Run every configuration ``rounds`` times; print the comparison."""
    slide = argv[0] if argv else "synthetic:16384"
    n = int(argv[1]) if len(argv) > 1 else 2
    rounds = int(argv[2]) if len(argv) > 2 else 2
    base = RunConfig(model="tiny-cnn", probabilities=False)
    configs = {k: (base.replace(threads=t, workers=w), []) for k, (t, w) in SINGLE.items()}
    configs[f"--cluster local:{n}"] = (base.replace(threads=1), ["--cluster", f"local:{n}"])
    results: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    scratch = Path(tempfile.mkdtemp(prefix="cluster-speedup-"))
    try:
        for r in range(rounds):
            for name, (run, extra) in configs.items():
                results[name].append(_measure(slide, scratch / "o.zarr", run, extra))
                print(f"round {r + 1} {name:34s} {results[name][-1]['wall_s']:7.1f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
    cluster = f"--cluster local:{n}"
    best = min((k for k in med if k != cluster), key=med.__getitem__)
    single_peak = statistics.median(x["process_peak"] for x in results[best])
    worker_peak = statistics.median(x["worker_peak"] for x in results[cluster])
    print(json.dumps({"slide": slide, "median_wall_s": med, "best_single": best,
                      "speedup": med[best] / med[cluster],
                      "single_process_peak_bytes": single_peak,
                      "worker_peak_bytes": worker_peak,
                      "worker_vs_single_peak": worker_peak / single_peak}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
